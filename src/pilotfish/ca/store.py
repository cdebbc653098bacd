"""The CA's files: made on first start, loaded on later ones, so a restart keeps the trust.

Under ``DIR/.pilotfish/ca/`` (mode 0700)::

    state.json              issuer epoch and rotation phase (RotationState), the commit point
    root-<epoch>-key.pem    the self-signed root's key (0600), one per epoch still trusted
    root-<epoch>-cert.pem   its certificate
    credential-secret       the HMAC secret of the agents' bearer tokens (0600)
    issued.json             the certificates still valid that agents hold (IssuedLog): a
                            restart in the middle of a root rotation still knows whom it waits for

Every file is written whole to a temporary name and renamed, and ``state.json`` is written
last: a crash at any point leaves either the old state or the new one (at worst an unused
root file, overwritten by the next rotation). A plugged CA (Istio's "cacerts") is read from
the user's files instead and never written.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import itertools
import json
import logging
import os
from dataclasses import dataclass, field, replace
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from pilotfish.ca.credentials import CredentialAuthority, new_secret
from pilotfish.ca.issuer import (
    CertificateAuthority,
    SigningKey,
    certificate_pem,
    key_pem,
    new_self_signed_root,
)
from pilotfish.ca.rotation import IssuedLog, RotationError, RotationPhase, RotationState
from pilotfish.errors import PilotfishError
from pilotfish.model.resources import CertificateSettings, PluggedCertificateAuthority

log = logging.getLogger("pilotfish.ca")

CA_DIR = Path(".pilotfish") / "ca"
STATE_FILE = "state.json"
ISSUED_FILE = "issued.json"
SECRET_FILE = "credential-secret"


class CaStoreError(PilotfishError):
    """A CA file is missing, unreadable or inconsistent; the message names the file."""


@dataclass(frozen=True)
class StoredCa:
    authority: CertificateAuthority
    rotation: RotationState
    credentials: CredentialAuthority
    directory: Path
    plugged: bool = False
    issued: IssuedLog = field(default_factory=IssuedLog)
    """What the previous control plane left of its records."""


def ca_directory(config_dir: Path) -> Path:
    return config_dir / CA_DIR


def load_or_create_ca(
    directory: Path, settings: CertificateSettings, trust_domain: str, now: dt.datetime
) -> StoredCa:
    """The CA kept in ``directory``; a new self-signed root there on first start (or the
    plugged CA of ``settings``, whose files are only read)."""
    try:
        _make_private_dir(directory)
        secret = _load_or_create_secret(directory / SECRET_FILE)
    except OSError as exc:
        raise CaStoreError(
            f"{exc.filename or directory}: cannot keep the CA's files here: {exc.strerror}"
        ) from exc
    state = _read_state(directory)
    if settings.plugged is not None:
        authority = load_plugged_ca(settings.plugged)
        return StoredCa(
            authority,
            RotationState(),
            CredentialAuthority(secret),
            directory,
            plugged=True,
            issued=_take_issued_log(directory),
        )
    if state is None:
        state = RotationState()
        authority = new_self_signed_root(trust_domain, settings.root_ttl, now, state.issuer_epoch)
        try:
            _write_root(directory, authority)
            _write_state(directory, state)
        except OSError as exc:
            raise CaStoreError(f"{exc.filename}: cannot save the root: {exc.strerror}") from exc
        log.info("made a new self-signed root CA in %s", directory)
        # Nothing can hold a certificate of a root made just now.
        save_issued_log(directory, IssuedLog(complete=False))
        issued = IssuedLog()
    else:
        authority = _load_self_signed(directory, state)
        issued = _take_issued_log(directory)
    return StoredCa(authority, state, CredentialAuthority(secret), directory, issued=issued)


def save_issued_log(directory: Path, issued: IssuedLog) -> None:
    """Write the records; ``complete`` only when this control plane signs nothing more."""
    data = json.dumps(issued.to_json(), separators=(",", ":")) + "\n"
    try:
        _write_atomically(directory / ISSUED_FILE, data.encode(), 0o600)
    except OSError as exc:
        raise CaStoreError(f"{exc.filename}: cannot save the records: {exc.strerror}") from exc


def _take_issued_log(directory: Path) -> IssuedLog:
    """The previous control plane's records, and a mark that this one has taken over: if it
    dies before writing its own, the next start knows the records are incomplete."""
    issued = _read_issued_log(directory)
    save_issued_log(directory, IssuedLog(issued.records, complete=False))
    return issued


def _read_issued_log(directory: Path) -> IssuedLog:
    path = directory / ISSUED_FILE
    try:
        return IssuedLog.from_json(json.loads(path.read_text()))
    except FileNotFoundError:
        return IssuedLog(complete=False)  # an older CA folder: who knows what it signed
    except OSError as exc:
        raise CaStoreError(f"{path}: cannot read: {exc.strerror}") from exc
    except ValueError as exc:
        log.warning("%s: %s; treating every earlier certificate as unknown", path, exc)
        return IssuedLog(complete=False)


def read_ca(directory: Path, settings: CertificateSettings) -> StoredCa | None:
    """The CA kept in ``directory`` without making anything; None when there is none yet."""
    secret_path = directory / SECRET_FILE
    if not secret_path.exists():
        return None
    secret = _read_secret(secret_path)
    if settings.plugged is not None:
        authority = load_plugged_ca(settings.plugged)
        return StoredCa(authority, RotationState(), CredentialAuthority(secret), directory, True)
    state = _read_state(directory)
    if state is None:
        return None
    return StoredCa(
        _load_self_signed(directory, state),
        state,
        CredentialAuthority(secret),
        directory,
        issued=_read_issued_log(directory),
    )


def begin_root_rotation(
    stored: StoredCa,
    trust_domain: str,
    root_ttl: float,
    max_overlap_seconds: float,
    now: dt.datetime,
) -> StoredCa:
    """Make the next root and save it; the CA then signs with it and trusts both."""
    if stored.plugged:
        raise RotationError(
            "the CA is plugged in (MeshConfig spec.certificates.pluggedCA): replace its files "
            "to rotate; Pilotfish rotates only its own self-signed root"
        )
    state = stored.rotation.begin(now, max_overlap_seconds)
    fresh = new_self_signed_root(trust_domain, root_ttl, now, state.issuer_epoch)
    authority = replace(fresh, trusted_roots=(fresh.root, stored.authority.root))
    try:
        _write_root(stored.directory, authority)
        _write_state(stored.directory, state)
    except OSError as exc:
        raise CaStoreError(f"{exc.filename}: cannot save the new root: {exc.strerror}") from exc
    log.info(
        "root rotation started: signing under epoch %d; the old root stays trusted until "
        "every agent re-issued or %s",
        state.issuer_epoch,
        state.drop_after.isoformat() if state.drop_after else "?",
    )
    return replace(stored, authority=authority, rotation=state)


def finish_root_rotation(stored: StoredCa) -> StoredCa:
    """Drop the old root from the bundle, then its files."""
    state = stored.rotation.finish()
    _write_state(stored.directory, state)
    for path in stored.directory.glob("root-*-*.pem"):
        if _epoch_of(path) not in (None, state.issuer_epoch):
            path.unlink(missing_ok=True)
    authority = replace(stored.authority, trusted_roots=(stored.authority.root,))
    log.info("root rotation finished: only the epoch %d root is trusted", state.issuer_epoch)
    return replace(stored, authority=authority, rotation=state)


# --- plugged CA ---------------------------------------------------------------------------


def load_plugged_ca(files: PluggedCertificateAuthority) -> CertificateAuthority:
    """Istio's "plug in CA certificates": the signing cert first in ``cert_chain`` (then its
    intermediates, the root optional at the end), its key, and the root(s) to trust."""
    chain = _read_certificates(files.cert_chain, "certChain")
    roots = _read_certificates(files.root_cert, "rootCert")
    key = _read_key(files.private_key)
    signer = chain[0]
    if _public_der(key) != _public_key_der(signer):
        raise CaStoreError(
            f"{files.private_key}: this key does not belong to the first certificate of "
            f"{files.cert_chain} ({signer.subject.rfc4514_string() or 'empty subject'})"
        )
    if not _is_ca(signer):
        raise CaStoreError(
            f"{files.cert_chain}: the first certificate "
            f"({signer.subject.rfc4514_string() or 'empty subject'}) is not a CA "
            "(basicConstraints CA:TRUE and keyCertSign are needed to sign workloads)"
        )
    intermediates = [c for c in chain[1:] if c not in roots]
    path = [signer, *intermediates]
    for child, parent in itertools.pairwise(path):
        if not _issued_by(child, parent):
            raise CaStoreError(
                f"{files.cert_chain}: {child.subject.rfc4514_string()} is not signed by the "
                f"next certificate, {parent.subject.rfc4514_string()}"
            )
    top = path[-1]
    root = top if top in roots else next((r for r in roots if _issued_by(top, r)), None)
    if root is None:
        raise CaStoreError(
            f"{files.cert_chain}: the chain does not end at a root of {files.root_cert} "
            f"(its last certificate, {top.subject.rfc4514_string()}, is signed by "
            f"{top.issuer.rfc4514_string()})"
        )
    trusted = (root, *(r for r in roots if r != root))
    return CertificateAuthority(
        key=key,
        certificate=signer,
        intermediates=tuple(c for c in intermediates if c != root),
        root=root,
        trusted_roots=trusted,
    )


def _read_certificates(path: str, field: str) -> list[x509.Certificate]:
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise CaStoreError(f"{path}: cannot read pluggedCA.{field}: {exc.strerror}") from exc
    try:
        certificates = x509.load_pem_x509_certificates(data)
    except ValueError as exc:
        raise CaStoreError(f"{path}: pluggedCA.{field} is not PEM certificates: {exc}") from exc
    return certificates


def _read_key(path: str) -> SigningKey:
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise CaStoreError(f"{path}: cannot read pluggedCA.privateKey: {exc.strerror}") from exc
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as exc:
        raise CaStoreError(
            f"{path}: pluggedCA.privateKey is not an unencrypted PEM private key: {exc}"
        ) from exc
    if not isinstance(key, ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey):
        raise CaStoreError(f"{path}: pluggedCA.privateKey must be an EC or RSA key")
    return key


def _public_der(key: SigningKey) -> bytes:
    return key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def _public_key_der(certificate: x509.Certificate) -> bytes:
    return certificate.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def _is_ca(certificate: x509.Certificate) -> bool:
    try:
        constraints = certificate.extensions.get_extension_for_class(x509.BasicConstraints)
    except x509.ExtensionNotFound:
        return False
    if not constraints.value.ca:
        return False
    try:
        usage = certificate.extensions.get_extension_for_class(x509.KeyUsage).value
    except x509.ExtensionNotFound:
        return True
    return usage.key_cert_sign


def _issued_by(child: x509.Certificate, parent: x509.Certificate) -> bool:
    try:
        child.verify_directly_issued_by(parent)
    except (InvalidSignature, ValueError, TypeError):
        return False
    return True


# --- self-signed files --------------------------------------------------------------------


def _root_paths(directory: Path, epoch: int) -> tuple[Path, Path]:
    return directory / f"root-{epoch}-key.pem", directory / f"root-{epoch}-cert.pem"


def _epoch_of(path: Path) -> int | None:
    parts = path.name.split("-")
    return int(parts[1]) if len(parts) == 3 and parts[1].isdigit() else None


def _write_root(directory: Path, authority: CertificateAuthority) -> None:
    key_path, cert_path = _root_paths(directory, authority.issuer_epoch)
    _write_atomically(key_path, key_pem(authority.key).encode(), 0o600)
    _write_atomically(cert_path, certificate_pem(authority.root).encode(), 0o644)


def _load_self_signed(directory: Path, state: RotationState) -> CertificateAuthority:
    key_path, cert_path = _root_paths(directory, state.issuer_epoch)
    key = _load_own_key(key_path)
    root = _load_own_certificate(cert_path)
    if _public_der(key) != _public_key_der(root):
        raise CaStoreError(f"{key_path}: this key does not belong to {cert_path}")
    trusted = [root]
    if state.phase is RotationPhase.OVERLAP:
        trusted.append(_load_own_certificate(_root_paths(directory, state.issuer_epoch - 1)[1]))
    return CertificateAuthority(
        key=key,
        certificate=root,
        intermediates=(),
        root=root,
        trusted_roots=tuple(trusted),
        issuer_epoch=state.issuer_epoch,
    )


def _load_own_key(path: Path) -> SigningKey:
    try:
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except OSError as exc:
        raise CaStoreError(f"{path}: cannot read the CA key: {exc.strerror}") from exc
    except ValueError as exc:
        raise CaStoreError(f"{path}: not a PEM private key: {exc}") from exc
    if not isinstance(key, ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey):
        raise CaStoreError(f"{path}: not an EC or RSA key")
    return key


def _load_own_certificate(path: Path) -> x509.Certificate:
    try:
        return x509.load_pem_x509_certificate(path.read_bytes())
    except OSError as exc:
        raise CaStoreError(f"{path}: cannot read the root certificate: {exc.strerror}") from exc
    except ValueError as exc:
        raise CaStoreError(f"{path}: not a PEM certificate: {exc}") from exc


def _read_state(directory: Path) -> RotationState | None:
    path = directory / STATE_FILE
    try:
        text = path.read_text()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise CaStoreError(f"{path}: cannot read: {exc.strerror}") from exc
    try:
        return RotationState.from_json(json.loads(text))
    except ValueError as exc:  # json.JSONDecodeError is one
        raise CaStoreError(f"{path}: {exc}") from exc


def _write_state(directory: Path, state: RotationState) -> None:
    data = json.dumps(state.to_json(), indent=2) + "\n"
    _write_atomically(directory / STATE_FILE, data.encode(), 0o644)


def _load_or_create_secret(path: Path) -> bytes:
    if path.exists():
        return _read_secret(path)
    secret = new_secret()
    _write_atomically(path, secret.hex().encode() + b"\n", 0o600)
    return secret


def _read_secret(path: Path) -> bytes:
    try:
        return bytes.fromhex(path.read_text().strip())
    except OSError as exc:
        raise CaStoreError(f"{path}: cannot read the credential secret: {exc.strerror}") from exc
    except ValueError as exc:
        raise CaStoreError(f"{path}: the credential secret is not hex") from exc


def _make_private_dir(directory: Path) -> None:
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    # mkdir's mode is filtered by the umask, and an older folder may have been made looser.
    os.chmod(directory, 0o700)


def _write_atomically(path: Path, data: bytes, mode: int) -> None:
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    # Made afresh (a crash may have left one) with its final mode, which the umask can only
    # narrow: a key is never readable by others, not even for a moment.
    with contextlib.suppress(FileNotFoundError):
        os.unlink(temporary)
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(temporary, path)
    directory = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)
