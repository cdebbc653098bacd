"""DestinationRule and Gateway TLS settings: values, Istio's rules, and certificate files that
must exist (named with file, line and field)."""

from __future__ import annotations

from pathlib import Path

import pytest
from load_cases import assert_at, find, load

from pilotfish.load import load_text

RULE = """\
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata:
  name: api
spec:
  hosts: [api.example.com]
  ports:
  - {number: 443, name: https, protocol: HTTP}
  resolution: DNS
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata:
  name: api
spec:
  host: api.example.com
  trafficPolicy:
    tls:
      TLS
"""

GATEWAY = """\
apiVersion: networking.istio.io/v1
kind: Gateway
metadata:
  name: web
spec:
  servers:
  - port: {number: 443, name: https, protocol: HTTPS}
    hosts: ["*"]
    tls:
      TLS
"""


def with_tls(template: str, tls: str) -> str:
    return template.replace("TLS", "\n      ".join(tls.strip("\n").split("\n")))


def certificates(folder: Path, *names: str) -> None:
    for name in names:
        (folder / name).write_text("-----BEGIN CERTIFICATE-----\n")


def test_destination_rule_tls_values_resolve_files_against_the_folder(tmp_path: Path) -> None:
    certificates(tmp_path, "ca.pem", "client.pem", "key.pem")
    text = with_tls(
        RULE,
        """mode: MUTUAL
caCertificates: ca.pem
clientCertificate: client.pem
privateKey: key.pem
sni: api.example.com
subjectAltNames: [api.example.com, spiffe://x/ns/a/sa/b]""",
    )
    result = load_text(text, str(tmp_path / "rule.yaml"))
    assert result.diagnostics == ()
    assert result.config is not None
    policy = result.config.destination_rules[0].traffic_policy
    assert policy is not None and policy.tls is not None
    assert policy.tls.mode == "MUTUAL"
    assert policy.tls.ca_certificates == str(tmp_path / "ca.pem")
    assert policy.tls.client_certificate == str(tmp_path / "client.pem")
    assert policy.tls.sni == "api.example.com"
    assert policy.tls.subject_alt_names == ("api.example.com", "spiffe://x/ns/a/sa/b")


def test_a_missing_certificate_file_is_an_error_naming_file_and_field(tmp_path: Path) -> None:
    certificates(tmp_path, "client.pem")
    text = with_tls(RULE, "mode: MUTUAL\nclientCertificate: client.pem\nprivateKey: gone.pem")
    result = load_text(text, str(tmp_path / "rule.yaml"))
    (error,) = result.errors
    assert error.field == "spec.trafficPolicy.tls.privateKey"
    assert error.line == text.split("\n").index("      privateKey: gone.pem") + 1
    assert f"no such certificate file: {tmp_path / 'gone.pem'}" in error.message
    assert result.config is None


@pytest.mark.parametrize(
    ("tls", "field", "message"),
    [
        (
            "mode: MUTUAL",
            "spec.trafficPolicy.tls.clientCertificate",
            "required when mode is MUTUAL",
        ),
        (
            "mode: ISTIO_MUTUAL\ncaCertificates: ca.pem",
            "spec.trafficPolicy.tls.caCertificates",
            "must not be set with ISTIO_MUTUAL",
        ),
        (
            "mode: SIMPLE\ninsecureSkipVerify: true\ncaCertificates: /etc/hostname",
            "spec.trafficPolicy.tls.insecureSkipVerify",
            "cannot be true together with",
        ),
        ("mode: TLS", "spec.trafficPolicy.tls.mode", "must be one of"),
        ("mode: SIMPLE\nverify: true", "spec.trafficPolicy.tls.verify", "unknown field"),
    ],
)
def test_destination_rule_tls_problems(tls: str, field: str, message: str) -> None:
    _text, result = load(with_tls(RULE, tls))
    assert message in find(result, field).message
    assert result.config is None


def test_credential_name_of_a_rule_is_a_warning_as_istio_reads_it_at_gateways_only() -> None:
    """Istio accepts it (and its sidecars keep to the file fields): a MUTUAL rule with only a
    credentialName is accepted, and the warning says no client certificate is sent."""
    _text, result = load(with_tls(RULE, "mode: MUTUAL\ncredentialName: api-cert"))
    (warning,) = result.diagnostics
    assert warning.field == "spec.trafficPolicy.tls.credentialName"
    assert warning.severity == "warning"
    assert "gateways only" in warning.message and "no client certificate" in warning.message
    assert result.config is not None


def test_insecure_skip_verify_with_names_to_verify() -> None:
    _text, result = load(
        with_tls(RULE, "mode: SIMPLE\ninsecureSkipVerify: true\nsubjectAltNames: [a.b]")
    )
    assert (
        "cannot be true together"
        in find(result, "spec.trafficPolicy.tls.insecureSkipVerify").message
    )


def test_ca_crl_warns_what_does_not_happen() -> None:
    text, result = load(with_tls(RULE, "mode: SIMPLE\ncaCrl: crl.pem"))
    assert_at(
        result, text, "spec.trafficPolicy.tls.caCrl", "caCrl", "not refused", severity="warning"
    )


def test_port_level_and_subset_tls() -> None:
    ports = (
        "  - {number: 8443, name: https, protocol: HTTP}\n"
        "  - {number: 9000, name: web, protocol: HTTP}\n"
    )
    _text, result = load(
        RULE.split("---")[0].replace("  - {number: 443, name: https, protocol: HTTP}\n", ports)
        + """---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata:
  name: api
spec:
  host: api.example.com
  trafficPolicy:
    portLevelSettings:
    - port: {number: 8443}
      tls: {mode: SIMPLE}
    - port: {number: 9000}
      loadBalancer: {simple: RANDOM}
  subsets:
  - name: plain
    trafficPolicy:
      tls: {mode: DISABLE}
"""
    )
    assert result.config is not None
    assert result.warnings == ()
    rule = result.config.destination_rules[0]
    assert rule.traffic_policy is not None
    port_settings = rule.traffic_policy.port_settings
    assert {p: s.tls.mode if s.tls else None for p, s in port_settings.items()} == {
        8443: "SIMPLE",
        9000: None,
    }
    port_lb = port_settings[9000].load_balancer
    assert port_lb is not None and port_lb.simple == "RANDOM"
    subset_policy = rule.subsets[0].traffic_policy
    assert subset_policy is not None and subset_policy.tls is not None
    assert subset_policy.tls.mode == "DISABLE"


def test_port_level_settings_need_a_port() -> None:
    text, result = load(
        RULE.replace("    tls:\n      TLS\n", "    portLevelSettings:\n    - tls: {mode: SIMPLE}\n")
    )
    assert_at(result, text, "spec.trafficPolicy.portLevelSettings[0].port", "tls: {", "required")


# --- Gateway -----------------------------------------------------------------------------------


def test_https_server_with_files(tmp_path: Path) -> None:
    certificates(tmp_path, "cert.pem", "key.pem", "ca.pem")
    text = with_tls(
        GATEWAY,
        "mode: MUTUAL\nserverCertificate: cert.pem\nprivateKey: key.pem\ncaCertificates: ca.pem",
    )
    result = load_text(text, str(tmp_path / "gw.yaml"))
    assert result.diagnostics == ()
    assert result.config is not None
    (server,) = result.config.gateways[0].servers
    assert server.protocol == "HTTP"
    assert server.tls is not None
    assert server.tls.mode == "MUTUAL"
    assert server.tls.server_certificate == str(tmp_path / "cert.pem")
    assert server.tls.ca_certificates == str(tmp_path / "ca.pem")


def test_passthrough_ignores_certificates_as_istio_does() -> None:
    _text, result = load(with_tls(GATEWAY, "serverCertificate: c.pem\nprivateKey: k.pem"))
    for field in ("serverCertificate", "privateKey"):
        warning = find(result, f"spec.servers[0].tls.{field}")
        assert "ignored with PASSTHROUGH" in warning.message and warning.severity == "warning"
    assert result.config is not None
    (server,) = result.config.gateways[0].servers
    assert server.passthrough and server.protocol == "TLS"


def test_https_server_missing_file(tmp_path: Path) -> None:
    certificates(tmp_path, "key.pem")
    text = with_tls(GATEWAY, "mode: SIMPLE\nserverCertificate: cert.pem\nprivateKey: key.pem")
    result = load_text(text, str(tmp_path / "gw.yaml"))
    (error,) = result.errors
    assert error.field == "spec.servers[0].tls.serverCertificate"
    assert "no such certificate file" in error.message and "cert.pem" in error.message


@pytest.mark.parametrize(
    ("tls", "field", "message"),
    [
        (
            "mode: SIMPLE\ncredentialName: web-cert",
            "spec.servers[0].tls.credentialName",
            "not supported yet: use serverCertificate/privateKey files",
        ),
        (
            "mode: MUTUAL\ncaCertCredentialName: web-ca",
            "spec.servers[0].tls.caCertCredentialName",
            "not supported yet: use caCertificates files",
        ),
        ("mode: AUTO_PASSTHROUGH", "spec.servers[0].tls.mode", "AUTO_PASSTHROUGH (routing by"),
        ("mode: ISTIO_MUTUAL", "spec.servers[0].tls.mode", "ISTIO_MUTUAL at a gateway"),
    ],
)
def test_https_servers_istio_accepts_but_pilotfish_cannot_serve_are_warnings(
    tls: str, field: str, message: str
) -> None:
    _text, result = load(with_tls(GATEWAY, tls))
    warning = find(result, field)
    assert message in warning.message and "this server is not served" in warning.message
    assert warning.severity == "warning"
    assert result.config is not None
    (gateway,) = result.config.gateways
    assert gateway.servers == ()


@pytest.mark.parametrize(
    ("tls", "field", "message"),
    [
        (
            "mode: SIMPLE\nprivateKey: key.pem",
            "spec.servers[0].tls.serverCertificate",
            "required for a SIMPLE server",
        ),
        (
            "mode: MUTUAL\nserverCertificate: c.pem\nprivateKey: k.pem",
            "spec.servers[0].tls.caCertificates",
            "required when mode is MUTUAL",
        ),
    ],
)
def test_https_server_problems(tls: str, field: str, message: str) -> None:
    _text, result = load(with_tls(GATEWAY, tls))
    assert message in find(result, field).message
    assert result.config is None


def test_a_credential_name_is_the_only_word_on_its_server() -> None:
    """Istio's generated MUTUAL servers name their CA by credentialName too: no error about
    the caCertificates they do not need there."""
    _text, result = load(with_tls(GATEWAY, "mode: MUTUAL\ncredentialName: web-cert"))
    assert [d.field for d in result.diagnostics] == ["spec.servers[0].tls.credentialName"]
    assert result.errors == ()


def test_istio_server_fields_we_do_not_carry_warn() -> None:
    text, result = load(
        with_tls(
            GATEWAY,
            "mode: SIMPLE\nserverCertificate: /etc/hostname\nprivateKey: /etc/hostname\n"
            "insecureSkipVerify: true\nminProtocolVersion: TLSV1_3\nmaxProtocolVersion: TLS_AUTO",
        )
    )
    assert_at(
        result,
        text,
        "spec.servers[0].tls.insecureSkipVerify",
        "insecureSkipVerify",
        "verified all the same",
        severity="warning",
    )
    assert result.config is not None
    settings = result.config.gateways[0].servers[0].tls
    assert settings is not None
    assert (settings.min_protocol_version, settings.max_protocol_version) == ("TLSV1_3", None)


def test_min_above_max_protocol_version() -> None:
    _text, result = load(
        with_tls(
            GATEWAY,
            "mode: SIMPLE\nserverCertificate: c.pem\nprivateKey: k.pem\n"
            "minProtocolVersion: TLSV1_3\nmaxProtocolVersion: TLSV1_2",
        )
    )
    assert (
        "above maxProtocolVersion" in find(result, "spec.servers[0].tls.minProtocolVersion").message
    )


def test_https_redirect_on_an_http_server() -> None:
    _text, result = load(
        GATEWAY.replace(
            "443, name: https, protocol: HTTPS", "80, name: http, protocol: HTTP"
        ).replace("TLS", "httpsRedirect: true")
    )
    assert result.diagnostics == ()
    assert result.config is not None
    assert result.config.gateways[0].servers[0].https_redirect


def test_a_host_two_https_servers_share_on_a_port_warns(tmp_path: Path) -> None:
    certificates(tmp_path, "c.pem", "k.pem")
    server = (
        '  - port: {number: 443, name: NAME, protocol: HTTPS}\n    hosts: ["a.example.com", HOST]\n'
        "    tls: {mode: SIMPLE, serverCertificate: c.pem, privateKey: k.pem}\n"
    )
    text = (
        GATEWAY.split("  - port")[0]
        + server.replace("NAME", "one").replace("HOST", '"b.example.com"')
        + server.replace("NAME", "two").replace("HOST", '"c.example.com"')
    )
    result = load_text(text, str(tmp_path / "gw.yaml"))
    (warning,) = result.warnings
    assert warning.field == "spec.servers[1].hosts[0]"
    assert "a.example.com on port 443 is already served by spec.servers[0]" in warning.message
    assert result.config is not None
