"""The xDS server: sans-IO ADS stream state machines (SotW and Delta) and their grpc.aio shell."""

from __future__ import annotations

from pilotfish.xds.delta import DeltaStream
from pilotfish.xds.protocol import (
    Action,
    DeltaRequestReceived,
    NackReceived,
    RequestReceived,
    SendResponse,
    SnapshotChanged,
    SyncStatus,
    TypeStatus,
)
from pilotfish.xds.sotw import SotwStream

__all__ = [
    "Action",
    "DeltaRequestReceived",
    "DeltaStream",
    "NackReceived",
    "RequestReceived",
    "SendResponse",
    "SnapshotChanged",
    "SotwStream",
    "SyncStatus",
    "TypeStatus",
]
