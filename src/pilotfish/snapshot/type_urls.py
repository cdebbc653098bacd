"""Type URLs of the xDS resources we serve, and the order in which Envoy must receive them."""

from __future__ import annotations

_PREFIX = "type.googleapis.com/"

CLUSTER = _PREFIX + "envoy.config.cluster.v3.Cluster"
ENDPOINT = _PREFIX + "envoy.config.endpoint.v3.ClusterLoadAssignment"
SECRET = _PREFIX + "envoy.extensions.transport_sockets.tls.v3.Secret"
LISTENER = _PREFIX + "envoy.config.listener.v3.Listener"
ROUTE = _PREFIX + "envoy.config.route.v3.RouteConfiguration"

# A resource must arrive after everything it references, or Envoy keeps it warming:
# clusters need their endpoints (and secrets), listeners need clusters, routes come last.
PUSH_ORDER: tuple[str, ...] = (CLUSTER, ENDPOINT, SECRET, LISTENER, ROUTE)

# For these types an empty SotW subscription means "everything" (the legacy wildcard).
WILDCARD_TYPES: frozenset[str] = frozenset({CLUSTER, LISTENER})

# Every SotW response of these types must hold all of the type's resources the proxy needs
# (one missing is one removed). Responses of the other types may hold only some: the xDS
# protocol groups them as it does for Delta, and a resource left out is left as it is.
SOTW_FULL_STATE_TYPES: frozenset[str] = frozenset({CLUSTER, LISTENER})

SHORT_NAMES: dict[str, str] = {
    CLUSTER: "CDS",
    ENDPOINT: "EDS",
    SECRET: "SDS",
    LISTENER: "LDS",
    ROUTE: "RDS",
}


def short_name(type_url: str) -> str:
    return SHORT_NAMES.get(type_url, type_url.rsplit(".", 1)[-1])


def push_rank(type_url: str) -> int:
    """Position in PUSH_ORDER; unknown types go last, in a stable order."""
    try:
        return PUSH_ORDER.index(type_url)
    except ValueError:
        return len(PUSH_ORDER)
