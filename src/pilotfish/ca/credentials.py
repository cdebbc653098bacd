"""Bearer credentials that prove a workload identity to the CA.

``pilotfish up`` hands each replica's agent the token of its own identity; the CA signs
only the identity a token proves. A token is the SPIFFE id and an HMAC-SHA256 of it under a
secret that only the control plane holds (kept with the CA's files), so a process that
can read one replica's token cannot make another's.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets

from pilotfish.ca.api import CertificateRefused
from pilotfish.model.identity import Identity

TOKEN_PREFIX = "pf1"
SECRET_BYTES = 32


class InvalidCredential(CertificateRefused):
    """The token is malformed or was not made with this CA's secret."""


def new_secret() -> bytes:
    return secrets.token_bytes(SECRET_BYTES)


class CredentialAuthority:
    def __init__(self, secret: bytes) -> None:
        if len(secret) < 16:
            raise ValueError("a credential secret needs at least 16 bytes")
        self._secret = secret

    def token_for(self, identity: Identity) -> str:
        subject = identity.spiffe_id.encode()
        return ".".join((TOKEN_PREFIX, _b64(subject), _b64(self._mac(subject))))

    def verify(self, token: str) -> Identity:
        """The identity the token proves; ``InvalidCredential`` otherwise."""
        parts = token.split(".")
        if len(parts) != 3 or parts[0] != TOKEN_PREFIX:
            raise InvalidCredential(f"the credential is not a {TOKEN_PREFIX} token")
        try:
            subject = _unb64(parts[1])
            mac = _unb64(parts[2])
        except ValueError as exc:
            raise InvalidCredential("the credential is not valid base64url") from exc
        if not hmac.compare_digest(mac, self._mac(subject)):
            raise InvalidCredential("the credential was not issued by this control plane")
        try:
            return Identity.parse(subject.decode())
        except (UnicodeDecodeError, ValueError) as exc:
            raise InvalidCredential(f"the credential names no identity: {exc}") from exc

    def _mac(self, subject: bytes) -> bytes:
        return hmac.new(self._secret, subject, hashlib.sha256).digest()


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    try:
        return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (ValueError, TypeError) as exc:
        raise ValueError(str(exc)) from exc
