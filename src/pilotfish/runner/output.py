"""Interleave the logs of many processes on one terminal, each line prefixed with its source."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Callable
from typing import TextIO

LineSink = Callable[[str], None]


def prefixed_printer(name: str, stream: TextIO | None = None) -> LineSink:
    def emit(line: str) -> None:
        out = stream or sys.stdout
        out.write(f"[{name}] {line}\n")
        out.flush()

    return emit


async def pump_lines(reader: asyncio.StreamReader, sink: LineSink) -> None:
    """Forward a child's output line by line until it closes the pipe."""
    while True:
        raw = await reader.readline()
        if not raw:
            return
        sink(raw.decode(errors="replace").rstrip("\n"))
