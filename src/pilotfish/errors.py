"""The root of every error Pilotfish raises on purpose."""

from __future__ import annotations


class PilotfishError(Exception):
    """Base class: callers can catch everything Pilotfish raises deliberately with one clause."""
