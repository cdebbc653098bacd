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

# SotW responses of these types may carry only the resources that changed: the xDS protocol
# groups every type but clusters and listeners as it does for Delta, and Envoy leaves a
# resource a response does not name as it is (an empty update for an endpoint or route watch
# is ignored, too). Secrets are left out: Envoy's unified SotW mux hands a watch its response
# leaves out an empty update, which SDS rejects.
SOTW_PARTIAL_TYPES: frozenset[str] = frozenset({ENDPOINT, ROUTE})

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
