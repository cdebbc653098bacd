"""Stand-ins for the two grpc.aio objects a servicer touches, for unit tests of the xDS shell."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import grpc


class FakeContext:
    """The part of grpc.aio.ServicerContext the servicer uses."""

    def __init__(self) -> None:
        self.written: asyncio.Queue[Any] = asyncio.Queue()
        self.code: grpc.StatusCode | None = None
        self.details: str | None = None

    async def write(self, message: Any) -> None:
        self.written.put_nowait(message)

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
