"""The xDS server: sans-IO ADS stream state machines (SotW and Delta) and their grpc.aio shell."""

from __future__ import annotations

from pilotfish.xds.callbacks import StreamInfo, StreamKind, XdsCallbacks
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
from pilotfish.xds.server import (
    AggregatedDiscoveryServicer,
    XdsStreamError,
    server_keepalive_options,
    start_xds_server,
)
from pilotfish.xds.sotw import SotwStream
from pilotfish.xds.source import InMemorySnapshotSource, SnapshotSource
from pilotfish.xds.status_board import ProxyStatus, ProxyStatusBoard

__all__ = [
    "Action",
    "AggregatedDiscoveryServicer",
    "DeltaRequestReceived",
    "DeltaStream",
    "InMemorySnapshotSource",
    "NackReceived",
    "ProxyStatus",
    "ProxyStatusBoard",
    "RequestReceived",
    "SendResponse",
    "SnapshotChanged",
    "SnapshotSource",
    "SotwStream",
    "StreamInfo",
    "StreamKind",
    "SyncStatus",
    "TypeStatus",
    "XdsCallbacks",
    "XdsStreamError",
    "server_keepalive_options",
    "start_xds_server",
]
