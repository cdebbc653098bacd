"""Who a connected proxy is, as it tells us in the metadata of its xDS Node."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

from pilotfish.model.resources import Protocol

ProxyKind = Literal["sidecar", "gateway"]

_METADATA_PREFIX = "PILOTFISH_"


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

    def to_metadata(self) -> dict[str, object]:
        """The Node.metadata the agent writes into Envoy's bootstrap."""
        data: dict[str, object] = {
            "KIND": self.kind,
            "NAMESPACE": self.namespace,
            "LABELS": dict(self.labels),
            "BIND_ADDRESS": self.bind_address,
            "APP_PROTOCOL": self.app_protocol,
        }
        optional: dict[str, object | None] = {
            "SERVICE": self.service,
            "OUTBOUND_PORT": self.outbound_port,
            "INBOUND_PORT": self.inbound_port,
            "APP_PORT": self.app_port,
        }
        data.update({k: v for k, v in optional.items() if v is not None})
        return {_METADATA_PREFIX + k: v for k, v in data.items()}

    @classmethod
    def from_metadata(cls, node_id: str, metadata: Mapping[str, object]) -> ProxyNode:
        """Read what ``to_metadata`` wrote. Protobuf Structs hold numbers as floats."""

        def get(key: str) -> object | None:
            return metadata.get(_METADATA_PREFIX + key)

        def port(key: str) -> int | None:
            value = get(key)
            return int(value) if isinstance(value, int | float) else None

        kind = get("KIND")
        labels = get("LABELS")
        protocol = get("APP_PROTOCOL")
        service = get("SERVICE")
        return cls(
            id=node_id,
            kind="gateway" if kind == "gateway" else "sidecar",
            namespace=str(get("NAMESPACE") or "default"),
            service=str(service) if service else None,
            labels={str(k): str(v) for k, v in labels.items()} if isinstance(labels, dict) else {},
            bind_address=str(get("BIND_ADDRESS") or "127.0.0.1"),
            outbound_port=port("OUTBOUND_PORT"),
            inbound_port=port("INBOUND_PORT"),
            app_port=port("APP_PORT"),
            app_protocol=protocol if protocol in ("HTTP", "HTTP2", "GRPC", "TCP") else "HTTP",  # type: ignore[arg-type]
        )
