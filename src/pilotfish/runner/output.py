"""Interleave the logs of many processes on one terminal, each line prefixed with its source."""

from __future__ import annotations

import sys
from typing import TextIO

from pilotfish.agent.child_process import LineSink


def prefixed_printer(name: str, stream: TextIO | None = None) -> LineSink:
    def emit(line: str) -> None:
        out = stream or sys.stdout
        out.write(f"[{name}] {line}\n")
        out.flush()

    return emit
