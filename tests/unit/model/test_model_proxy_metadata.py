"""A proxy's Node metadata: what the agent writes reads back the same, anything else is refused."""

from __future__ import annotations

import pytest

from pilotfish.model.proxy import ProxyMetadataError, ProxyNode

SIDECAR = ProxyNode(
    id="reviews-0",
    namespace="shop",
    service="reviews",
    labels={"app": "reviews", "version": "v1"},
    bind_address="127.0.0.2",
    outbound_port=15001,
    inbound_port=15006,
    app_port=9080,
    app_protocol="GRPC",
    workload="reviews-v1",
    telemetry=True,
)
GATEWAY = ProxyNode(id="gateway-0", kind="gateway", labels={"istio": "ingressgateway"})


def as_struct(metadata: dict[str, object]) -> dict[str, object]:
    """What a protobuf Struct gives back: every number a float (a bool stays a bool)."""
    return {
        k: float(v) if isinstance(v, int) and not isinstance(v, bool) else v
        for k, v in metadata.items()
    }


@pytest.mark.parametrize("node", [SIDECAR, GATEWAY], ids=["sidecar", "gateway"])
def test_what_the_agent_writes_reads_back_the_same(node: ProxyNode) -> None:
    assert ProxyNode.from_metadata(node.id, as_struct(node.to_metadata())) == node


def test_a_node_without_pilotfish_metadata_is_a_plain_sidecar() -> None:
    assert ProxyNode.from_metadata("plain", {"OTHER": "x"}) == ProxyNode(id="plain")


@pytest.mark.parametrize(
    ("key", "value", "allowed"),
    [
        ("KIND", "waypoint", "one of 'sidecar', 'gateway'"),
        ("KIND", "Gateway", "one of 'sidecar', 'gateway'"),
        ("APP_PROTOCOL", "http", "one of 'HTTP', 'HTTP2', 'GRPC', 'TCP'"),
        ("APP_PROTOCOL", "UDP", "one of 'HTTP', 'HTTP2', 'GRPC', 'TCP'"),
        ("APP_PORT", 0.0, "a port number"),
        ("INBOUND_PORT", 65536.0, "a port number"),
        ("OUTBOUND_PORT", 8080.5, "a port number"),
        ("OUTBOUND_PORT", "8080", "a port number"),
        ("APP_PORT", True, "a port number"),
        ("APP_PORT", float("nan"), "a port number"),
        ("LABELS", ["app"], "an object of string labels"),
        ("LABELS", {"version": 1.0}, "an object of string labels"),
        ("NAMESPACE", 3.0, "a string"),
        ("SERVICE", {"name": "x"}, "a string"),
        ("LOCALITY", "a/b/c/d", "a locality, region[/zone[/subzone]]: it has more parts"),
        ("LOCALITY", "a//c", "a locality, region[/zone[/subzone]]: it has an empty"),
        ("LOCALITY", "a/*", "a locality, region[/zone[/subzone]]: it is a place"),
        ("LOCALITY", "us east", "a locality, region[/zone[/subzone]]: it must not contain"),
    ],
)
def test_a_bad_value_is_an_error_naming_field_value_and_what_is_allowed(
    key: str, value: object, allowed: str
) -> None:
    metadata = as_struct(SIDECAR.to_metadata())
    metadata["PILOTFISH_" + key] = value
    with pytest.raises(ProxyMetadataError) as raised:
        ProxyNode.from_metadata("reviews-0", metadata)
    error = raised.value
    assert error.field == "PILOTFISH_" + key
    message = str(error)
    assert "'reviews-0'" in message
    assert f"PILOTFISH_{key}: {value!r} is not {allowed}" in message
