"""Root rotation as a pure state machine; the store persists it, the control plane drives it.

Steady: one root, the CA signs with its key.
Rotation starts (``begin``): a new root is made, the bundle carries BOTH roots, the issuer
epoch grows and the CA signs with the new key at once. Agents see the higher epoch in the
bundle and re-issue. Peers holding either kind of certificate trust each other meanwhile.
Rotation ends (``finish``) when no agent still holds a valid certificate of an older epoch
(``old_epoch_holders`` is empty), or at ``drop_after`` (bounded by the workload lifetime:
after that every old certificate has expired anyway); the old root leaves the bundle.

Automatic rotation starts when a root has less than a fraction of its lifetime left
(``rotation_due``; MeshConfig ``spec.certificates.rootRenewGracePeriodPercentage``).
"""

from __future__ import annotations

import datetime as dt
import enum
from collections.abc import Iterable
from dataclasses import dataclass, replace

from pilotfish.errors import PilotfishError

# Rotate a self-signed root once it has less than a fifth of its life left, as istiod does
# by default: two years ahead for its 10-year root.
AUTO_ROTATE_FRACTION = 0.2


class RotationPhase(enum.Enum):
    STEADY = "steady"
    OVERLAP = "overlap"
    """Both roots are trusted; agents re-issue under the new one."""


class RotationError(PilotfishError):
    """A rotation was asked for in a state that cannot take it."""


@dataclass(frozen=True)
class RotationState:
    issuer_epoch: int = 1
    phase: RotationPhase = RotationPhase.STEADY
    started_at: dt.datetime | None = None
    drop_after: dt.datetime | None = None
    """When the old root leaves the bundle even if some agent never re-issued."""

    def begin(self, now: dt.datetime, max_overlap_seconds: float) -> RotationState:
        if self.phase is not RotationPhase.STEADY:
            raise RotationError(
                f"a root rotation is already running (epoch {self.issuer_epoch}, "
                f"started {self.started_at.isoformat() if self.started_at else '?'})"
            )
        return RotationState(
            issuer_epoch=self.issuer_epoch + 1,
            phase=RotationPhase.OVERLAP,
            started_at=now,
            drop_after=now + dt.timedelta(seconds=max_overlap_seconds),
        )

    def ready_to_finish(self, now: dt.datetime, holders: Iterable[str]) -> bool:
        """Whether the old root can go: nobody holds an old certificate, or time is up."""
        if self.phase is not RotationPhase.OVERLAP:
            return False
        if self.drop_after is not None and now >= self.drop_after:
            return True
        return not any(True for _ in holders)

    def finish(self) -> RotationState:
        if self.phase is not RotationPhase.OVERLAP:
            raise RotationError("no root rotation is running")
        return replace(self, phase=RotationPhase.STEADY, started_at=None, drop_after=None)

    def to_json(self) -> dict[str, object]:
        return {
            "issuer_epoch": self.issuer_epoch,
            "phase": self.phase.value,
            "started_at": self.started_at.isoformat() if self.started_at else None,
            "drop_after": self.drop_after.isoformat() if self.drop_after else None,
        }

    @classmethod
    def from_json(cls, data: object) -> RotationState:
        """The inverse of ``to_json``; ``ValueError`` naming the field that is wrong."""
        if not isinstance(data, dict):
            raise ValueError("not a JSON object")
        epoch = data.get("issuer_epoch")
        if not isinstance(epoch, int) or isinstance(epoch, bool) or epoch < 1:
            raise ValueError(f"issuer_epoch: {epoch!r} is not a positive integer")
        try:
            phase = RotationPhase(data.get("phase"))
        except ValueError as exc:
            raise ValueError(f"phase: {data.get('phase')!r} is not steady or overlap") from exc
        return cls(
            issuer_epoch=epoch,
            phase=phase,
            started_at=_time(data, "started_at"),
            drop_after=_time(data, "drop_after"),
        )


@dataclass(frozen=True)
class IssuedRecord:
    """One certificate the CA signed, as status and rotation need it."""

    identity: str
    node_id: str | None
    serial: int
    not_after: dt.datetime
    issuer_epoch: int
    signed_at: dt.datetime

    def to_json(self) -> dict[str, object]:
        return {
            "identity": self.identity,
            "node_id": self.node_id,
            "serial": f"{self.serial:x}",
            "not_after": self.not_after.isoformat(),
            "issuer_epoch": self.issuer_epoch,
            "signed_at": self.signed_at.isoformat(),
        }

    @classmethod
    def from_json(cls, data: object) -> IssuedRecord:
        """The inverse of ``to_json``; ``ValueError`` naming the field that is wrong."""
        if not isinstance(data, dict):
            raise ValueError("a record is not a JSON object")
        identity, node_id, serial = data.get("identity"), data.get("node_id"), data.get("serial")
        epoch = data.get("issuer_epoch")
        if not isinstance(identity, str):
            raise ValueError(f"identity: {identity!r} is not a string")
        if node_id is not None and not isinstance(node_id, str):
            raise ValueError(f"node_id: {node_id!r} is not a string")
        if not isinstance(serial, str):
            raise ValueError(f"serial: {serial!r} is not a hex string")
        if not isinstance(epoch, int) or isinstance(epoch, bool):
            raise ValueError(f"issuer_epoch: {epoch!r} is not an integer")
        not_after, signed_at = _time(data, "not_after"), _time(data, "signed_at")
        if not_after is None or signed_at is None:
            raise ValueError("not_after and signed_at are required")
        try:
            number = int(serial, 16)
        except ValueError as exc:
            raise ValueError(f"serial: {serial!r} is not a hex string") from exc
        return cls(identity, node_id, number, not_after, epoch, signed_at)


@dataclass(frozen=True)
class IssuedLog:
    """What a control plane knew of the certificates it signed, as the next one reads it."""

    records: tuple[IssuedRecord, ...] = ()
    complete: bool = True
    """False when certificates may have been signed that ``records`` lacks (the previous
    control plane did not stop cleanly, or kept no log): they are unknown until they expire."""

    def to_json(self) -> dict[str, object]:
        return {"complete": self.complete, "records": [r.to_json() for r in self.records]}

    @classmethod
    def from_json(cls, data: object) -> IssuedLog:
        if not isinstance(data, dict) or not isinstance(data.get("records"), list):
            raise ValueError("not an object with a list of records")
        complete = data.get("complete")
        if not isinstance(complete, bool):
            raise ValueError(f"complete: {complete!r} is not true or false")
        records = data["records"]
        return cls(tuple(IssuedRecord.from_json(r) for r in records), complete)


HolderKey = tuple[str, str]
"""An agent as the CA knows it: (the identity its credential proved, its node id)."""


def holder_key(record: IssuedRecord) -> HolderKey:
    """Who holds ``record``. The node id is only what the caller says and the identity is
    what its credential proves, so the same node id under another identity is another
    holder: it can never stand in for the real one. Without a node id each certificate
    counts on its own."""
    return (record.identity, record.node_id or f"serial {record.serial:x}")


def holder_name(key: HolderKey) -> str:
    identity, agent = key
    return f"{agent} ({identity})"


def old_epoch_holders(records: Iterable[IssuedRecord], epoch: int, now: dt.datetime) -> list[str]:
    """Agents (``holder_key``) that still hold a valid certificate older than ``epoch`` and
    none of it, by ``holder_name``. A certificate without a node id keeps the old root until
    it expires or ``drop_after``."""
    latest: dict[HolderKey, IssuedRecord] = {}
    for record in records:
        holder = holder_key(record)
        known = latest.get(holder)
        if known is None or (record.issuer_epoch, record.signed_at) >= (
            known.issuer_epoch,
            known.signed_at,
        ):
            latest[holder] = record
    return sorted(
        holder_name(holder)
        for holder, record in latest.items()
        if record.issuer_epoch < epoch and record.not_after > now
    )


def rotation_due(
    not_before: dt.datetime,
    not_after: dt.datetime,
    now: dt.datetime,
    fraction: float = AUTO_ROTATE_FRACTION,
) -> bool:
    """Whether less than ``fraction`` of the lifetime from ``not_before`` to ``not_after``
    is left at ``now``."""
    return remaining_fraction(not_before, not_after, now) < fraction


def remaining_fraction(not_before: dt.datetime, not_after: dt.datetime, now: dt.datetime) -> float:
    lifetime = (not_after - not_before).total_seconds()
    if lifetime <= 0:
        return 0.0
    return max(0.0, (not_after - now).total_seconds() / lifetime)


def _time(data: dict[str, object], key: str) -> dt.datetime | None:
    value = data.get(key)
    if value is None:
        return None
    if not isinstance(value, str):
        raise ValueError(f"{key}: {value!r} is not a time")
    try:
        parsed = dt.datetime.fromisoformat(value)
    except ValueError as exc:
        raise ValueError(f"{key}: {value!r} is not an ISO 8601 time") from exc
    if parsed.tzinfo is None:
        raise ValueError(f"{key}: {value!r} has no time zone")
    return parsed
