"""The pure issuer: checks a workload's CSR against the identity its caller proved, and signs.

No files and no clock here: the store (``ca.store``) loads and saves the keys, the caller
passes ``now``. One ``CertificateAuthority`` is one signing key at one issuer epoch; a root
rotation (``ca.rotation``) makes another one.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from pilotfish.ca.api import CertificateRefused, SignedCertificate, TrustBundle
from pilotfish.model.identity import Identity

# Peers whose clocks run a little behind ours must still accept a certificate signed just
# now; kept small because agents rotate at half a lifetime that may be only a minute.
CLOCK_SKEW_SECONDS = 20.0
MIN_RSA_BITS = 2048

SigningKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey


@dataclass(frozen=True)
class CertificateAuthority:
    """A signing key, its certificate and the chain up to a root, and the roots peers trust."""

    key: SigningKey
    certificate: x509.Certificate
    """The certificate of ``key``: the root itself when self-signed, else an intermediate."""
    intermediates: tuple[x509.Certificate, ...]
    """Between ``certificate`` and ``root``, nearest first; empty when self-signed."""
    root: x509.Certificate
    """The root ``certificate`` chains to."""
    trusted_roots: tuple[x509.Certificate, ...]
    """Every root in the trust bundle: ``root`` first, then one being retired."""
    issuer_epoch: int = 1

    @property
    def not_after(self) -> dt.datetime:
        """When the first certificate of the signing chain expires: no leaf outlives it."""
        return min(c.not_valid_after_utc for c in (self.certificate, *self.intermediates))

    def trust_bundle(self) -> TrustBundle:
        return TrustBundle(
            roots_pem=tuple(certificate_pem(c) for c in self.trusted_roots),
            issuer_epoch=self.issuer_epoch,
        )

    def chain_pem(self) -> tuple[str, ...]:
        """The signing certificate and the intermediates: what follows every leaf."""
        if self.certificate == self.root:
            return ()
        return tuple(certificate_pem(c) for c in (self.certificate, *self.intermediates))

    def sign(
        self, csr_pem: str, identity: Identity, ttl_seconds: float, now: dt.datetime
    ) -> SignedCertificate:
        """A leaf for ``identity`` with the CSR's public key; ``CertificateRefused`` when the
        CSR asks for anything else than exactly that identity."""
        return self.issue(csr_pem, identity, ttl_seconds, now)[0]

    def issue(
        self, csr_pem: str, identity: Identity, ttl_seconds: float, now: dt.datetime
    ) -> tuple[SignedCertificate, int]:
        """``sign``, and the leaf's serial number (for the records of what was signed)."""
        csr = _load_csr(csr_pem)
        _check_csr(csr, identity)
        if ttl_seconds <= 0:
            raise CertificateRefused(f"requested lifetime {ttl_seconds} s is not positive")
        not_before = now - dt.timedelta(seconds=CLOCK_SKEW_SECONDS)
        not_after = min(now + dt.timedelta(seconds=ttl_seconds), self.not_after)
        if not_after <= now:
            raise CertificateRefused(
                f"the CA's signing certificate expired at {self.not_after.isoformat()}"
            )
        leaf = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([]))
            .issuer_name(self.certificate.subject)
            .public_key(csr.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(not_before)
            .not_valid_after(not_after)
            # An empty subject makes the SAN the only name, so RFC 5280 wants it critical.
            .add_extension(
                x509.SubjectAlternativeName([x509.UniformResourceIdentifier(identity.spiffe_id)]),
                critical=True,
            )
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    key_encipherment=True,
                    content_commitment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=False,
                    crl_sign=False,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(
                x509.ExtendedKeyUsage(
                    [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
                ),
                critical=False,
            )
            .add_extension(self._authority_key_identifier(), critical=False)
            .sign(self.key, hashes.SHA256())
        )
        signed = SignedCertificate(
            chain_pem=(certificate_pem(leaf), *self.chain_pem()),
            not_before=leaf.not_valid_before_utc,
            not_after=leaf.not_valid_after_utc,
            issuer_epoch=self.issuer_epoch,
        )
        return signed, leaf.serial_number

    def _authority_key_identifier(self) -> x509.AuthorityKeyIdentifier:
        try:
            ski = self.certificate.extensions.get_extension_for_class(x509.SubjectKeyIdentifier)
        except x509.ExtensionNotFound:
            # A plugged-in CA certificate may have none: derive the id from the key, as RFC
            # 5280 suggests for a subject key identifier.
            return x509.AuthorityKeyIdentifier.from_issuer_public_key(self.key.public_key())
        return x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski.value)


def new_self_signed_root(
    trust_domain: str, ttl_seconds: float, now: dt.datetime, issuer_epoch: int = 1
) -> CertificateAuthority:
    """A fresh EC P-256 root that signs workload certificates itself, as istiod's
    self-signed CA does (subject O=<trust domain>)."""
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, trust_domain)])
    public_key = key.public_key()
    root = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(seconds=CLOCK_SKEW_SECONDS))
        .not_valid_after(now + dt.timedelta(seconds=ttl_seconds))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                key_encipherment=False,
                content_commitment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
        .sign(key, hashes.SHA256())
    )
    return CertificateAuthority(
        key=key,
        certificate=root,
        intermediates=(),
        root=root,
        trusted_roots=(root,),
        issuer_epoch=issuer_epoch,
    )


def certificate_pem(certificate: x509.Certificate) -> str:
    return certificate.public_bytes(serialization.Encoding.PEM).decode("ascii")


def key_pem(key: SigningKey) -> str:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode("ascii")


def _load_csr(csr_pem: str) -> x509.CertificateSigningRequest:
    try:
        return x509.load_pem_x509_csr(csr_pem.encode("ascii"))
    except (ValueError, UnicodeEncodeError) as exc:
        raise CertificateRefused(f"not a PEM certificate signing request: {exc}") from exc


def _check_csr(csr: x509.CertificateSigningRequest, identity: Identity) -> None:
    try:
        valid = csr.is_signature_valid
    except InvalidSignature:
        valid = False
    if not valid:
        raise CertificateRefused("the CSR's signature does not verify with its own public key")
    public_key = csr.public_key()
    if isinstance(public_key, ec.EllipticCurvePublicKey):
        if not isinstance(public_key.curve, ec.SECP256R1):
            raise CertificateRefused(
                f"the CSR's key is on curve {public_key.curve.name}; only P-256 is accepted"
            )
    elif isinstance(public_key, rsa.RSAPublicKey):
        if public_key.key_size < MIN_RSA_BITS:
            raise CertificateRefused(
                f"the CSR's RSA key has {public_key.key_size} bits; at least {MIN_RSA_BITS}"
            )
    else:
        raise CertificateRefused(
            f"the CSR's key is {type(public_key).__name__}; EC P-256 (or RSA) only"
        )
    try:
        names = list(csr.extensions.get_extension_for_class(x509.SubjectAlternativeName).value)
    except x509.ExtensionNotFound:
        names = []
    uris = [n.value for n in names if isinstance(n, x509.UniformResourceIdentifier)]
    others = [n for n in names if not isinstance(n, x509.UniformResourceIdentifier)]
    if others:
        kinds = sorted({type(n).__name__ for n in others})
        raise CertificateRefused(
            f"the CSR asks for names other than a SPIFFE URI ({', '.join(kinds)}); "
            f"only {identity.spiffe_id} may be asked for"
        )
    if len(uris) != 1:
        raise CertificateRefused(
            f"the CSR must ask for exactly one URI SAN ({identity.spiffe_id}), "
            f"it asks for {len(uris)}: {', '.join(uris) or 'none'}"
        )
    if uris[0] != identity.spiffe_id:
        raise CertificateRefused(
            f"the CSR asks for {uris[0]} but the caller proved {identity.spiffe_id}"
        )
    try:
        constraints = csr.extensions.get_extension_for_class(x509.BasicConstraints).value
    except x509.ExtensionNotFound:
        return
    if constraints.ca:
        raise CertificateRefused("the CSR asks for a CA certificate; workloads get leaves only")
