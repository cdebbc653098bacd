"""`pilotfish trace` (filled in by the tracing work)."""

from __future__ import annotations

import argparse


def add_trace_commands(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    return None
