"""Stand-ins for the two grpc.aio objects a servicer touches, for unit tests of the xDS shell."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import grpc
from envoy.service.discovery.v3 import discovery_pb2
from google.protobuf.message import Message


class FakeContext:
    """The part of grpc.aio.ServicerContext the servicer uses. The servicer writes serialized
    responses (the ADS handlers have no response serializer); ``written`` holds them parsed
    as ``response_type``."""

    def __init__(self, response_type: type[Message] = discovery_pb2.DiscoveryResponse) -> None:
        self.written: asyncio.Queue[Any] = asyncio.Queue()
        self.code: grpc.StatusCode | None = None
        self.details: str | None = None
        self._response_type = response_type

    async def write(self, message: bytes) -> None:
        assert isinstance(message, bytes), "responses are written serialized"
        self.written.put_nowait(self._response_type.FromString(message))

    def set_code(self, code: grpc.StatusCode) -> None:
        self.code = code

    def set_details(self, details: str) -> None:
        self.details = details


class FakeRequests:
    """A request stream that ends when told to (``None``)."""

    def __init__(self) -> None:
        self.queue: asyncio.Queue[Any] = asyncio.Queue()

    def send(self, request: Any) -> None:
        self.queue.put_nowait(request)

    async def stream(self) -> AsyncIterator[Any]:
        while (request := await self.queue.get()) is not None:
            yield request
