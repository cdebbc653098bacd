"""ES256 JSON Web Tokens and key sets for tests, made with ``cryptography`` alone."""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Mapping

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


class SigningKey:
    def __init__(self, kid: str = "test-key") -> None:
        self.kid = kid
        self._key = ec.generate_private_key(ec.SECP256R1())

    def jwks(self) -> str:
        numbers = self._key.public_key().public_numbers()
        key = {
            "kty": "EC",
            "crv": "P-256",
            "alg": "ES256",
            "use": "sig",
            "kid": self.kid,
            "x": _b64(numbers.x.to_bytes(32, "big")),
            "y": _b64(numbers.y.to_bytes(32, "big")),
        }
        return json.dumps({"keys": [key]})

    def token(self, claims: Mapping[str, object], *, lifetime: float = 3600.0) -> str:
        now = int(time.time())
        body = {"iat": now, "exp": now + int(lifetime), **claims}
        header = {"alg": "ES256", "typ": "JWT", "kid": self.kid}
        signing_input = f"{_b64(json.dumps(header).encode())}.{_b64(json.dumps(body).encode())}"
        der = self._key.sign(signing_input.encode(), ec.ECDSA(hashes.SHA256()))
        r, s = decode_dss_signature(der)
        return f"{signing_input}.{_b64(r.to_bytes(32, 'big') + s.to_bytes(32, 'big'))}"
