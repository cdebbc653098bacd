"""Pilotfish: a service mesh whose control plane is Python and whose data plane is Envoy."""

from __future__ import annotations

__version__ = "0.1.0"
