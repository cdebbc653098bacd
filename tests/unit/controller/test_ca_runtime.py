from __future__ import annotations

import asyncio
import datetime as dt
import json
import logging
import threading
from pathlib import Path

import pytest
from tests.waiting import eventually

from pilotfish.ca.api import CertificateRefused
from pilotfish.ca.credentials import InvalidCredential
from pilotfish.ca.csr import new_key_and_csr
from pilotfish.ca.rotation import RotationError, RotationPhase
from pilotfish.ca.store import load_or_create_ca
from pilotfish.controller import certificates
from pilotfish.controller.certificates import MeshCertificateAuthority, expiry_warnings
from pilotfish.model.identity import Identity
from pilotfish.model.resources import CertificateSettings, MeshSettings

START = dt.datetime(2026, 12, 1, 12, 0, tzinfo=dt.UTC)
WEB = Identity("cluster.local", "default", "web")
API = Identity("cluster.local", "default", "api")
DAY = 24 * 3600.0


class Clock:
    def __init__(self) -> None:
        self.now = START

    def __call__(self) -> dt.datetime:
        return self.now


def make_ca(
    tmp_path: Path, root_days: float = 3650, grace: float = 20
) -> tuple[MeshCertificateAuthority, Clock]:
    mesh = MeshSettings(
        certificates=CertificateSettings(
            workload_ttl=DAY, root_ttl=root_days * DAY, root_renew_grace_percentage=grace
        )
    )
    clock = Clock()
    stored = load_or_create_ca(tmp_path, mesh.certificates, mesh.trust_domain, clock.now)
    return MeshCertificateAuthority(stored, mesh, clock), clock


def test_a_csr_for_another_identity_is_refused_and_logged_with_who_asked(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    ca, _ = make_ca(tmp_path)
    with caplog.at_level(logging.WARNING, "pilotfish.ca"), pytest.raises(CertificateRefused):
        ca.sign(new_key_and_csr(API)[1], ca.credential(WEB), 3600, "web-0", "ipv4:127.0.0.1:5")
    assert (
        "refused a certificate to peer ipv4:127.0.0.1:5 node 'web-0' proving "
        "spiffe://cluster.local/ns/default/sa/web: the CSR asks for "
        "spiffe://cluster.local/ns/default/sa/api"
    ) in caplog.text
    assert ca.status_json()["refused"] == 1


def test_no_or_a_forged_credential_is_refused(tmp_path: Path) -> None:
    ca, _ = make_ca(tmp_path)
    csr = new_key_and_csr(WEB)[1]
    with pytest.raises(InvalidCredential, match="no credential"):
        ca.sign(csr, None, 3600)
    with pytest.raises(InvalidCredential):
        ca.sign(csr, "pf1.x.y", 3600)


def test_lifetime_is_the_workload_ttl_at_most_and_by_default(tmp_path: Path) -> None:
    ca, clock = make_ca(tmp_path)
    token = ca.credential(WEB)
    csr = new_key_and_csr(WEB)[1]
    assert ca.sign(csr, token, 60).not_after == clock.now + dt.timedelta(seconds=60)
    assert ca.sign(csr, token, 0).not_after == clock.now + dt.timedelta(days=1)
    assert ca.sign(csr, token, 10 * DAY).not_after == clock.now + dt.timedelta(days=1)


def test_the_old_root_goes_once_every_agent_re_issued(tmp_path: Path) -> None:
    ca, clock = make_ca(tmp_path)
    web, api = ca.credential(WEB), ca.credential(API)
    ca.sign(new_key_and_csr(WEB)[1], web, 3600, "web-0")
    ca.sign(new_key_and_csr(API)[1], api, 3600, "api-0")
    ca.rotate()
    assert ca.rotation.phase is RotationPhase.OVERLAP
    assert len(ca.trust_bundle().roots_pem) == 2 and ca.trust_bundle().issuer_epoch == 2
    assert ca.old_epoch_holders() == [f"api-0 ({API})", f"web-0 ({WEB})"]
    clock.now += dt.timedelta(minutes=1)
    assert ca.sign(new_key_and_csr(WEB)[1], web, 3600, "web-0").issuer_epoch == 2
    assert ca.rotation.phase is RotationPhase.OVERLAP
    ca.sign(new_key_and_csr(API)[1], api, 3600, "api-0")
    assert ca.rotation.phase is RotationPhase.STEADY
    assert len(ca.trust_bundle().roots_pem) == 1


def test_the_old_root_goes_when_the_last_old_certificate_expires_if_its_agent_never_came_back(
    tmp_path: Path,
) -> None:
    ca, clock = make_ca(tmp_path)
    ca.sign(new_key_and_csr(WEB)[1], ca.credential(WEB), DAY, "web-0")
    ca.rotate()
    clock.now += dt.timedelta(hours=23)
    ca.tick()
    assert ca.rotation.phase is RotationPhase.OVERLAP
    clock.now += dt.timedelta(hours=1)
    ca.tick()
    assert ca.rotation.phase is RotationPhase.STEADY


def test_a_root_with_a_fifth_of_its_life_left_rotates_by_itself(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    ca, clock = make_ca(tmp_path, root_days=100)
    clock.now += dt.timedelta(days=79)
    ca.tick()
    assert ca.rotation.issuer_epoch == 1
    clock.now += dt.timedelta(days=2)
    with caplog.at_level(logging.WARNING, "pilotfish.ca"):
        ca.tick()
    assert ca.rotation.issuer_epoch == 2
    assert "less than 20% of its lifetime left: rotating it" in caplog.text
    # No agent held a certificate: nothing to wait for, the old root went at once.
    assert ca.rotation.phase is RotationPhase.STEADY


def test_the_renew_grace_percentage_is_the_mesh_config_s(tmp_path: Path) -> None:
    ca, clock = make_ca(tmp_path, root_days=100, grace=50)
    clock.now += dt.timedelta(days=49)
    ca.tick()
    assert ca.rotation.issuer_epoch == 1
    clock.now += dt.timedelta(days=2)
    ca.tick()
    assert ca.rotation.issuer_epoch == 2


def test_expiry_is_warned_of_within_30_days_or_a_fifth_of_the_lifetime(tmp_path: Path) -> None:
    ca, _ = make_ca(tmp_path, root_days=400)
    authority = ca.authority
    assert expiry_warnings(authority, START + dt.timedelta(days=300)) == []
    (warning,) = expiry_warnings(authority, START + dt.timedelta(days=321))
    assert warning.startswith("root O=cluster.local expires at")
    (expired,) = expiry_warnings(authority, START + dt.timedelta(days=401))
    assert "EXPIRED" in expired


def test_status_lists_roots_rotation_and_what_was_signed(tmp_path: Path) -> None:
    ca, _ = make_ca(tmp_path)
    ca.sign(new_key_and_csr(WEB)[1], ca.credential(WEB), 3600, "web-0")
    status = ca.status_json()
    assert status["issuer_epoch"] == 1
    assert status["rotation"] == {  # type: ignore[comparison-overlap]
        "issuer_epoch": 1,
        "phase": "steady",
        "started_at": None,
        "drop_after": None,
        "waiting_for": [],
    }
    (root,) = status["roots"]  # type: ignore[misc]
    assert root["subject"] == "O=cluster.local" and root["signing"]
    (signed,) = status["recently_signed"]  # type: ignore[misc]
    assert signed["identity"] == WEB.spiffe_id and signed["node_id"] == "web-0"
    record = ca.latest_for_node("web-0")
    assert record is not None and record.identity == WEB.spiffe_id


def test_an_expired_certificate_is_still_shown_for_a_day_then_forgotten(tmp_path: Path) -> None:
    ca, clock = make_ca(tmp_path)
    ca.sign(new_key_and_csr(WEB)[1], ca.credential(WEB), 3600, "web-0")
    clock.now += dt.timedelta(hours=2)
    ca.tick()
    assert ca.latest_for_node("web-0") is not None
    clock.now += dt.timedelta(days=1)
    ca.tick()
    assert ca.latest_for_node("web-0") is None


def restart(tmp_path: Path, ca: MeshCertificateAuthority, clock: Clock) -> MeshCertificateAuthority:
    mesh = MeshSettings(certificates=CertificateSettings(workload_ttl=DAY))
    stored = load_or_create_ca(tmp_path, mesh.certificates, mesh.trust_domain, clock.now)
    return MeshCertificateAuthority(stored, mesh, clock)


def test_a_clean_restart_mid_rotation_still_waits_for_the_agents_it_knew(tmp_path: Path) -> None:
    ca, clock = make_ca(tmp_path)
    web, api = ca.credential(WEB), ca.credential(API)
    ca.sign(new_key_and_csr(WEB)[1], web, 3600, "web-0")
    ca.sign(new_key_and_csr(API)[1], api, 3600, "api-0")
    ca.rotate()
    ca.sign(new_key_and_csr(WEB)[1], web, 3600, "web-0")
    ca.save(final=True)  # what ControlPlane.stop does
    again = restart(tmp_path, ca, clock)
    assert again.rotation.phase is RotationPhase.OVERLAP
    assert again.old_epoch_holders() == [f"api-0 ({API})"]
    again.sign(new_key_and_csr(API)[1], api, 3600, "api-0")
    assert again.rotation.phase is RotationPhase.STEADY


def test_after_a_crash_the_unrecorded_certificates_keep_the_old_root_until_they_expire(
    tmp_path: Path,
) -> None:
    ca, clock = make_ca(tmp_path)
    api = ca.credential(API)
    ca.sign(new_key_and_csr(API)[1], api, 3600, "api-0")
    ca.rotate()
    ca.tick()  # saves the records, but more could be signed before the crash
    again = restart(tmp_path, ca, clock)
    waiting = again.old_epoch_holders()
    assert waiting[0] == f"api-0 ({API})" and "without a record" in waiting[1]
    again.sign(new_key_and_csr(API)[1], api, 3600, "api-0")
    assert again.rotation.phase is RotationPhase.OVERLAP
    clock.now += dt.timedelta(hours=23)
    again.tick()
    assert again.rotation.phase is RotationPhase.OVERLAP
    clock.now += dt.timedelta(hours=1)
    again.tick()
    assert again.rotation.phase is RotationPhase.STEADY


GATEWAY = Identity("cluster.local", "default", "pilotfish-ingressgateway")


def test_a_node_id_sent_with_another_credential_does_not_end_the_rotation(
    tmp_path: Path,
) -> None:
    ca, clock = make_ca(tmp_path)
    gateway, web = ca.credential(GATEWAY), ca.credential(WEB)
    ca.sign(new_key_and_csr(GATEWAY)[1], gateway, 3600, "ingressgateway")
    ca.rotate()
    clock.now += dt.timedelta(minutes=1)
    # The web workload's token, the gateway's node id: the gateway still holds an old one.
    ca.sign(new_key_and_csr(WEB)[1], web, 3600, "ingressgateway")
    assert ca.rotation.phase is RotationPhase.OVERLAP
    assert ca.old_epoch_holders() == [f"ingressgateway ({GATEWAY})"]
    ca.sign(new_key_and_csr(GATEWAY)[1], gateway, 3600, "ingressgateway")
    assert ca.rotation.phase is RotationPhase.STEADY


def test_records_are_capped_and_a_forgotten_one_keeps_the_old_root_until_it_expires(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(certificates, "MAX_RECORDS", 3)
    ca, clock = make_ca(tmp_path)
    web = ca.credential(WEB)
    ca.sign(new_key_and_csr(API)[1], ca.credential(API), 3600, "api-0")
    with caplog.at_level(logging.WARNING, "pilotfish.ca"):
        for n in range(3):
            clock.now += dt.timedelta(seconds=1)
            ca.sign(new_key_and_csr(WEB)[1], web, 3600, f"random-{n}")
    assert f"more than 3 agents hold certificates: forgetting api-0 ({API})" in caplog.text
    assert ca.latest_for_node("api-0") is None
    assert ca.latest_for_node("random-2") is not None
    ca.save(final=True)
    saved = json.loads((tmp_path / "issued.json").read_text())
    assert len(saved["records"]) == 3
    # The next control plane must not take the log for complete: api-0 is not in it.
    assert saved["complete"] is False
    ca.rotate()
    for n in range(3):
        ca.sign(new_key_and_csr(WEB)[1], web, 3600, f"random-{n}")
    assert ca.rotation.phase is RotationPhase.OVERLAP
    (waiting,) = ca.old_epoch_holders()
    assert "without a record" in waiting
    clock.now = START + dt.timedelta(seconds=3601)
    ca.tick()
    assert ca.rotation.phase is RotationPhase.STEADY


def test_an_overlong_node_id_is_refused(tmp_path: Path) -> None:
    ca, _ = make_ca(tmp_path)
    with pytest.raises(CertificateRefused, match="node id has 257 characters"):
        ca.sign(new_key_and_csr(WEB)[1], ca.credential(WEB), 3600, "x" * 257)


async def test_a_rotation_in_a_worker_leaves_the_loop_serving_and_finishes_if_its_caller_goes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ca, _ = make_ca(tmp_path)
    web = ca.credential(WEB)
    ca.sign(new_key_and_csr(WEB)[1], web, 3600, "web-0")
    threads: list[threading.Thread] = []
    release = threading.Event()
    begin = certificates.begin_root_rotation

    def slow_begin(*args: object) -> object:
        threads.append(threading.current_thread())
        if threading.current_thread() is not threading.main_thread():
            assert release.wait(10), "the test never let the rotation go on"
        return begin(*args)  # type: ignore[arg-type]

    monkeypatch.setattr(certificates, "begin_root_rotation", slow_begin)
    caller = asyncio.create_task(ca.rotate_in_worker())
    await eventually(lambda: threads, "the key to be made")
    assert threads[0] is not threading.main_thread()
    # Meanwhile the loop serves: signing goes on with the current key, a second rotation waits.
    assert ca.sign(new_key_and_csr(WEB)[1], web, 3600, "web-1").issuer_epoch == 1
    with pytest.raises(RotationError, match="being started"):
        ca.rotate()
    caller.cancel()
    release.set()
    await eventually(lambda: ca.rotation.issuer_epoch == 2, "the rotation to begin anyway")
    assert ca.rotation.phase is RotationPhase.OVERLAP
    assert len(ca.trust_bundle().roots_pem) == 2
    assert ca.old_epoch_holders() == [f"web-0 ({WEB})", f"web-1 ({WEB})"]
