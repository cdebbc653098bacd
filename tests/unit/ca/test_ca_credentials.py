from __future__ import annotations

import pytest

from pilotfish.ca.credentials import CredentialAuthority, InvalidCredential, new_secret
from pilotfish.model.identity import Identity

WEB = Identity("cluster.local", "default", "web")
API = Identity("cluster.local", "default", "api")


def test_a_token_proves_the_identity_it_was_made_for() -> None:
    authority = CredentialAuthority(new_secret())
    assert authority.verify(authority.token_for(WEB)) == WEB
    assert authority.token_for(WEB) != authority.token_for(API)


def test_a_token_of_another_secret_proves_nothing() -> None:
    token = CredentialAuthority(new_secret()).token_for(WEB)
    with pytest.raises(InvalidCredential, match="not issued by this control plane"):
        CredentialAuthority(new_secret()).verify(token)


def test_a_token_whose_subject_was_swapped_proves_nothing() -> None:
    authority = CredentialAuthority(new_secret())
    prefix, _, mac = authority.token_for(WEB).split(".")
    _, api_subject, _ = authority.token_for(API).split(".")
    with pytest.raises(InvalidCredential, match="not issued"):
        authority.verify(".".join((prefix, api_subject, mac)))


@pytest.mark.parametrize("token", ["", "Bearer", "pf1.abc", "pf2.a.b", "pf1.!!.??"])
def test_malformed_tokens_are_refused(token: str) -> None:
    with pytest.raises(InvalidCredential):
        CredentialAuthority(new_secret()).verify(token)


def test_a_short_secret_is_refused() -> None:
    with pytest.raises(ValueError, match="16 bytes"):
        CredentialAuthority(b"short")
