"""Responses to wire bytes, each distinct body serialized once for every stream that sends it.

After a change, hundreds of streams send the same resources at the same version; only the
nonce differs. Protobuf messages concatenate (a field may come in any order), so the body is
serialized once without a nonce and each stream appends its own nonce field. The ADS method
handlers then write these bytes as they are (no response serializer).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable

from envoy.service.discovery.v3 import discovery_pb2
from google.protobuf.message import Message

from pilotfish.xds.protocol import SendResponse

# Field 5 (``nonce``) of both DiscoveryResponse and DeltaDiscoveryResponse, length-delimited.
_NONCE_FIELD = 5
_LENGTH_DELIMITED = 2
_NONCE_TAG = bytes([(_NONCE_FIELD << 3) | _LENGTH_DELIMITED])
assert discovery_pb2.DiscoveryResponse.DESCRIPTOR.fields_by_name["nonce"].number == _NONCE_FIELD
assert (
    discovery_pb2.DeltaDiscoveryResponse.DESCRIPTOR.fields_by_name["nonce"].number == _NONCE_FIELD
)


def sotw_response_to_proto(response: SendResponse) -> discovery_pb2.DiscoveryResponse:
    return discovery_pb2.DiscoveryResponse(
        version_info=response.version,
        resources=[r.any for r in response.resources],
        type_url=response.type_url,
        nonce=response.nonce,
    )


def delta_response_to_proto(response: SendResponse) -> discovery_pb2.DeltaDiscoveryResponse:
    return discovery_pb2.DeltaDiscoveryResponse(
        system_version_info=response.version,
        resources=[
            discovery_pb2.Resource(name=r.name, version=r.version, resource=r.any)
            for r in response.resources
        ],
        type_url=response.type_url,
        nonce=response.nonce,
        removed_resources=list(response.removed),
    )


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        low = value & 0x7F
        value >>= 7
        if value:
            out.append(low | 0x80)
        else:
            out.append(low)
            return bytes(out)


def nonce_field(nonce: str) -> bytes:
    data = nonce.encode()
    return _NONCE_TAG + _varint(len(data)) + data


_BodyKey = tuple[str, str, str, tuple[int, ...], tuple[str, ...]]
_ELEMENT_KEY_LIMIT = 64


class ResponseEncoder:
    """Remembers the bodies of the last few distinct responses (one server's streams share
    it). Entries hold the resources they were made of, so their ids cannot be reused."""

    def __init__(self, size: int = 64) -> None:
        self._size = size
        self._bodies: OrderedDict[_BodyKey, tuple[tuple[object, ...], bytes]] = OrderedDict()
        self.hits = 0
        self.misses = 0

    def sotw(self, response: SendResponse) -> bytes:
        return self._encode("sotw", response, sotw_response_to_proto)

    def delta(self, response: SendResponse) -> bytes:
        return self._encode("delta", response, delta_response_to_proto)

    def _encode(
        self, kind: str, response: SendResponse, to_proto: Callable[[SendResponse], Message]
    ) -> bytes:
        resources = response.resources
        # Streams of a state-of-the-world type share one selection (the same tuple); Delta
        # streams build their own tuple of shared resources: compare those element by element.
        key: _BodyKey = (
            kind,
            response.type_url,
            response.version,
            (id(resources),),
            response.removed,
        )
        known = self._bodies.get(key)
        if known is None or known[0] is not resources:
            key = (
                kind,
                response.type_url,
                response.version,
                tuple(map(id, resources)),
                response.removed,
            )
            known = self._bodies.get(key)
            if known is not None and not all(
                a is b for a, b in zip(known[0], resources, strict=True)
            ):
                known = None
        if known is not None:
            self._bodies.move_to_end(key)
            self.hits += 1
            return known[1] + nonce_field(response.nonce)
        self.misses += 1
        without_nonce = SendResponse(
            response.type_url, response.version, "", resources, response.removed
        )
        body = to_proto(without_nonce).SerializeToString()
        self._remember(key, resources, body)
        if len(resources) > _ELEMENT_KEY_LIMIT:
            # A large set is usually one selection shared by many streams: find it by identity.
            self._remember(
                (kind, response.type_url, response.version, (id(resources),), response.removed),
                resources,
                body,
            )
        return body + nonce_field(response.nonce)

    def _remember(self, key: _BodyKey, resources: tuple[object, ...], body: bytes) -> None:
        self._bodies[key] = (resources, body)
        while len(self._bodies) > self._size:
            self._bodies.popitem(last=False)
