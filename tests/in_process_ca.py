"""A small CA made in the test (cryptography), implementing ``CertificateSigner`` in-process.

Real certificates, real CSR checks; it can be taken down (``down = True``: signing and bundle
watches fail as an unreachable CA's would), refuse, and rotate its root.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from pilotfish.ca.api import CertificateRefused, SignedCertificate, TrustBundle


def _pem(certificate: x509.Certificate) -> str:
    return certificate.public_bytes(serialization.Encoding.PEM).decode("ascii")


class InProcessCA:
    def __init__(
        self,
        name: str = "pilotfish test root",
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.epoch = 1
        self.down = False
        self.refuse: str | None = None
        """When set, every CSR is refused with this reason."""
        self.names_instead: str | None = None
        """When set, certificates name this URI instead of the CSR's (a CA bug)."""
        self.sign_failures: list[Exception] = []
        """Raised by the next calls of ``sign``, one each, first first."""
        self.clock = clock
        self.backdate = timedelta(0)
        """How far before now ``not_before`` is set (as a CA allowing for clock skew does)."""
        self.signed: list[x509.Certificate] = []
        self.attempts = 0
        self.watches = 0
        self._name = name
        self._changed = asyncio.Condition()
        self.key, self.root = self._new_root()
        self.roots: tuple[x509.Certificate, ...] = (self.root,)

    def _new_root(self) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
        key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name(
            [
                x509.NameAttribute(NameOID.ORGANIZATION_NAME, "pilotfish-test"),
                x509.NameAttribute(NameOID.COMMON_NAME, f"{self._name} {self.epoch}"),
            ]
        )
        now = self.clock()
        root = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - timedelta(minutes=1))
            .not_valid_after(now + timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=True,
                    crl_sign=True,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .sign(key, hashes.SHA256())
        )
        return key, root

    @property
    def bundle(self) -> TrustBundle:
        return TrustBundle(tuple(_pem(r) for r in self.roots), self.epoch)

    @property
    def root_pem(self) -> str:
        return _pem(self.root)

    async def sign(self, csr_pem: str, ttl_seconds: float) -> SignedCertificate:
        self.attempts += 1
        await asyncio.sleep(0)
        if self.down:
            raise ConnectionError("test CA is down")
        if self.sign_failures:
            raise self.sign_failures.pop(0)
        if self.refuse is not None:
            raise CertificateRefused(self.refuse)
        csr = x509.load_pem_x509_csr(csr_pem.encode("ascii"))
        if not csr.is_signature_valid:
            raise CertificateRefused("bad CSR signature")
        san = csr.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        if self.names_instead is not None:
            san = x509.SubjectAlternativeName([x509.UniformResourceIdentifier(self.names_instead)])
        now = self.clock().replace(microsecond=0)
        not_after = now + timedelta(seconds=ttl_seconds)
        leaf = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([]))
            .issuer_name(self.root.subject)
            .public_key(csr.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - self.backdate)
            .not_valid_after(not_after)
            .add_extension(san, critical=True)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.ExtendedKeyUsage(
                    [x509.ExtendedKeyUsageOID.SERVER_AUTH, x509.ExtendedKeyUsageOID.CLIENT_AUTH]
                ),
                critical=False,
            )
            .sign(self.key, hashes.SHA256())
        )
        self.signed.append(leaf)
        return SignedCertificate((_pem(leaf),), now - self.backdate, not_after, self.epoch)

    async def watch_trust_bundle(self) -> AsyncIterator[TrustBundle]:
        self.watches += 1
        if self.down:
            raise ConnectionError("test CA is down")
        sent: TrustBundle | None = None
        while True:
            async with self._changed:
                if self.down:
                    raise ConnectionError("test CA went down")
                bundle = self.bundle
                if bundle == sent:
                    await self._changed.wait()
                    continue
            sent = bundle
            yield bundle

    async def rotate_root(self) -> None:
        """A new signing root; the bundle carries both the old and the new one."""
        async with self._changed:
            self.epoch += 1
            self.key, self.root = self._new_root()
            self.roots = (*self.roots, self.root)
            self._changed.notify_all()

    async def set_down(self, down: bool) -> None:
        async with self._changed:
            self.down = down
            self._changed.notify_all()
