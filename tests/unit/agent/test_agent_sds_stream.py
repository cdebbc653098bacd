"""One SDS stream without I/O: what Envoy's requests and the agent's changes make it send."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from envoy.extensions.transport_sockets.tls.v3 import secret_pb2
from envoy.service.discovery.v3 import discovery_pb2
from google.rpc import status_pb2

from pilotfish.agent.sds_server import SECRET_TYPE, SdsStream, secrets_to_proto
from pilotfish.agent.workload_certificate import WorkloadCertificate
from pilotfish.ca.api import TrustBundle
from pilotfish.model.identity import ROOT_CA_SECRET, WORKLOAD_CERT_SECRET, Identity

NOW = datetime(2026, 12, 1, tzinfo=UTC)


def certificate(serial: int) -> WorkloadCertificate:
    return WorkloadCertificate(
        identity=Identity("cluster.local", "default", "web"),
        key_pem=f"KEY {serial}",
        chain_pem=(f"LEAF {serial}", "INTERMEDIATE"),
        serial=serial,
        not_before=NOW,
        not_after=NOW + timedelta(hours=1),
        issuer_epoch=1,
    )


BUNDLE = TrustBundle(("ROOT 1",), issuer_epoch=1)


def request(
    *names: str, nonce: str = "", error: str | None = None
) -> discovery_pb2.DiscoveryRequest:
    message = discovery_pb2.DiscoveryRequest(
        type_url=SECRET_TYPE, resource_names=list(names), response_nonce=nonce
    )
    if error is not None:
        message.error_detail.CopyFrom(status_pb2.Status(code=13, message=error))
    return message


def secrets_of(response: discovery_pb2.DiscoveryResponse | None) -> list[secret_pb2.Secret]:
    assert response is not None
    out = []
    for packed in response.resources:
        secret = secret_pb2.Secret()
        assert packed.Unpack(secret)
        out.append(secret)
    return out


def test_the_secrets_carry_chain_key_and_every_root() -> None:
    bundle = TrustBundle(("ROOT 1\n", "ROOT 2\n"), issuer_epoch=2)
    secrets = secrets_to_proto(certificate(1), bundle)
    workload = secrets[WORKLOAD_CERT_SECRET].tls_certificate
    assert workload.certificate_chain.inline_string == "LEAF 1INTERMEDIATE"
    assert workload.private_key.inline_string == "KEY 1"
    roots = secrets[ROOT_CA_SECRET].validation_context.trusted_ca.inline_string
    assert roots == "ROOT 1\nROOT 2\n"
    assert secrets_to_proto(None, None) == {}


def test_nothing_is_answered_until_the_certificate_exists() -> None:
    stream = SdsStream()
    assert stream.request(request(WORKLOAD_CERT_SECRET), secrets_to_proto(None, BUNDLE)) is None
    response = stream.changed(secrets_to_proto(certificate(1), BUNDLE))
    (secret,) = secrets_of(response)
    assert secret.name == WORKLOAD_CERT_SECRET
    assert response is not None and response.nonce and response.version_info


def test_an_ack_sends_nothing_and_a_new_certificate_is_pushed_with_a_new_version() -> None:
    stream = SdsStream()
    first = stream.request(request(WORKLOAD_CERT_SECRET), secrets_to_proto(certificate(1), BUNDLE))
    assert first is not None
    ack = request(WORKLOAD_CERT_SECRET, nonce=first.nonce)
    ack.version_info = first.version_info
    assert stream.request(ack, secrets_to_proto(certificate(1), BUNDLE)) is None
    assert stream.acked_version == first.version_info
    second = stream.changed(secrets_to_proto(certificate(2), BUNDLE))
    assert second is not None
    assert second.version_info != first.version_info and second.nonce != first.nonce
    assert secrets_of(second)[0].tls_certificate.private_key.inline_string == "KEY 2"


def test_a_new_bundle_does_not_resend_the_certificate_stream() -> None:
    stream = SdsStream()
    secrets = secrets_to_proto(certificate(1), BUNDLE)
    assert stream.request(request(WORKLOAD_CERT_SECRET), secrets) is not None
    rotated = TrustBundle(("ROOT 1", "ROOT 2"), issuer_epoch=2)
    assert stream.changed(secrets_to_proto(certificate(1), rotated)) is None
    roots = SdsStream()
    assert roots.request(request(ROOT_CA_SECRET), secrets) is not None
    assert roots.changed(secrets_to_proto(certificate(1), rotated)) is not None


def test_a_nack_is_logged_and_not_answered(caplog: pytest.LogCaptureFixture) -> None:
    stream = SdsStream("sidecar-1")
    secrets = secrets_to_proto(certificate(1), BUNDLE)
    sent = stream.request(request(WORKLOAD_CERT_SECRET), secrets)
    assert sent is not None
    nack = request(WORKLOAD_CERT_SECRET, nonce=sent.nonce, error="Failed to load private key")
    assert stream.request(nack, secrets) is None
    assert stream.nack_message == "Failed to load private key"
    assert "sidecar-1" in caplog.text and "Failed to load private key" in caplog.text
    assert stream.changed(secrets_to_proto(certificate(2), BUNDLE)) is not None


def test_a_stale_nonce_is_ignored() -> None:
    stream = SdsStream()
    first = stream.request(request(WORKLOAD_CERT_SECRET), secrets_to_proto(certificate(1), BUNDLE))
    second = stream.changed(secrets_to_proto(certificate(2), BUNDLE))
    assert first is not None and second is not None
    late_ack = request(WORKLOAD_CERT_SECRET, nonce=first.nonce)
    assert stream.request(late_ack, secrets_to_proto(certificate(2), BUNDLE)) is None
    assert stream.acked_version is None


def test_a_reconnecting_proxy_is_answered_even_if_it_names_our_version() -> None:
    secrets = secrets_to_proto(certificate(1), BUNDLE)
    first = SdsStream().request(request(WORKLOAD_CERT_SECRET), secrets)
    assert first is not None
    again = request(WORKLOAD_CERT_SECRET)
    again.version_info = first.version_info
    assert SdsStream().request(again, secrets) is not None


def test_unknown_names_are_logged_and_the_known_ones_answered(
    caplog: pytest.LogCaptureFixture,
) -> None:
    secrets = secrets_to_proto(certificate(1), BUNDLE)
    stream = SdsStream()
    response = stream.request(request("file-cert:/etc/x.pem", ROOT_CA_SECRET), secrets)
    assert [s.name for s in secrets_of(response)] == [ROOT_CA_SECRET]
    assert "file-cert:/etc/x.pem" in caplog.text
    only_unknown = SdsStream()
    assert only_unknown.request(request("nope"), secrets) is None
