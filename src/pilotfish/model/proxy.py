"""Who a connected proxy is, as it tells us in the metadata of its xDS Node."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal, TypeVar, get_args

from pilotfish.errors import PilotfishError
from pilotfish.model.identity import DEFAULT_SERVICE_ACCOUNT, Identity
from pilotfish.model.resilience import locality_problem
from pilotfish.model.resources import Interception, Protocol

ProxyKind = Literal["sidecar", "gateway"]


@dataclass(frozen=True)
class ProxyUpstream:
    """A loopback port of the sidecar that goes to one service port (a Workload's
    ``upstreams`` entry, resolved): ``bind_address:local_port`` -> ``hostname:port``."""

    hostname: str
    port: int
    local_port: int


_METADATA_PREFIX = "PILOTFISH_"
_MAX_PORT = 65535


@dataclass(frozen=True)
class ProxyNode:
    """A sidecar or gateway Envoy.

    Sidecar ports (all on ``bind_address``): ``outbound_port`` is the HTTP proxy its app uses
    (``HTTP_PROXY``); ``inbound_port`` receives mesh traffic for the app; ``app_port`` is where
    the app itself listens. A gateway has none of them: it listens on its Gateway servers' ports.
    """

    id: str
    kind: ProxyKind = "sidecar"
    namespace: str = "default"
    service: str | None = None
    labels: Mapping[str, str] = field(default_factory=dict)
    bind_address: str = "127.0.0.1"
    outbound_port: int | None = None
    inbound_port: int | None = None
    app_port: int | None = None
    app_protocol: Protocol = "HTTP"
    service_account: str = DEFAULT_SERVICE_ACCOUNT
    """With ``namespace`` and the mesh's trust domain, the proxy's SPIFFE identity."""
    workload: str | None = None
    """The Workload (Istio: the Deployment) the proxy's app is a replica of; metrics name it."""
    telemetry: bool = False
    """The bootstrap has the ``TELEMETRY_CLUSTER`` (the control plane's admin port), so the
    proxy can send spans there."""
    locality: str | None = None
    """``region/zone/subzone`` of the replica (metadata LOCALITY; the agent also writes it
    into the bootstrap's Node.locality): which endpoints are near for locality failover."""
    admin_address: str | None = None
    """``host:port`` of the Envoy's admin interface (metadata ADMIN_ADDRESS), where the
    control plane reads what this proxy sees of its endpoints (health, ejections, requests)."""
    outlier_log: str | None = None
    """Path of the Envoy's outlier-detection event log (metadata OUTLIER_LOG; the bootstrap's
    ``cluster_manager.outlier_detection.event_log_path``): when and why it ejected a host."""
    upstreams: tuple[ProxyUpstream, ...] = ()
    """Metadata UPSTREAMS, a list of ``{hostname, port, local_port}``: one listener each."""
    interception: Interception = "explicit"
    """Metadata INTERCEPTION. ``transparent``: the proxy runs in its replica's network
    namespace, where iptables sends it every outbound TCP connection (``outbound_port``, an
    original-destination listener) and every inbound one (``inbound_port``)."""

    @property
    def workload_name(self) -> str:
        """``source_workload`` / ``destination_workload`` of Istio's metrics."""
        return self.workload or self.service or self.id

    @property
    def canonical_service(self) -> str:
        """Istio's canonical service: its label, else the ``app`` label, else the workload."""
        return (
            self.labels.get("service.istio.io/canonical-name")
            or self.labels.get("app")
            or self.workload_name
        )

    @property
    def canonical_revision(self) -> str:
        return (
            self.labels.get("service.istio.io/canonical-revision")
            or self.labels.get("version")
            or "latest"
        )

    def identity(self, trust_domain: str) -> Identity:
        return Identity(trust_domain, self.namespace, self.service_account)

    def to_metadata(self) -> dict[str, object]:
        """The Node.metadata the agent writes into Envoy's bootstrap."""
        data: dict[str, object] = {
            "KIND": self.kind,
            "NAMESPACE": self.namespace,
            "LABELS": dict(self.labels),
            "BIND_ADDRESS": self.bind_address,
            "APP_PROTOCOL": self.app_protocol,
            "SERVICE_ACCOUNT": self.service_account,
            "TELEMETRY": self.telemetry,
        }
        if self.interception != "explicit":
            data["INTERCEPTION"] = self.interception
        if self.upstreams:
            data["UPSTREAMS"] = [
                {"hostname": u.hostname, "port": u.port, "local_port": u.local_port}
                for u in self.upstreams
            ]
        optional: dict[str, object | None] = {
            "SERVICE": self.service,
            "OUTBOUND_PORT": self.outbound_port,
            "INBOUND_PORT": self.inbound_port,
            "APP_PORT": self.app_port,
            "WORKLOAD": self.workload,
            "LOCALITY": self.locality,
            "ADMIN_ADDRESS": self.admin_address,
            "OUTLIER_LOG": self.outlier_log,
        }
        data.update({k: v for k, v in optional.items() if v is not None})
        return {_METADATA_PREFIX + k: v for k, v in data.items()}

    @classmethod
    def from_metadata(cls, node_id: str, metadata: Mapping[str, object]) -> ProxyNode:
        """Read what ``to_metadata`` wrote; raise ``ProxyMetadataError`` on a value it could not
        have written. A missing field takes its default (a node without Pilotfish metadata is
        a plain sidecar); a wrong one is never guessed at, or the proxy would get config for
        something it is not. Protobuf Structs hold numbers as floats."""
        reader = _MetadataReader(node_id, metadata)
        return cls(
            id=node_id,
            kind=reader.choice("KIND", PROXY_KINDS, "sidecar"),
            namespace=reader.string("NAMESPACE") or "default",
            service=reader.string("SERVICE"),
            labels=reader.labels("LABELS"),
            bind_address=reader.string("BIND_ADDRESS") or "127.0.0.1",
            outbound_port=reader.port("OUTBOUND_PORT"),
            inbound_port=reader.port("INBOUND_PORT"),
            app_port=reader.port("APP_PORT"),
            app_protocol=reader.choice("APP_PROTOCOL", PROTOCOLS, "HTTP"),
            service_account=reader.string("SERVICE_ACCOUNT") or DEFAULT_SERVICE_ACCOUNT,
            workload=reader.string("WORKLOAD"),
            telemetry=reader.flag("TELEMETRY"),
            locality=reader.locality("LOCALITY"),
            admin_address=reader.string("ADMIN_ADDRESS"),
            outlier_log=reader.string("OUTLIER_LOG"),
            upstreams=reader.upstreams("UPSTREAMS"),
            interception=reader.choice("INTERCEPTION", INTERCEPTIONS, "explicit"),
        )


class ProxyMetadataError(PilotfishError):
    """A field of a proxy's Node.metadata holds a value Pilotfish cannot use."""

    def __init__(self, node_id: str, key: str, value: object, allowed: str) -> None:
        self.node_id = node_id
        self.field = _METADATA_PREFIX + key
        self.value = value
        super().__init__(
            f"node {node_id!r}: metadata field {self.field}: {value!r} is not {allowed}"
        )


PROXY_KINDS: tuple[ProxyKind, ...] = get_args(ProxyKind)
PROTOCOLS: tuple[Protocol, ...] = get_args(Protocol)
INTERCEPTIONS: tuple[Interception, ...] = get_args(Interception)

_T = TypeVar("_T", bound=str)


class _MetadataReader:
    def __init__(self, node_id: str, metadata: Mapping[str, object]) -> None:
        self._node_id = node_id
        self._metadata = metadata

    def _get(self, key: str) -> object | None:
        return self._metadata.get(_METADATA_PREFIX + key)

    def _error(self, key: str, value: object, allowed: str) -> ProxyMetadataError:
        return ProxyMetadataError(self._node_id, key, value, allowed)

    def string(self, key: str) -> str | None:
        value = self._get(key)
        if value is None or value == "":
            return None
        if not isinstance(value, str):
            raise self._error(key, value, "a string")
        return value

    def choice(self, key: str, allowed: tuple[_T, ...], default: _T) -> _T:
        value = self._get(key)
        if value is None:
            return default
        for option in allowed:
            if value == option:
                return option
        raise self._error(key, value, "one of " + ", ".join(map(repr, allowed)))

    def flag(self, key: str) -> bool:
        value = self._get(key)
        if value is None:
            return False
        if not isinstance(value, bool):
            raise self._error(key, value, "true or false")
        return value

    def port(self, key: str) -> int | None:
        return self._port_value(key, self._get(key))

    def _port_value(self, key: str, value: object) -> int | None:
        if value is None:
            return None
        # bool is an int to Python, but never a port.
        number = value if isinstance(value, int | float) and not isinstance(value, bool) else None
        if number is None or not 1 <= number <= _MAX_PORT or number != int(number):
            raise self._error(key, value, f"a port number (an integer from 1 to {_MAX_PORT})")
        return int(number)

    def labels(self, key: str) -> dict[str, str]:
        value = self._get(key)
        if value is None:
            return {}
        if not isinstance(value, Mapping) or not all(isinstance(v, str) for v in value.values()):
            raise self._error(key, value, "an object of string labels")
        return {str(k): v for k, v in value.items()}

    def locality(self, key: str) -> str | None:
        value = self.string(key)
        problem = locality_problem(value) if value is not None else None
        if problem is not None:
            raise self._error(key, value, f"a locality, region[/zone[/subzone]]: it {problem}")
        return value

    def upstreams(self, key: str) -> tuple[ProxyUpstream, ...]:
        value = self._get(key)
        if value is None:
            return ()
        allowed = "a list of {hostname, port, local_port}"
        if not isinstance(value, list | tuple):
            raise self._error(key, value, allowed)
        upstreams = []
        for entry in value:
            if not isinstance(entry, Mapping) or not isinstance(entry.get("hostname"), str):
                raise self._error(key, entry, allowed)
            port = self._port_value(key, entry.get("port"))
            local_port = self._port_value(key, entry.get("local_port"))
            if port is None or local_port is None:
                raise self._error(key, entry, allowed)
            upstreams.append(ProxyUpstream(entry["hostname"], port, local_port))
        return tuple(upstreams)
