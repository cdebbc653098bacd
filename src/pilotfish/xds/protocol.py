"""Events a stream state machine is fed, actions it asks for, and what it reports per type.

Events are past-tense facts; actions are what the I/O shell must do, in order.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import Enum

from pilotfish.snapshot import Resource, Snapshot
from pilotfish.snapshot.type_urls import CLUSTER as CLUSTER_TYPE
from pilotfish.snapshot.type_urls import ENDPOINT as ENDPOINT_TYPE


@dataclass(frozen=True)
class RequestReceived:
    """A state-of-the-world DiscoveryRequest. ``error_message`` is set only on a NACK."""

    type_url: str
    version_info: str = ""
    resource_names: tuple[str, ...] = ()
    response_nonce: str = ""
    error_message: str | None = None


@dataclass(frozen=True)
class DeltaRequestReceived:
    """A DeltaDiscoveryRequest. ``error_message`` is set only on a NACK."""

    type_url: str
    subscribe: tuple[str, ...] = ()
    unsubscribe: tuple[str, ...] = ()
    initial_resource_versions: Mapping[str, str] = field(default_factory=dict)
    response_nonce: str = ""
    error_message: str | None = None


@dataclass(frozen=True)
class SnapshotChanged:
    snapshot: Snapshot


@dataclass(frozen=True)
class SendResponse:
    """One response to write. SotW ignores ``removed``; Delta sends only what changed."""

    type_url: str
    version: str
    nonce: str
    resources: tuple[Resource, ...]
    removed: tuple[str, ...] = ()


@dataclass(frozen=True)
class NackReceived:
    """The proxy rejected ``rejected_version``; the shell logs it and shows it."""

    type_url: str
    rejected_version: str | None
    message: str


Action = SendResponse | NackReceived


class SyncStatus(Enum):
    SYNCED = "SYNCED"
    STALE = "STALE"
    NACKED = "NACKED"
    NOT_SENT = "NOT SENT"


@dataclass(frozen=True)
class TypeStatus:
    """Where one resource type of one stream stands, as ``istioctl proxy-status`` shows it.

    ``desired_version`` is what the proxy should have now, given its subscription and the
    latest snapshot; ``None`` while there is no snapshot.
    """

    type_url: str
    desired_version: str | None
    sent_version: str | None
    acked_version: str | None
    nack_message: str | None

    @property
    def status(self) -> SyncStatus:
        if self.nack_message is not None:
            return SyncStatus.NACKED
        if self.sent_version is None and self.acked_version is None:
            return SyncStatus.NOT_SENT
        if self.acked_version is not None and self.acked_version == self.desired_version:
            return SyncStatus.SYNCED
        return SyncStatus.STALE


@dataclass
class _Nack:
    nonce: int
    version: str | None
    message: str


@dataclass
class TypeProgress:
    """Bookkeeping both protocols share for one type on one stream."""

    type_url: str
    desired_version: str | None = None
    sent_version: str | None = None
    acked_version: str | None = None
    nack: _Nack | None = None

    def record_ack(self, nonce: int, version: str | None) -> None:
        if version:
            self.acked_version = version
        if self.nack is not None and nonce > self.nack.nonce:
            self.nack = None

    def record_nack(self, nonce: int, version: str | None, message: str) -> NackReceived:
        self.nack = _Nack(nonce, version, message)
        return NackReceived(self.type_url, version, message)

    def status(self) -> TypeStatus:
        return TypeStatus(
            type_url=self.type_url,
            desired_version=self.desired_version,
            sent_version=self.sent_version,
            acked_version=self.acked_version,
            nack_message=None if self.nack is None else self.nack.message,
        )


class NonceSource:
    """Nonces unique within a stream, increasing so that "sent later" is a comparison."""

    def __init__(self) -> None:
        self._last = 0

    def next(self) -> int:
        self._last += 1
        return self._last

    @staticmethod
    def parse(nonce: str) -> int | None:
        return int(nonce) if nonce.isdecimal() else None


def load_assignments_to_resend(old: Snapshot | None, new: Snapshot) -> frozenset[str]:
    """Load assignments of clusters that changed between two snapshots.

    Envoy rebuilds a changed cluster and keeps it warming until it sees the cluster's load
    assignment again, even if the assignment itself did not change.
    """
    if old is None:
        return frozenset()
    previous = old.of_type(CLUSTER_TYPE)
    current = new.of_type(CLUSTER_TYPE)
    names: set[str] = set()
    # Only clusters that differ between the two can qualify; that list is worked out once for
    # every stream that sees the same pair of snapshots.
    for name in new.changed_names(old, CLUSTER_TYPE):
        before, cluster = previous.get(name), current.get(name)
        if before is not None and cluster is not None and before.version != cluster.version:
            names.update(
                ref_name for ref_type, ref_name in cluster.references if ref_type == ENDPOINT_TYPE
            )
    return frozenset(names)
