"""Responses serialized once and shared: the bytes must parse to exactly the message that
would have been built for each stream."""

from __future__ import annotations

from envoy.service.discovery.v3 import discovery_pb2
from hypothesis import given
from hypothesis import strategies as st
from xds_fakes import CDS, EDS, resource

from pilotfish.xds.encoding import (
    ResponseEncoder,
    delta_response_to_proto,
    sotw_response_to_proto,
)
from pilotfish.xds.protocol import SendResponse

RESOURCES = (resource(CDS, "a", "v1"), resource(CDS, "b", "v2"))


@given(nonce=st.text(min_size=1, max_size=300), removed=st.lists(st.text(max_size=5), max_size=3))
def test_delta_bytes_parse_to_the_message_with_the_streams_nonce(
    nonce: str, removed: list[str]
) -> None:
    response = SendResponse(CDS, "ver", nonce, RESOURCES, tuple(removed))
    parsed = discovery_pb2.DeltaDiscoveryResponse.FromString(ResponseEncoder().delta(response))
    assert parsed == delta_response_to_proto(response)
    assert parsed.nonce == nonce


@given(nonce=st.text(min_size=1, max_size=300))
def test_sotw_bytes_parse_to_the_message_with_the_streams_nonce(nonce: str) -> None:
    response = SendResponse(EDS, "ver", nonce, RESOURCES)
    parsed = discovery_pb2.DiscoveryResponse.FromString(ResponseEncoder().sotw(response))
    assert parsed == sotw_response_to_proto(response)


def test_streams_sending_the_same_resources_share_one_serialization() -> None:
    encoder = ResponseEncoder()
    first = encoder.delta(SendResponse(CDS, "ver", "1", RESOURCES))
    second = encoder.delta(SendResponse(CDS, "ver", "7", RESOURCES))
    assert (encoder.misses, encoder.hits) == (1, 1)
    assert discovery_pb2.DeltaDiscoveryResponse.FromString(first).nonce == "1"
    assert discovery_pb2.DeltaDiscoveryResponse.FromString(second).nonce == "7"
    other = (resource(CDS, "a", "v1"), resource(CDS, "b", "v3"))
    encoder.delta(SendResponse(CDS, "ver", "8", other))
    encoder.sotw(SendResponse(CDS, "ver", "9", RESOURCES))  # other message type: its own body
    assert (encoder.misses, encoder.hits) == (3, 1)


def test_remembered_bodies_are_bounded() -> None:
    encoder = ResponseEncoder(size=2)
    for version in ("a", "b", "c"):
        encoder.delta(SendResponse(CDS, version, "1", RESOURCES))
    encoder.delta(SendResponse(CDS, "a", "2", RESOURCES))
    assert (encoder.misses, encoder.hits) == (4, 0)
