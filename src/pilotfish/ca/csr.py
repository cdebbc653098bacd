"""What an agent sends the CA: a fresh key (kept) and a CSR for its identity (sent)."""

from __future__ import annotations

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from pilotfish.model.identity import Identity


def new_key_and_csr(identity: Identity) -> tuple[str, str]:
    """(private key PEM, CSR PEM): an EC P-256 key and a CSR whose one name is the SPIFFE id.

    The key never leaves the agent; the CA puts the public half in the certificate.
    """
    key = ec.generate_private_key(ec.SECP256R1())
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([]))
        .add_extension(
            x509.SubjectAlternativeName([x509.UniformResourceIdentifier(identity.spiffe_id)]),
            critical=True,
        )
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode("ascii")
    return key_pem, csr.public_bytes(serialization.Encoding.PEM).decode("ascii")
