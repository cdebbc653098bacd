"""The certificate schedule: when to renew, how to retry, when a CA key change re-issues.

The signer is the in-process test CA (real certificates); time is fake: every sleep waits
until the test moves the clock to it.
"""

from __future__ import annotations

import asyncio
import dataclasses
import random
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import pytest
from cryptography.hazmat.primitives import serialization
from hypothesis import given
from hypothesis import strategies as st
from tests.in_process_ca import InProcessCA
from tests.waiting import eventually

from pilotfish.agent.workload_certificate import (
    RenewalPolicy,
    WorkloadCertificate,
    WorkloadCertificates,
    needs_reissue,
    next_rotation,
    retry_delay,
)
from pilotfish.ca.api import SignedCertificate, TrustBundle
from pilotfish.ca.csr import new_key_and_csr
from pilotfish.model.identity import Identity

IDENTITY = Identity("cluster.local", "shop", "reviews")
START = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
NO_JITTER = RenewalPolicy(rotation_jitter=0.0, epoch_jitter=1.0)


# --- pure rules -----------------------------------------------------------------------------


def test_rotation_is_at_half_the_lifetime_without_jitter() -> None:
    assert next_rotation(START, START + timedelta(hours=24), 0.0) == START + timedelta(hours=12)


def test_jitter_moves_rotation_by_a_fraction_of_the_half() -> None:
    end = START + timedelta(seconds=200)
    assert next_rotation(START, end, 0.1) == START + timedelta(seconds=110)
    assert next_rotation(START, end, -0.1) == START + timedelta(seconds=90)


@given(
    lifetime=st.floats(min_value=1.0, max_value=10 * 365 * 86400.0),
    jitter=st.floats(min_value=-0.1, max_value=0.1),
)
def test_rotation_falls_between_45_and_55_percent_of_the_lifetime(
    lifetime: float, jitter: float
) -> None:
    at = next_rotation(START, START + timedelta(seconds=lifetime), jitter)
    fraction = (at - START).total_seconds() / lifetime
    assert 0.45 - 1e-6 <= fraction <= 0.55 + 1e-6


@pytest.mark.parametrize("jitter", [1.0, -1.0, 1.5])
def test_jitter_beyond_the_half_is_refused(jitter: float) -> None:
    with pytest.raises(ValueError, match="jitter"):
        next_rotation(START, START + timedelta(hours=1), jitter)


def test_a_certificate_that_ends_before_it_starts_is_refused() -> None:
    with pytest.raises(ValueError, match="not after"):
        next_rotation(START, START, 0.0)


def test_the_lifetime_counts_from_receipt_when_not_before_was_backdated() -> None:
    # A 60 s certificate backdated by 20 s: half of what is left after receipt, not of 80 s.
    backdated, received, end = START, START + timedelta(seconds=20), START + timedelta(seconds=80)
    assert next_rotation(backdated, end, 0.0, received_at=received) == received + timedelta(
        seconds=30
    )
    # Received before its not_before (our clock lags): its own dates decide.
    assert next_rotation(received, end, 0.0, received_at=backdated) == received + timedelta(
        seconds=30
    )
    # Received after it expired: renew at once.
    late = end + timedelta(seconds=5)
    assert next_rotation(backdated, end, 0.0, received_at=late) == end


def test_retry_delay_doubles_from_one_second_up_to_the_cap() -> None:
    delays = [retry_delay(n, 1.0, 60.0) for n in range(0, 10)]
    assert delays == [0.0, 1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 60.0, 60.0, 60.0]
    assert retry_delay(10_000, 1.0, 60.0) == 60.0


def test_a_newer_ca_epoch_requires_a_new_certificate_and_the_same_does_not() -> None:
    assert needs_reissue(1, TrustBundle(("root",), issuer_epoch=2))
    assert not needs_reissue(2, TrustBundle(("root",), issuer_epoch=2))
    assert not needs_reissue(3, TrustBundle(("root",), issuer_epoch=2))


@pytest.mark.parametrize(
    ("serial", "shown"), [(0x0FD8, "0fd8"), (0xABC, "0abc"), (0x1234, "1234"), (0x5, "05")]
)
def test_the_serial_is_shown_in_whole_bytes_as_envoy_shows_it(serial: int, shown: str) -> None:
    held = WorkloadCertificate(IDENTITY, "", ("",), serial, START, START, 1)
    assert held.serial_hex == shown


# --- the schedule, in fake time -------------------------------------------------------------


class FakeTime:
    """A clock that moves only when the test moves it to the next sleeper."""

    def __init__(self) -> None:
        self.now = START
        self.requested: list[float] = []
        self._sleepers: list[tuple[datetime, asyncio.Future[None]]] = []

    def clock(self) -> datetime:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.requested.append(seconds)
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._sleepers.append((self.now + timedelta(seconds=seconds), future))
        try:
            await future
        finally:
            self._sleepers = [s for s in self._sleepers if s[1] is not future]

    async def next_sleep(self) -> float:
        """Let the code run until it sleeps once more; that sleep's length."""
        seen = len(self.requested)
        for _ in range(1000):
            if len(self.requested) > seen:
                return self.requested[seen]
            await asyncio.sleep(0)
        raise AssertionError(f"nothing went to sleep; sleeps so far: {self.requested}")

    async def wake_next(self) -> None:
        """Move the clock to the earliest sleeper and wake it."""
        at, future = min(self._sleepers, key=lambda s: s[0])
        self.now = max(self.now, at)
        future.set_result(None)


@pytest.fixture
def fake_time() -> FakeTime:
    return FakeTime()


@pytest.fixture
def ca(fake_time: FakeTime) -> InProcessCA:
    return InProcessCA(clock=fake_time.clock)


class Running:
    """A ``WorkloadCertificates`` in fake time, started by the test once it set the CA up."""

    def __init__(self, ca: InProcessCA, fake_time: FakeTime) -> None:
        self.certificates = WorkloadCertificates(
            IDENTITY,
            ca,
            ttl_seconds=100,
            policy=NO_JITTER,
            clock=fake_time.clock,
            sleep=fake_time.sleep,
            rng=random.Random(7),
        )
        self.changes: list[str] = []
        self.certificates.subscribe(lambda: self.changes.append(self.certificates.serial or "-"))
        self.task: asyncio.Task[None] | None = None

    def start(self) -> WorkloadCertificates:
        self.task = asyncio.create_task(self.certificates.run())
        return self.certificates


@pytest.fixture
async def running(ca: InProcessCA, fake_time: FakeTime) -> AsyncIterator[Running]:
    harness = Running(ca, fake_time)
    try:
        yield harness
    finally:
        if harness.task is not None:
            harness.task.cancel()
            await asyncio.gather(harness.task, return_exceptions=True)


async def test_first_certificate_is_held_with_its_key_and_renewed_at_half_its_life(
    running: Running, fake_time: FakeTime, ca: InProcessCA
) -> None:
    certificates, changes = running.start(), running.changes
    assert await fake_time.next_sleep() == 50.0
    first = certificates.certificate
    assert first is not None and certificates.ready.is_set()
    assert first.identity == IDENTITY
    assert first.chain_pem == (ca.signed[0].public_bytes(serialization.Encoding.PEM).decode(),)
    assert certificates.serial is not None
    assert int(certificates.serial, 16) == ca.signed[0].serial_number
    assert certificates.not_after == START + timedelta(seconds=100)
    await fake_time.wake_next()
    assert await fake_time.next_sleep() == 50.0
    second = certificates.certificate
    assert second is not None and second.serial != first.serial
    assert second.key_pem != first.key_pem  # a new key for every certificate
    assert certificates.issued == 2
    assert first.serial_hex in changes and second.serial_hex in changes


async def test_a_backdated_certificate_is_renewed_at_half_of_the_time_since_it_arrived(
    running: Running, fake_time: FakeTime, ca: InProcessCA
) -> None:
    ca.backdate = timedelta(seconds=20)
    certificates = running.start()
    assert await fake_time.next_sleep() == 50.0
    assert certificates.certificate is not None
    assert certificates.certificate.not_before == START - timedelta(seconds=20)


async def test_failures_back_off_exponentially_and_the_old_certificate_keeps_serving(
    running: Running, fake_time: FakeTime, ca: InProcessCA
) -> None:
    certificates = running.start()
    assert await fake_time.next_sleep() == 50.0
    held = certificates.certificate
    ca.sign_failures = [ConnectionError("unreachable"), OSError("refused"), TimeoutError()]
    delays = []
    for _ in range(3):
        await fake_time.wake_next()
        delays.append(await fake_time.next_sleep())
        assert certificates.certificate is held
    assert delays == [1.0, 2.0, 4.0]
    assert certificates.failures == 3
    await fake_time.wake_next()
    assert await fake_time.next_sleep() == 50.0
    assert certificates.certificate is not held and certificates.failures == 0


async def test_failing_renewals_say_how_long_the_certificate_has_left_then_that_it_expired(
    running: Running, fake_time: FakeTime, ca: InProcessCA, caplog: pytest.LogCaptureFixture
) -> None:
    running.start()
    assert await fake_time.next_sleep() == 50.0
    ca.sign_failures = [ConnectionError("unreachable")] * 30
    await fake_time.wake_next()  # at 50 s: 50 s left
    await fake_time.next_sleep()
    assert "keeps serving; it expires in 50s" in caplog.text
    assert not [r for r in caplog.records if r.levelname == "ERROR"]
    expiry = START + timedelta(seconds=100)
    while fake_time.now < expiry:
        await fake_time.wake_next()
        delay = await fake_time.next_sleep()
        # Never sleeping through the rest of the certificate's life: 1, 2, 4, 8, 16 s, then
        # at most half of what is left.
        left = (expiry - fake_time.now).total_seconds()
        assert delay <= max(1.0, left / 2), (delay, left)
    assert fake_time.requested[1:6] == [1.0, 2.0, 4.0, 8.0, 16.0]
    assert "EXPIRED" in caplog.text
    assert [r for r in caplog.records if r.levelname == "ERROR" and "EXPIRED" in r.message]


async def test_a_refusal_is_retried_slowly_and_does_not_end_the_loop(
    running: Running,
    fake_time: FakeTime,
    ca: InProcessCA,
    caplog: pytest.LogCaptureFixture,
) -> None:
    ca.refuse = "identity spiffe://cluster.local/ns/shop/sa/reviews is not yours"
    certificates = running.start()
    assert await fake_time.next_sleep() == RenewalPolicy().refused_retry
    assert certificates.certificate is None and not certificates.ready.is_set()
    assert "REFUSED" in caplog.text and "is not yours" in caplog.text
    await fake_time.wake_next()
    assert await fake_time.next_sleep() == RenewalPolicy().refused_retry
    ca.refuse = None
    await fake_time.wake_next()
    assert await fake_time.next_sleep() == 50.0
    assert certificates.certificate is not None


async def test_a_newer_ca_key_re_issues_at_once_not_at_half_life(
    running: Running, fake_time: FakeTime, ca: InProcessCA
) -> None:
    certificates = running.start()
    assert await fake_time.next_sleep() == 50.0
    first = certificates.certificate
    assert first is not None and first.issuer_epoch == 1
    await ca.rotate_root()
    jitter = await fake_time.next_sleep()
    assert 0.0 <= jitter <= NO_JITTER.epoch_jitter
    assert certificates.trust_bundle is not None and len(certificates.trust_bundle.roots_pem) == 2
    await fake_time.wake_next()
    # The certificate's dates are whole seconds: half its life from now is a little less.
    assert await fake_time.next_sleep() == pytest.approx(50.0, abs=1.0)
    second = certificates.certificate
    assert second is not None and second.issuer_epoch == 2
    assert fake_time.now - START <= timedelta(seconds=NO_JITTER.epoch_jitter)


class NoEpochSigner:
    """Answers as istiod does: a certificate, and no issuer epoch."""

    def __init__(self, ca: InProcessCA) -> None:
        self.ca = ca

    async def sign(self, csr_pem: str, ttl_seconds: float) -> SignedCertificate:
        signed = await self.ca.sign(csr_pem, ttl_seconds)
        return dataclasses.replace(signed, issuer_epoch=None)

    def watch_trust_bundle(self) -> AsyncIterator[TrustBundle]:
        return self.ca.watch_trust_bundle()


def test_a_certificate_of_unknown_epoch_never_needs_reissue_on_that_account() -> None:
    assert not needs_reissue(None, TrustBundle(("root",), 7))


async def test_a_certificate_without_an_epoch_is_renewed_at_half_life_only(
    fake_time: FakeTime, ca: InProcessCA
) -> None:
    certificates = WorkloadCertificates(
        IDENTITY,
        NoEpochSigner(ca),
        100,
        policy=NO_JITTER,
        clock=fake_time.clock,
        sleep=fake_time.sleep,
    )
    task = asyncio.create_task(certificates.run())
    try:
        assert await fake_time.next_sleep() == 50.0
        assert certificates.trust_bundle is not None
        await ca.rotate_root()  # a newer epoch: nothing to compare ours with
        for _ in range(50):
            await asyncio.sleep(0)
        assert certificates.trust_bundle.issuer_epoch == 2
        assert fake_time.requested == [50.0]
        assert ca.attempts == 1
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def test_the_same_epoch_in_a_new_bundle_does_not_re_issue(
    running: Running, fake_time: FakeTime, ca: InProcessCA
) -> None:
    certificates, changes = running.start(), running.changes
    assert await fake_time.next_sleep() == 50.0
    first = certificates.certificate
    ca.roots = (*ca.roots, InProcessCA(clock=fake_time.clock).root)  # a root added, same key
    async with ca._changed:
        ca._changed.notify_all()
    for _ in range(50):
        await asyncio.sleep(0)
    assert certificates.trust_bundle is not None and len(certificates.trust_bundle.roots_pem) == 2
    assert fake_time.requested == [50.0]
    assert first is not None and certificates.certificate is first
    assert changes[-1] == first.serial_hex  # subscribers heard of the new bundle


class SilentSigner:
    """Accepts the call and never answers."""

    def __init__(self, ca: InProcessCA) -> None:
        self.ca = ca

    async def sign(self, csr_pem: str, ttl_seconds: float) -> SignedCertificate:
        await asyncio.Event().wait()
        raise AssertionError("unreachable")

    def watch_trust_bundle(self) -> AsyncIterator[TrustBundle]:
        return self.ca.watch_trust_bundle()


async def test_a_signing_request_left_unanswered_times_out_and_is_retried(
    fake_time: FakeTime, ca: InProcessCA, caplog: pytest.LogCaptureFixture
) -> None:
    policy = RenewalPolicy(sign_timeout=0.01)
    certificates = WorkloadCertificates(
        IDENTITY, SilentSigner(ca), 100, policy=policy, clock=fake_time.clock, sleep=fake_time.sleep
    )
    task = asyncio.create_task(certificates.run())
    try:
        # The timeout runs on the real clock.
        await eventually(lambda: fake_time.requested, "a retry after the timeout", timeout=10)
        assert fake_time.requested == [1.0]
        assert "TimeoutError" in caplog.text
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


class LyingDatesSigner:
    """Says the certificate lives ten times longer than it does."""

    def __init__(self, ca: InProcessCA) -> None:
        self.ca = ca

    async def sign(self, csr_pem: str, ttl_seconds: float) -> SignedCertificate:
        signed = await self.ca.sign(csr_pem, ttl_seconds)
        return dataclasses.replace(
            signed, not_after=signed.not_before + timedelta(seconds=10 * ttl_seconds)
        )

    def watch_trust_bundle(self) -> AsyncIterator[TrustBundle]:
        return self.ca.watch_trust_bundle()


async def test_renewal_follows_the_certificate_s_own_dates(
    fake_time: FakeTime, ca: InProcessCA
) -> None:
    certificates = WorkloadCertificates(
        IDENTITY,
        LyingDatesSigner(ca),
        100,
        policy=NO_JITTER,
        clock=fake_time.clock,
        sleep=fake_time.sleep,
    )
    task = asyncio.create_task(certificates.run())
    try:
        assert await fake_time.next_sleep() == 50.0
        assert certificates.not_after == START + timedelta(seconds=100)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


class WrongKeySigner:
    """Signs a CSR of its own instead of the caller's: a CA bug the agent must catch."""

    def __init__(self, ca: InProcessCA) -> None:
        self.ca = ca

    async def sign(self, csr_pem: str, ttl_seconds: float) -> SignedCertificate:
        _, other = new_key_and_csr(IDENTITY)
        return await self.ca.sign(other, ttl_seconds)

    def watch_trust_bundle(self) -> AsyncIterator[TrustBundle]:
        return self.ca.watch_trust_bundle()


async def test_a_certificate_for_another_key_is_not_held(
    fake_time: FakeTime, ca: InProcessCA, caplog: pytest.LogCaptureFixture
) -> None:
    certificates = WorkloadCertificates(
        IDENTITY, WrongKeySigner(ca), 100, clock=fake_time.clock, sleep=fake_time.sleep
    )
    task = asyncio.create_task(certificates.run())
    try:
        assert await fake_time.next_sleep() == 1.0
        assert certificates.certificate is None
        assert "another key" in caplog.text
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def test_a_certificate_for_another_identity_is_not_held(
    running: Running, fake_time: FakeTime, ca: InProcessCA, caplog: pytest.LogCaptureFixture
) -> None:
    ca.names_instead = "spiffe://cluster.local/ns/shop/sa/admin"
    certificates = running.start()
    assert await fake_time.next_sleep() == 1.0
    assert certificates.certificate is None
    assert "names ['spiffe://cluster.local/ns/shop/sa/admin']" in caplog.text


async def test_the_bundle_watch_is_resumed_with_backoff_when_it_ends(
    running: Running, fake_time: FakeTime, ca: InProcessCA
) -> None:
    certificates = running.start()
    assert await fake_time.next_sleep() == 50.0  # the renewal loop
    heard = len(running.changes)
    await ca.set_down(True)
    assert await fake_time.next_sleep() == 1.0  # the watch ended
    await fake_time.wake_next()
    assert await fake_time.next_sleep() == 2.0  # ... and failed again
    await ca.set_down(False)
    await fake_time.wake_next()
    for _ in range(50):
        await asyncio.sleep(0)
    assert ca.watches == 3
    assert len(running.changes) == heard  # the same bundle again is no change
    await ca.rotate_root()
    for _ in range(50):
        await asyncio.sleep(0)
    assert certificates.trust_bundle == ca.bundle
    assert len(running.changes) > heard


async def test_the_bundle_watch_backs_off_to_a_few_seconds_only(
    running: Running, fake_time: FakeTime, ca: InProcessCA
) -> None:
    running.start()
    assert await fake_time.next_sleep() == 50.0  # the renewal loop
    await ca.set_down(True)
    delays = []
    for _ in range(5):
        delays.append(await fake_time.next_sleep())
        await fake_time.wake_next()
    # Renewals back off to a minute; a late bundle would leave a rotated root untrusted.
    assert delays == [1.0, 2.0, 4.0, 5.0, 5.0]
