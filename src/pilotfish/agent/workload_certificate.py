"""The workload's key and certificate: made here, signed by the CA, renewed before they expire.

The private key is generated in this process and never leaves it (Envoy receives it over the
local SDS socket only). ``WorkloadCertificates`` keeps one certificate and the CA's trust
bundle current for the sidecar's whole life:

- it renews at half the lifetime, with jitter so that replicas started together do not ask
  together;
- a failed renewal is retried with capped exponential backoff while the current certificate
  keeps serving (the data plane outlives a control-plane outage until the certificate
  expires); a refusal (``CertificateRefused``: asking again unchanged will not help) is
  logged as an error and retried slowly, in case the configuration is fixed meanwhile;
- it watches the trust bundle and re-issues at once (small jitter) when the CA signs with a
  newer key (``issuer_epoch``), so that a root rotation can drop the old root soon.

Subscribers (the SDS server) are called on every change of certificate or bundle.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from pilotfish.ca.api import CertificateRefused, CertificateSigner, SignedCertificate, TrustBundle
from pilotfish.ca.csr import new_key_and_csr
from pilotfish.errors import PilotfishError
from pilotfish.model.identity import Identity

log = logging.getLogger(__name__)

Clock = Callable[[], datetime]
Sleep = Callable[[float], Awaitable[None]]
Listener = Callable[[], None]


class CertificateMismatch(PilotfishError):
    """The CA answered with a certificate that does not fit the request (another key, another
    identity): serving it would make Envoy reject it or present the wrong identity."""


@dataclass(frozen=True)
class RenewalPolicy:
    """When to renew and how to retry (renewal at half the lifetime, as istio-agent does)."""

    rotation_jitter: float = 0.1
    """Renewal happens at half the lifetime, give or take this fraction of that half."""
    epoch_jitter: float = 1.0
    """At most this many seconds between learning of a newer CA key and asking again."""
    first_retry: float = 1.0
    max_retry: float = 60.0
    """Capped exponential backoff between failed attempts (CA unreachable, stream ended);
    never more than half the time the current certificate has left."""
    max_bundle_retry: float = 5.0
    """The trust-bundle watch backs off to this at most, lower than renewals: a bundle learnt
    late (after a control-plane restart) is a window in which a newly rotated root's peers
    are not trusted, while one stream attempt every few seconds costs the CA nothing."""
    refused_retry: float = 60.0
    """Between attempts the CA refused: only a configuration change can help."""
    sign_timeout: float = 30.0
    """A signing request unanswered this long counts as failed (and is retried)."""
    min_delay: float = 0.5
    """Never renew sooner than this after an issue, whatever the certificate's dates say (a CA
    that backdates ``not_before`` would otherwise make a short-lived one renew in a loop)."""


def next_rotation(
    not_before: datetime,
    not_after: datetime,
    jitter: float,
    received_at: datetime | None = None,
) -> datetime:
    """When to renew a certificate valid from ``not_before`` to ``not_after``: at half its
    lifetime, moved by ``jitter`` (a fraction of that half, between -1 and 1).

    The lifetime counts from ``received_at`` when that is later: a CA backdates
    ``not_before`` for peers whose clocks lag (ours by 20 s), and counting that slack would
    renew a one-minute certificate after 20 s instead of 30 s."""
    if not -1.0 < jitter < 1.0:
        raise ValueError(f"jitter must be between -1 and 1 (exclusive), got {jitter}")
    if not_after <= not_before:
        raise ValueError(f"not_after {not_after} is not after not_before {not_before}")
    start = not_before if received_at is None else min(max(not_before, received_at), not_after)
    half = (not_after - start) / 2
    return start + half * (1.0 + jitter)


def retry_delay(failures: int, first: float, cap: float) -> float:
    """Capped exponential backoff: ``first`` after one failure, doubling, at most ``cap``."""
    if failures <= 0:
        return 0.0
    # Bounded so that days of failures cannot overflow a float.
    return min(cap, first * 2.0 ** min(failures - 1, 64))


def needs_reissue(certificate_epoch: int | None, bundle: TrustBundle) -> bool:
    """A certificate signed before the CA's latest key change must be replaced soon; one
    whose epoch the CA did not say (None) is never re-issued on that account: asking again
    would get another one without an epoch, in a loop."""
    return certificate_epoch is not None and bundle.issuer_epoch > certificate_epoch


@dataclass(frozen=True)
class WorkloadCertificate:
    """A signed certificate with its private key (PEM, PKCS#8)."""

    identity: Identity
    key_pem: str
    chain_pem: tuple[str, ...]
    serial: int
    not_before: datetime
    not_after: datetime
    issuer_epoch: int | None
    """None when the CA did not say (see ``SignedCertificate.issuer_epoch``)."""

    @property
    def serial_hex(self) -> str:
        """The serial as Envoy's admin ``/certs`` shows it: lowercase hex, whole bytes."""
        digits = f"{self.serial:x}"
        return digits.zfill(len(digits) + len(digits) % 2)


def certificate_from_signed(
    identity: Identity, key_pem: str, signed: SignedCertificate
) -> WorkloadCertificate:
    """Check that ``signed`` is for this key and identity, and hold it with the key."""
    if not signed.chain_pem:
        raise CertificateMismatch("the CA answered with an empty certificate chain")
    leaf = x509.load_pem_x509_certificate(signed.chain_pem[0].encode("ascii"))
    key = serialization.load_pem_private_key(key_pem.encode("ascii"), password=None)
    if leaf.public_key() != key.public_key():
        raise CertificateMismatch(
            f"the CA signed another key than ours (serial {leaf.serial_number:x})"
        )
    try:
        names = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        uris = names.get_values_for_type(x509.UniformResourceIdentifier)
    except x509.ExtensionNotFound:
        uris = []
    if uris != [identity.spiffe_id]:
        raise CertificateMismatch(
            f"the CA's certificate names {uris or 'no URI'}, not {identity.spiffe_id}"
        )
    return WorkloadCertificate(
        identity=identity,
        key_pem=key_pem,
        chain_pem=signed.chain_pem,
        serial=leaf.serial_number,
        # The dates peers check, whatever the answer around the certificate says.
        not_before=leaf.not_valid_before_utc,
        not_after=leaf.not_valid_after_utc,
        issuer_epoch=signed.issuer_epoch,
    )


def _utc_now() -> datetime:
    return datetime.now(UTC)


class WorkloadCertificates:
    """Holds the workload's current certificate and trust bundle; ``run()`` keeps them fresh.

    ``certificate`` and ``trust_bundle`` are None until the first arrive; ``ready`` is set
    once both are held. ``subscribe`` a callback to hear of every change. ``clock``, ``sleep``
    and ``rng`` are seams for tests of the schedule.
    """

    def __init__(
        self,
        identity: Identity,
        signer: CertificateSigner,
        ttl_seconds: float,
        *,
        policy: RenewalPolicy | None = None,
        clock: Clock = _utc_now,
        sleep: Sleep = asyncio.sleep,
        rng: random.Random | None = None,
    ) -> None:
        self.identity = identity
        self.ttl_seconds = ttl_seconds
        self.certificate: WorkloadCertificate | None = None
        self.trust_bundle: TrustBundle | None = None
        self.ready = asyncio.Event()
        self.issued = 0
        """Certificates received so far (the first one and every renewal)."""
        self.failures = 0
        """Consecutive failed attempts to get a certificate; 0 after a success."""
        self.signer = signer
        self._policy = policy or RenewalPolicy()
        self._clock = clock
        self._sleep = sleep
        self._rng = rng or random.Random()
        self._listeners: list[Listener] = []
        self._epoch_changed = asyncio.Event()

    # What proxy-status shows.
    @property
    def not_after(self) -> datetime | None:
        return self.certificate.not_after if self.certificate else None

    @property
    def serial(self) -> str | None:
        return self.certificate.serial_hex if self.certificate else None

    def subscribe(self, listener: Listener) -> Callable[[], None]:
        """Call ``listener`` after every change; returns the function that unsubscribes."""
        self._listeners.append(listener)
        return lambda: self._listeners.remove(listener)

    async def run(self) -> None:
        """Issue, renew and watch the bundle until cancelled; never raises otherwise."""
        watcher = asyncio.create_task(self._watch_bundle(), name=f"trust bundle {self.identity}")
        try:
            await self._keep_issued()
        finally:
            watcher.cancel()
            await asyncio.gather(watcher, return_exceptions=True)

    async def issue(self) -> WorkloadCertificate:
        """One attempt: a new key and CSR, signed by the CA; held (and announced) on success."""
        key_pem, csr_pem = new_key_and_csr(self.identity)
        # A CA that accepts the call and never answers must not stall renewals until expiry.
        signed = await asyncio.wait_for(
            self.signer.sign(csr_pem, self.ttl_seconds), self._policy.sign_timeout
        )
        certificate = certificate_from_signed(self.identity, key_pem, signed)
        self.certificate = certificate
        self.issued += 1
        log.info(
            "%s: certificate serial %s valid until %s",
            self.identity,
            certificate.serial_hex,
            certificate.not_after.isoformat(),
        )
        self._changed()
        return certificate

    async def _keep_issued(self) -> None:
        while True:
            self._epoch_changed.clear()
            try:
                certificate = await self.issue()
            except CertificateRefused as exc:
                self.failures += 1
                delay = self._policy.refused_retry
                log.error(
                    "%s: the CA REFUSED to sign: %s. %s Asking again in %gs.",
                    self.identity,
                    exc,
                    self._standing(),
                    delay,
                )
            except Exception as exc:
                # Whatever went wrong (CA unreachable, a bad answer), the sidecar stays up.
                self.failures += 1
                delay = self._transient_retry_delay()
                log.log(
                    self._failure_level(),
                    "%s: could not get a certificate (attempt %d): %s. %s Retrying in %.1fs.",
                    self.identity,
                    self.failures,
                    str(exc) or type(exc).__name__,
                    self._standing(),
                    delay,
                )
            else:
                self.failures = 0
                delay = self._renewal_delay(certificate)
                if self.trust_bundle and not needs_reissue(
                    certificate.issuer_epoch, self.trust_bundle
                ):
                    self._epoch_changed.clear()  # a bundle seen while signing: this one is new
            if await self._wait_unless_epoch_changes(delay):
                await self._sleep(self._rng.uniform(0.0, self._policy.epoch_jitter))

    def _renewal_delay(self, certificate: WorkloadCertificate) -> float:
        # Called as the certificate arrives: now is when we received it.
        now = self._clock()
        jitter = self._rng.uniform(-self._policy.rotation_jitter, self._policy.rotation_jitter)
        at = next_rotation(certificate.not_before, certificate.not_after, jitter, received_at=now)
        return max(self._policy.min_delay, (at - now).total_seconds())

    def _transient_retry_delay(self) -> float:
        delay = retry_delay(self.failures, self._policy.first_retry, self._policy.max_retry)
        if self.certificate is None:
            return delay
        # A certificate with little time left must not sleep through the CA's return: wait
        # at most half of what is left (one-minute certificates, a long outage).
        left = (self.certificate.not_after - self._clock()).total_seconds()
        return min(delay, max(self._policy.first_retry, left / 2))

    def _failure_level(self) -> int:
        held = self.certificate
        return logging.ERROR if held and held.not_after <= self._clock() else logging.WARNING

    def _standing(self) -> str:
        """What keeps serving meanwhile, and how long it can."""
        if self.certificate is None:
            return "No certificate yet: TLS listeners and clusters stay inactive."
        left = self.certificate.not_after - self._clock()
        if left <= timedelta(0):
            return (
                f"The current certificate (serial {self.certificate.serial_hex}) EXPIRED "
                f"{-left.total_seconds():.0f}s ago: peers refuse it."
            )
        return (
            f"The current certificate (serial {self.certificate.serial_hex}) keeps serving; "
            f"it expires in {left.total_seconds():.0f}s."
        )

    async def _wait_unless_epoch_changes(self, delay: float) -> bool:
        """Sleep ``delay``; True if cut short because the CA now signs with a newer key."""
        sleeping = asyncio.ensure_future(self._sleep(delay))
        woken = asyncio.ensure_future(self._epoch_changed.wait())
        try:
            await asyncio.wait({sleeping, woken}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            sleeping.cancel()
            woken.cancel()
            await asyncio.gather(sleeping, woken, return_exceptions=True)
        return woken.done() and not woken.cancelled()

    async def _watch_bundle(self) -> None:
        failures = 0
        while True:
            try:
                async for bundle in self.signer.watch_trust_bundle():
                    failures = 0
                    self._bundle_received(bundle)
                reason = "the stream ended"
            except Exception as exc:
                reason = str(exc) or type(exc).__name__
            failures += 1
            delay = retry_delay(failures, self._policy.first_retry, self._policy.max_bundle_retry)
            log.warning(
                "%s: trust bundle watch stopped (%s); watching again in %.1fs",
                self.identity,
                reason,
                delay,
            )
            await self._sleep(delay)

    def _bundle_received(self, bundle: TrustBundle) -> None:
        if bundle == self.trust_bundle:
            return  # a re-watch starts with the bundle we hold
        self.trust_bundle = bundle
        log.info(
            "%s: trust bundle of %d root(s), CA epoch %d",
            self.identity,
            len(bundle.roots_pem),
            bundle.issuer_epoch,
        )
        if self.certificate is not None and needs_reissue(self.certificate.issuer_epoch, bundle):
            log.info(
                "%s: the CA signs with a newer key (epoch %d > %d): re-issuing now",
                self.identity,
                bundle.issuer_epoch,
                self.certificate.issuer_epoch,
            )
            self._epoch_changed.set()
        self._changed()

    def _changed(self) -> None:
        if self.certificate is not None and self.trust_bundle is not None:
            self.ready.set()
        for listener in list(self._listeners):
            try:
                listener()
            except Exception:  # one broken subscriber must not stop renewals
                log.exception("%s: certificate subscriber failed", self.identity)
