from __future__ import annotations

import datetime as dt
import json
import stat
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from pilotfish.ca.csr import new_key_and_csr
from pilotfish.ca.issuer import certificate_pem, key_pem
from pilotfish.ca.rotation import IssuedLog, IssuedRecord, RotationError, RotationPhase
from pilotfish.ca.store import (
    CaStoreError,
    begin_root_rotation,
    finish_root_rotation,
    load_or_create_ca,
    read_ca,
    save_issued_log,
)
from pilotfish.model.identity import Identity
from pilotfish.model.resources import CertificateSettings, PluggedCertificateAuthority

NOW = dt.datetime(2026, 12, 1, 12, 0, tzinfo=dt.UTC)
WEB = Identity("example.org", "default", "web")
SETTINGS = CertificateSettings(root_ttl=365 * 24 * 3600.0)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_first_start_makes_owner_only_files(tmp_path: Path) -> None:
    directory = tmp_path / ".pilotfish" / "ca"
    stored = load_or_create_ca(directory, SETTINGS, "example.org", NOW)
    assert mode(directory) == 0o700
    assert mode(directory / "root-1-key.pem") == 0o600
    assert mode(directory / "credential-secret") == 0o600
    assert stored.authority.root.subject.rfc4514_string() == "O=example.org"
    assert stored.authority.root.not_valid_after_utc == NOW + dt.timedelta(days=365)
    assert not list(directory.glob(".*.tmp"))  # written whole, then renamed


def test_a_restart_keeps_the_root_and_the_credentials(tmp_path: Path) -> None:
    first = load_or_create_ca(tmp_path, SETTINGS, "example.org", NOW)
    again = load_or_create_ca(tmp_path, SETTINGS, "example.org", NOW + dt.timedelta(days=1))
    assert again.authority.root == first.authority.root
    assert again.authority.key.private_numbers() == first.authority.key.private_numbers()  # type: ignore[union-attr]
    assert again.credentials.verify(first.credentials.token_for(WEB)) == WEB
    assert read_ca(tmp_path, SETTINGS) is not None
    assert read_ca(tmp_path / "elsewhere", SETTINGS) is None


def test_a_rotation_survives_a_restart_and_its_end_removes_the_old_root(tmp_path: Path) -> None:
    first = load_or_create_ca(tmp_path, SETTINGS, "example.org", NOW)
    rotating = begin_root_rotation(first, "example.org", SETTINGS.root_ttl, 3600, NOW)
    assert rotating.authority.trusted_roots == (rotating.authority.root, first.authority.root)
    assert rotating.authority.issuer_epoch == 2
    restarted = load_or_create_ca(tmp_path, SETTINGS, "example.org", NOW)
    assert restarted.rotation == rotating.rotation
    assert restarted.rotation.phase is RotationPhase.OVERLAP
    assert restarted.authority.trusted_roots == rotating.authority.trusted_roots
    assert restarted.authority.root != first.authority.root
    done = finish_root_rotation(restarted)
    assert done.authority.trusted_roots == (rotating.authority.root,)
    assert sorted(p.name for p in tmp_path.glob("root-*")) == ["root-2-cert.pem", "root-2-key.pem"]
    later = load_or_create_ca(tmp_path, SETTINGS, "example.org", NOW)
    assert later.authority.trusted_roots == (rotating.authority.root,)
    assert later.rotation.phase is RotationPhase.STEADY and later.rotation.issuer_epoch == 2


def test_a_damaged_state_file_is_named(tmp_path: Path) -> None:
    load_or_create_ca(tmp_path, SETTINGS, "example.org", NOW)
    (tmp_path / "state.json").write_text(json.dumps({"issuer_epoch": "two"}))
    with pytest.raises(CaStoreError, match=r"state\.json: issuer_epoch"):
        load_or_create_ca(tmp_path, SETTINGS, "example.org", NOW)


def test_a_missing_root_key_is_named(tmp_path: Path) -> None:
    load_or_create_ca(tmp_path, SETTINGS, "example.org", NOW)
    (tmp_path / "root-1-key.pem").unlink()
    with pytest.raises(CaStoreError, match=r"root-1-key\.pem: cannot read"):
        load_or_create_ca(tmp_path, SETTINGS, "example.org", NOW)


# --- plugged CA ---------------------------------------------------------------------------


def _ca_cert(
    name: str,
    key: ec.EllipticCurvePrivateKey,
    issuer: tuple[str, ec.EllipticCurvePrivateKey] | None,
    is_ca: bool = True,
) -> x509.Certificate:
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    issuer_name, issuer_key = (
        (x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer[0])]), issuer[1])
        if issuer
        else (subject, key)
    )
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(NOW - dt.timedelta(days=1))
        .not_valid_after(NOW + dt.timedelta(days=400))
        .add_extension(x509.BasicConstraints(ca=is_ca, path_length=None), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
        .sign(issuer_key, hashes.SHA256())
    )


def plugged_files(
    tmp_path: Path,
    *,
    wrong_key: bool = False,
    foreign_root: bool = False,
    leaf_signer: bool = False,
) -> PluggedCertificateAuthority:
    root_key, mid_key = (
        ec.generate_private_key(ec.SECP256R1()),
        ec.generate_private_key(ec.SECP256R1()),
    )
    root = _ca_cert("Example Root", root_key, None)
    intermediate = _ca_cert(
        "Example Intermediate", mid_key, ("Example Root", root_key), not leaf_signer
    )
    trusted = (
        _ca_cert("Other Root", ec.generate_private_key(ec.SECP256R1()), None)
        if foreign_root
        else root
    )
    files = PluggedCertificateAuthority(
        cert_chain=str(tmp_path / "cert-chain.pem"),
        private_key=str(tmp_path / "ca-key.pem"),
        root_cert=str(tmp_path / "root-cert.pem"),
    )
    Path(files.cert_chain).write_text(certificate_pem(intermediate) + certificate_pem(root))
    signing_key = ec.generate_private_key(ec.SECP256R1()) if wrong_key else mid_key
    Path(files.private_key).write_text(key_pem(signing_key))
    Path(files.root_cert).write_text(certificate_pem(trusted))
    return files


def test_a_plugged_ca_signs_under_its_intermediate(tmp_path: Path) -> None:
    files = plugged_files(tmp_path)
    settings = CertificateSettings(plugged=files)
    stored = load_or_create_ca(tmp_path / "state", settings, "example.org", NOW)
    authority = stored.authority
    assert stored.plugged
    assert authority.root.subject.rfc4514_string() == "CN=Example Root"
    assert authority.certificate.subject.rfc4514_string() == "CN=Example Intermediate"
    signed = authority.sign(new_key_and_csr(WEB)[1], WEB, 3600, NOW)
    assert len(signed.chain_pem) == 2  # leaf, intermediate; the root stays in the bundle
    leaf = x509.load_pem_x509_certificate(signed.chain_pem[0].encode())
    leaf.verify_directly_issued_by(authority.certificate)
    assert not (tmp_path / "state" / "root-1-key.pem").exists()  # nothing of ours to keep
    with pytest.raises(RotationError, match="plugged in"):
        begin_root_rotation(stored, "example.org", 3600.0 * 24, 3600, NOW)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"wrong_key": True}, r"ca-key\.pem: this key does not belong to the first certificate"),
        (
            {"foreign_root": True},
            r"cert-chain\.pem: the chain does not end at a root of .*root-cert\.pem",
        ),
        ({"leaf_signer": True}, r"cert-chain\.pem: the first certificate .* is not a CA"),
    ],
)
def test_a_bad_plugged_ca_is_refused_naming_the_file(
    tmp_path: Path, kwargs: dict[str, bool], message: str
) -> None:
    settings = CertificateSettings(plugged=plugged_files(tmp_path, **kwargs))
    with pytest.raises(CaStoreError, match=message):
        load_or_create_ca(tmp_path / "state", settings, "example.org", NOW)


def test_a_missing_plugged_file_is_named(tmp_path: Path) -> None:
    files = plugged_files(tmp_path)
    Path(files.root_cert).unlink()
    with pytest.raises(CaStoreError, match=r"root-cert\.pem: cannot read pluggedCA\.rootCert"):
        load_or_create_ca(tmp_path / "state", CertificateSettings(plugged=files), "x", NOW)
    Path(files.root_cert).write_text("not a certificate")
    with pytest.raises(CaStoreError, match=r"root-cert\.pem: pluggedCA\.rootCert is not PEM"):
        load_or_create_ca(tmp_path / "state", CertificateSettings(plugged=files), "x", NOW)


def test_an_older_looser_folder_is_made_owner_only(tmp_path: Path) -> None:
    directory = tmp_path / "ca"
    directory.mkdir(mode=0o755)
    directory.chmod(0o755)
    load_or_create_ca(directory, SETTINGS, "example.org", NOW)
    assert mode(directory) == 0o700


def test_a_folder_where_files_cannot_be_kept_is_named(tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("")
    with pytest.raises(CaStoreError, match=r"not-a-folder.*cannot keep the CA's files here"):
        load_or_create_ca(blocker / "ca", SETTINGS, "example.org", NOW)


def test_records_are_marked_incomplete_while_a_control_plane_runs(tmp_path: Path) -> None:
    first = load_or_create_ca(tmp_path, SETTINGS, "example.org", NOW)
    assert first.issued.complete  # a root made just now: nobody holds anything
    record = IssuedRecord("spiffe://example.org/ns/default/sa/web", "web-0", 0xAB, NOW, 1, NOW)
    save_issued_log(tmp_path, IssuedLog((record,), complete=True))
    second = load_or_create_ca(tmp_path, SETTINGS, "example.org", NOW)
    assert second.issued == IssuedLog((record,), complete=True)
    # The second has taken over: if it dies now, the third cannot trust the records.
    third = load_or_create_ca(tmp_path, SETTINGS, "example.org", NOW)
    assert third.issued == IssuedLog((record,), complete=False)


def test_damaged_records_count_as_incomplete(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    load_or_create_ca(tmp_path, SETTINGS, "example.org", NOW)
    (tmp_path / "issued.json").write_text('{"complete": true, "records": [{"serial": 5}]}')
    stored = load_or_create_ca(tmp_path, SETTINGS, "example.org", NOW)
    assert stored.issued == IssuedLog(complete=False)
    assert "issued.json: identity: None is not a string" in caplog.text
