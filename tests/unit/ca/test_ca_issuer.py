from __future__ import annotations

import datetime as dt
import subprocess
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from cryptography.x509.verification import PolicyBuilder, Store

from pilotfish.ca.api import CertificateRefused
from pilotfish.ca.csr import new_key_and_csr
from pilotfish.ca.issuer import CLOCK_SKEW_SECONDS, CertificateAuthority, new_self_signed_root
from pilotfish.model.identity import Identity

NOW = dt.datetime(2026, 12, 1, 12, 0, tzinfo=dt.UTC)
WEB = Identity("cluster.local", "default", "web")
API = Identity("cluster.local", "default", "api")
DAY = 24 * 3600.0


@pytest.fixture(scope="module")
def ca() -> CertificateAuthority:
    return new_self_signed_root("cluster.local", 3650 * DAY, NOW)


def make_csr(
    names: list[x509.GeneralName],
    key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey | None = None,
    ca: bool = False,
) -> str:
    builder = x509.CertificateSigningRequestBuilder().subject_name(x509.Name([]))
    if names:
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=True)
    if ca:
        builder = builder.add_extension(x509.BasicConstraints(ca=True, path_length=0), True)
    csr = builder.sign(key or ec.generate_private_key(ec.SECP256R1()), hashes.SHA256())
    return csr.public_bytes(serialization.Encoding.PEM).decode()


def uri(identity: Identity) -> x509.UniformResourceIdentifier:
    return x509.UniformResourceIdentifier(identity.spiffe_id)


def leaf_of(pem: str) -> x509.Certificate:
    return x509.load_pem_x509_certificate(pem.encode())


def test_the_root_is_an_istio_like_p256_ca(ca: CertificateAuthority) -> None:
    root = ca.root
    assert root.subject == x509.Name(
        [x509.NameAttribute(NameOID.ORGANIZATION_NAME, "cluster.local")]
    )
    assert isinstance(root.public_key(), ec.EllipticCurvePublicKey)
    assert isinstance(root.public_key().curve, ec.SECP256R1)  # type: ignore[union-attr]
    constraints = root.extensions.get_extension_for_class(x509.BasicConstraints)
    assert constraints.critical and constraints.value.ca
    assert root.extensions.get_extension_for_class(x509.KeyUsage).value.key_cert_sign
    assert root.not_valid_after_utc == NOW + dt.timedelta(days=3650)
    assert len(ca.trust_bundle().roots_pem) == 1 and ca.chain_pem() == ()


def test_the_leaf_names_the_identity_only_and_serves_both_ends(ca: CertificateAuthority) -> None:
    _, csr = new_key_and_csr(WEB)
    signed = ca.sign(csr, WEB, 3600, NOW)
    assert len(signed.chain_pem) == 1  # the root is never in the chain
    leaf = leaf_of(signed.chain_pem[0])
    san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    assert san.critical and leaf.subject == x509.Name([])
    assert list(san.value) == [uri(WEB)]
    usage = leaf.extensions.get_extension_for_class(x509.KeyUsage).value
    assert usage.digital_signature and usage.key_encipherment and not usage.key_cert_sign
    eku = leaf.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert set(eku) == {ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH}
    assert not leaf.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert leaf.issuer == ca.root.subject
    assert signed.issuer_epoch == ca.issuer_epoch


def test_lifetime_is_backdated_for_skew_and_ends_at_the_ttl(ca: CertificateAuthority) -> None:
    signed = ca.sign(new_key_and_csr(WEB)[1], WEB, 3600, NOW)
    assert signed.not_before == NOW - dt.timedelta(seconds=CLOCK_SKEW_SECONDS)
    assert signed.not_after == NOW + dt.timedelta(hours=1)


def test_no_leaf_outlives_its_signer() -> None:
    short = new_self_signed_root("cluster.local", 2 * 3600, NOW)
    signed = short.sign(new_key_and_csr(WEB)[1], WEB, 10 * 3600, NOW)
    assert signed.not_after == short.root.not_valid_after_utc


def test_a_ca_certificate_without_a_subject_key_identifier_still_signs() -> None:
    # A plugged-in CA certificate may come without one (the extension is optional).
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "plugged")])
    root = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(NOW - dt.timedelta(days=1))
        .not_valid_after(NOW + dt.timedelta(days=365))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    authority = CertificateAuthority(key, root, (), root, (root,))
    leaf = leaf_of(authority.sign(new_key_and_csr(WEB)[1], WEB, 3600, NOW).chain_pem[0])
    leaf.verify_directly_issued_by(root)
    aki = leaf.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value
    assert aki.key_identifier == x509.SubjectKeyIdentifier.from_public_key(key.public_key()).digest


def test_serials_are_random(ca: CertificateAuthority) -> None:
    _, csr = new_key_and_csr(WEB)
    serials = {leaf_of(ca.sign(csr, WEB, 60, NOW).chain_pem[0]).serial_number for _ in range(5)}
    assert len(serials) == 5


def test_the_chain_verifies_to_the_root_as_a_spiffe_client_would(ca: CertificateAuthority) -> None:
    leaf = leaf_of(ca.sign(new_key_and_csr(WEB)[1], WEB, 3600, NOW).chain_pem[0])
    verifier = PolicyBuilder().store(Store([ca.root])).time(NOW).build_client_verifier()
    verified = verifier.verify(leaf, [])
    assert verified.subjects is not None and uri(WEB) in verified.subjects
    other = new_self_signed_root("cluster.local", DAY, NOW)
    with pytest.raises(x509.verification.VerificationError):
        PolicyBuilder().store(Store([other.root])).time(NOW).build_client_verifier().verify(
            leaf, []
        )


def test_openssl_verifies_the_leaf_against_the_root(
    ca: CertificateAuthority, tmp_path: Path
) -> None:
    now = dt.datetime.now(dt.UTC)
    fresh = new_self_signed_root("cluster.local", DAY, now)
    signed = fresh.sign(new_key_and_csr(WEB)[1], WEB, 3600, now)
    (tmp_path / "root.pem").write_text(fresh.trust_bundle().roots_pem[0])
    (tmp_path / "leaf.pem").write_text(signed.chain_pem[0])
    result = subprocess.run(
        ["openssl", "verify", "-purpose", "sslserver", "-CAfile", "root.pem", "leaf.pem"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize(
    ("names", "message"),
    [
        (
            [uri(API)],
            "asks for spiffe://cluster.local/ns/default/sa/api but the caller proved "
            "spiffe://cluster.local/ns/default/sa/web",
        ),
        ([uri(WEB), uri(API)], "exactly one URI SAN"),
        ([], "exactly one URI SAN"),
        ([uri(WEB), x509.DNSName("web.default.svc")], "DNSName"),
        ([x509.DNSName("web.default.svc")], "DNSName"),
    ],
)
def test_a_csr_must_ask_for_exactly_the_proven_identity(
    ca: CertificateAuthority, names: list[x509.GeneralName], message: str
) -> None:
    with pytest.raises(CertificateRefused, match=message):
        ca.sign(make_csr(names), WEB, 3600, NOW)


def test_a_csr_for_a_ca_is_refused(ca: CertificateAuthority) -> None:
    with pytest.raises(CertificateRefused, match="CA certificate"):
        ca.sign(make_csr([uri(WEB)], ca=True), WEB, 3600, NOW)


def test_a_csr_whose_signature_does_not_verify_is_refused(ca: CertificateAuthority) -> None:
    good = x509.load_pem_x509_csr(make_csr([uri(WEB)]).encode())
    der = bytearray(good.public_bytes(serialization.Encoding.DER))
    der[-3] ^= 0x01  # inside the signature, which ends the structure
    bad = x509.load_der_x509_csr(bytes(der)).public_bytes(serialization.Encoding.PEM).decode()
    with pytest.raises(CertificateRefused, match="signature does not verify"):
        ca.sign(bad, WEB, 3600, NOW)


def test_key_types(ca: CertificateAuthority) -> None:
    weak = rsa.generate_private_key(public_exponent=65537, key_size=1024)
    with pytest.raises(CertificateRefused, match="1024 bits"):
        ca.sign(make_csr([uri(WEB)], key=weak), WEB, 3600, NOW)
    p384 = ec.generate_private_key(ec.SECP384R1())
    with pytest.raises(CertificateRefused, match="secp384r1"):
        ca.sign(make_csr([uri(WEB)], key=p384), WEB, 3600, NOW)
    strong = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    assert ca.sign(make_csr([uri(WEB)], key=strong), WEB, 3600, NOW).chain_pem


def test_garbage_and_a_nonpositive_lifetime_are_refused(ca: CertificateAuthority) -> None:
    with pytest.raises(CertificateRefused, match="not a PEM"):
        ca.sign("hello", WEB, 3600, NOW)
    with pytest.raises(CertificateRefused, match="not positive"):
        ca.sign(new_key_and_csr(WEB)[1], WEB, 0, NOW)


def test_an_expired_signer_signs_nothing() -> None:
    old = new_self_signed_root("cluster.local", DAY, NOW)
    with pytest.raises(CertificateRefused, match="expired"):
        old.sign(new_key_and_csr(WEB)[1], WEB, 3600, NOW + dt.timedelta(days=2))


def test_the_agent_key_matches_its_csr() -> None:
    key_pem, csr_pem = new_key_and_csr(WEB)
    key = serialization.load_pem_private_key(key_pem.encode(), password=None)
    csr = x509.load_pem_x509_csr(csr_pem.encode())
    assert csr.is_signature_valid
    assert key.public_key() == csr.public_key()
    names = csr.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert list(names) == [uri(WEB)]
