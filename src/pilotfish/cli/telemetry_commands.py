"""`pilotfish stat`, `tap`, `logs` (filled in by the live-views work)."""

from __future__ import annotations

import argparse


def add_telemetry_commands(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    return None
