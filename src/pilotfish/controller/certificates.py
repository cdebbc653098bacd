"""The control plane's CA at run time: who may get which certificate, what was signed, when
the root rotates, and the trust bundle agents watch.

Pure parts live in ``pilotfish.ca``; this holds the state between them, writes the store on
a rotation, and logs what an operator must hear of (refusals, roots close to expiry).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
from collections import deque
from collections.abc import AsyncIterator, Callable
from typing import NoReturn

from cryptography import x509

from pilotfish.ca.api import CertificateRefused, SignedCertificate, TrustBundle
from pilotfish.ca.credentials import InvalidCredential
from pilotfish.ca.issuer import CertificateAuthority
from pilotfish.ca.rotation import (
    HolderKey,
    IssuedLog,
    IssuedRecord,
    RotationError,
    RotationPhase,
    RotationState,
    holder_key,
    holder_name,
    old_epoch_holders,
    remaining_fraction,
    rotation_due,
)
from pilotfish.ca.store import (
    StoredCa,
    begin_root_rotation,
    finish_root_rotation,
    save_issued_log,
)
from pilotfish.model.identity import Identity
from pilotfish.model.resources import MeshSettings

log = logging.getLogger("pilotfish.ca")

# A root or intermediate is announced as expiring when less than this is left, or less than
# WARN_FRACTION of its lifetime (whichever comes first).
WARN_BEFORE = dt.timedelta(days=30)
WARN_FRACTION = 0.2
WARN_EVERY = dt.timedelta(days=1)
RECENT_SIGNED = 50
FORGET_AFTER = dt.timedelta(days=1)
# Any credential holder may send node ids of its choosing: the records (memory, issued.json)
# stay bounded whatever they send.
MAX_RECORDS = 10_000
MAX_NODE_ID_LENGTH = 256


def utc_now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def expiry_warnings(authority: CertificateAuthority, now: dt.datetime) -> list[str]:
    """One line per root or intermediate that is close to expiry (or past it)."""
    named = [("root", c) for c in authority.trusted_roots]
    if authority.certificate not in authority.trusted_roots:
        named.append(("intermediate", authority.certificate))
    named += [("intermediate", c) for c in authority.intermediates]
    warnings = []
    for kind, certificate in named:
        not_after = certificate.not_valid_after_utc
        left = not_after - now
        fraction = remaining_fraction(certificate.not_valid_before_utc, not_after, now)
        if left <= dt.timedelta(0):
            warnings.append(
                f"{kind} {_name(certificate)} EXPIRED at {not_after.isoformat()}: peers "
                "reject every certificate it signed"
            )
        elif left < WARN_BEFORE or fraction < WARN_FRACTION:
            warnings.append(
                f"{kind} {_name(certificate)} expires at {not_after.isoformat()} "
                f"(in {left.days} days, {fraction:.0%} of its lifetime left)"
            )
    return warnings


class MeshCertificateAuthority:
    def __init__(
        self,
        stored: StoredCa,
        mesh: MeshSettings,
        clock: Callable[[], dt.datetime] = utc_now,
    ) -> None:
        self._stored = stored
        self._mesh = mesh
        self._clock = clock
        self._auto_rotate_fraction = mesh.certificates.root_renew_grace_percentage / 100
        # Certificates signed without a record kept (by a previous control plane that did not
        # stop cleanly, or dropped past MAX_RECORDS): until they have all expired, nobody can
        # say that every agent re-issued.
        self._unknown_until = (
            None
            if stored.issued.complete
            else clock() + dt.timedelta(seconds=mesh.certificates.workload_ttl)
        )
        # Per agent (``holder_key``): its latest certificate, for rotation and status; in the
        # order they were signed, oldest first.
        self._holders: dict[HolderKey, IssuedRecord] = {}
        for record in sorted(stored.issued.records, key=lambda r: r.signed_at):
            self._keep(record)
        self._dirty = False
        self._recent: deque[IssuedRecord] = deque(maxlen=RECENT_SIGNED)
        self._refused = 0
        self._signed = 0
        self._bundle_changed = asyncio.Event()
        self._last_warned: dt.datetime | None = None
        self._rotation_starting: asyncio.Future[RotationState] | None = None

    @property
    def authority(self) -> CertificateAuthority:
        return self._stored.authority

    @property
    def mesh(self) -> MeshSettings:
        """The mesh settings the CA started with (an edit of them needs a restart)."""
        return self._mesh

    @property
    def rotation(self) -> RotationState:
        return self._stored.rotation

    @property
    def signed_total(self) -> int:
        """Certificates signed since this control plane started."""
        return self._signed

    @property
    def refused_total(self) -> int:
        """Certificate requests refused since this control plane started."""
        return self._refused

    def credential(self, identity: Identity) -> str:
        """The bearer token that lets an agent get certificates for ``identity`` only."""
        return self._stored.credentials.token_for(identity)

    def trust_bundle(self) -> TrustBundle:
        return self.authority.trust_bundle()

    async def watch_trust_bundle(self) -> AsyncIterator[TrustBundle]:
        """The current bundle, then each new one (forever; the caller stops iterating)."""
        while True:
            changed = self._bundle_changed
            yield self.trust_bundle()
            await changed.wait()

    def latest_for_node(self, node_id: str) -> IssuedRecord | None:
        """The certificate signed last for ``node_id`` (under whichever identity)."""
        return self.latest_by_node().get(node_id)

    def latest_by_node(self) -> dict[str, IssuedRecord]:
        """Per node id, the certificate signed last for it (under whichever identity)."""
        return {r.node_id: r for r in self._holders.values() if r.node_id is not None}

    # --- signing ------------------------------------------------------------------------

    def sign(
        self,
        csr_pem: str,
        token: str | None,
        ttl_seconds: float,
        node_id: str | None = None,
        peer: str = "?",
    ) -> SignedCertificate:
        """Sign for the identity ``token`` proves; refusals are logged with who asked."""
        caller = f"peer {peer}" + (f" node {node_id[:MAX_NODE_ID_LENGTH]!r}" if node_id else "")
        if node_id is not None and len(node_id) > MAX_NODE_ID_LENGTH:
            self._refuse(
                caller, f"its node id has {len(node_id)} characters, more than {MAX_NODE_ID_LENGTH}"
            )
        if token is None:
            self._refuse(
                caller, "it sent no credential (authorization: Bearer <token>)", InvalidCredential
            )
        try:
            identity = self._stored.credentials.verify(token)
        except InvalidCredential as exc:
            self._refuse(caller, str(exc), InvalidCredential)
        workload_ttl = self._mesh.certificates.workload_ttl
        ttl = workload_ttl if ttl_seconds <= 0 else min(ttl_seconds, workload_ttl)
        now = self._clock()
        try:
            signed, serial = self.authority.issue(csr_pem, identity, ttl, now)
        except CertificateRefused as exc:
            self._refuse(f"{caller} proving {identity}", str(exc))
        self._record(signed, serial, identity, node_id, now)
        self._maybe_finish_rotation(now)
        return signed

    def _refuse(
        self, caller: str, reason: str, error: type[CertificateRefused] = CertificateRefused
    ) -> NoReturn:
        self._refused += 1
        log.warning("refused a certificate to %s: %s", caller, reason)
        raise error(reason)

    def _record(
        self,
        signed: SignedCertificate,
        serial: int,
        identity: Identity,
        node_id: str | None,
        now: dt.datetime,
    ) -> None:
        record = IssuedRecord(
            identity=identity.spiffe_id,
            node_id=node_id,
            serial=serial,
            not_after=signed.not_after,
            # The key that signed it a moment ago, in the same step: no rotation in between.
            issuer_epoch=self.authority.issuer_epoch,
            signed_at=now,
        )
        self._signed += 1
        self._recent.append(record)
        self._keep(record)
        self._dirty = True

    def _keep(self, record: IssuedRecord) -> None:
        key = holder_key(record)
        self._holders.pop(key, None)  # to the end: the order stays oldest first
        self._holders[key] = record
        while len(self._holders) > MAX_RECORDS:
            oldest = next(iter(self._holders))
            dropped = self._holders.pop(oldest)
            if self._unknown_until is None or self._unknown_until < dropped.not_after:
                self._unknown_until = dropped.not_after
            log.warning(
                "CA: more than %d agents hold certificates: forgetting %s (signed %s); a root "
                "rotation keeps the old root until its certificate expires at %s",
                MAX_RECORDS,
                holder_name(oldest),
                dropped.signed_at.isoformat(timespec="seconds"),
                dropped.not_after.isoformat(timespec="seconds"),
            )

    # --- rotation -----------------------------------------------------------------------

    def rotate(self) -> RotationState:
        """Start a root rotation now (``RotationError`` when one runs or the CA is plugged)."""
        self._refuse_while_starting()
        self._begun(self._begin(self._stored, self._clock()))
        return self.rotation

    async def rotate_in_worker(self) -> RotationState:
        """``rotate``, with the key generation and the fsynced writes in a worker thread, so
        that the event loop keeps serving xDS meanwhile. Until the new root is in place the
        CA signs with the current key, and no other rotation can start. A cancelled caller
        does not stop it half way."""
        self._refuse_while_starting()
        starting = asyncio.ensure_future(self._rotate_in_worker())
        self._rotation_starting = starting
        return await asyncio.shield(starting)

    async def _rotate_in_worker(self) -> RotationState:
        try:
            # The store as it is now: an OVERLAP one is refused before any file is written, and
            # a STEADY one only a rotation replaces, which cannot start until we are done.
            stored = self._stored
            self._begun(await asyncio.to_thread(self._begin, stored, self._clock()))
            return self.rotation
        finally:
            self._rotation_starting = None

    def _refuse_while_starting(self) -> None:
        if self._rotation_starting is not None:
            raise RotationError("a root rotation is being started")

    def _begin(self, stored: StoredCa, now: dt.datetime) -> StoredCa:
        return begin_root_rotation(
            stored,
            self._mesh.trust_domain,
            self._mesh.certificates.root_ttl,
            self._mesh.certificates.workload_ttl,
            now,
        )

    def _begun(self, stored: StoredCa) -> None:
        self._stored = stored
        self._bundle_has_changed()
        self._maybe_finish_rotation(self._clock())

    def old_epoch_holders(self) -> list[str]:
        """Who the running rotation waits for (empty when none runs)."""
        return self._waiting_for(self._clock())

    def _waiting_for(self, now: dt.datetime) -> list[str]:
        if self.rotation.phase is not RotationPhase.OVERLAP:
            return []
        holders = old_epoch_holders(self._holders.values(), self.rotation.issuer_epoch, now)
        if self._unknown_until is not None and now < self._unknown_until:
            holders.append(
                "certificates without a record (signed by a previous control plane, or past "
                f"the {MAX_RECORDS} records kept), expired by "
                f"{self._unknown_until.isoformat(timespec='seconds')}"
            )
        return holders

    def save(self, final: bool = False) -> None:
        """Write the records for the next control plane; ``final`` when no more signing
        follows (the control plane stops), so the next one can trust them to be complete."""
        if self._dirty or final:
            records = tuple(self._holders.values())
            unknown = self._unknown_until is not None and self._clock() < self._unknown_until
            save_issued_log(
                self._stored.directory, IssuedLog(records, complete=final and not unknown)
            )
            self._dirty = False

    def tick(self) -> None:
        """What time alone decides: end a rotation, start an automatic one, warn of expiry."""
        now = self._clock()
        # Forget certificates a day after they expired, so memory follows the mesh; until
        # then proxy-status still shows when a proxy's certificate ran out.
        for holder in [h for h, r in self._holders.items() if r.not_after <= now - FORGET_AFTER]:
            del self._holders[holder]
            self._dirty = True
        self._maybe_finish_rotation(now)
        root = self.authority.root
        if (
            not self._stored.plugged
            and self._rotation_starting is None
            and self.rotation.phase is RotationPhase.STEADY
            and rotation_due(
                root.not_valid_before_utc,
                root.not_valid_after_utc,
                now,
                self._auto_rotate_fraction,
            )
        ):
            log.warning(
                "the root %s has less than %.0f%% of its lifetime left: rotating it",
                _name(root),
                100 * self._auto_rotate_fraction,
            )
            self.rotate()
        if self._last_warned is None or now - self._last_warned >= WARN_EVERY:
            self._last_warned = now
            for warning in expiry_warnings(self.authority, now):
                log.warning("CA: %s", warning)
        self.save()

    def _maybe_finish_rotation(self, now: dt.datetime) -> None:
        state = self.rotation
        if state.phase is not RotationPhase.OVERLAP:
            return
        holders = self._waiting_for(now)
        if state.ready_to_finish(now, holders):
            if holders:
                log.warning(
                    "dropping the old root although %d agent(s) never re-issued: %s",
                    len(holders),
                    ", ".join(holders[:5]),
                )
            self._stored = finish_root_rotation(self._stored)
            self._bundle_has_changed()

    def _bundle_has_changed(self) -> None:
        self._bundle_changed.set()
        self._bundle_changed = asyncio.Event()

    # --- status -------------------------------------------------------------------------

    def status_json(self) -> dict[str, object]:
        now = self._clock()
        authority = self.authority
        intermediates = [] if authority.certificate == authority.root else [authority.certificate]
        intermediates += list(authority.intermediates)
        return {
            "trust_domain": self._mesh.trust_domain,
            "plugged": self._stored.plugged,
            "issuer_epoch": authority.issuer_epoch,
            "rotation": {**self.rotation.to_json(), "waiting_for": self._waiting_for(now)},
            "roots": [_certificate_json(c, c == authority.root) for c in authority.trusted_roots],
            "intermediates": [_certificate_json(c, True) for c in intermediates],
            "warnings": expiry_warnings(authority, now),
            "workload_ttl_seconds": self._mesh.certificates.workload_ttl,
            "refused": self._refused,
            "recently_signed": [r.to_json() for r in reversed(self._recent)],
        }


def ca_status_json(stored: StoredCa, mesh: MeshSettings) -> dict[str, object]:
    """What ``status_json`` shows, from the files alone (no control plane runs)."""
    status = MeshCertificateAuthority(stored, mesh).status_json()
    del status["recently_signed"], status["refused"]
    return status


def _certificate_json(certificate: x509.Certificate, signing: bool) -> dict[str, object]:
    return {
        "subject": _name(certificate),
        "serial": f"{certificate.serial_number:x}",
        "not_before": certificate.not_valid_before_utc.isoformat(),
        "not_after": certificate.not_valid_after_utc.isoformat(),
        "signing": signing,
    }


def _name(certificate: x509.Certificate) -> str:
    return certificate.subject.rfc4514_string() or f"serial {certificate.serial_number:x}"
