from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from pilotfish.agent.ca_client import GrpcCertificateSigner
from pilotfish.agent.cli import (
    AgentArgumentError,
    add_agent_arguments,
    certificates_from_arguments,
    node_from_arguments,
    sidecar_from_arguments,
)
from pilotfish.model.telemetry import TELEMETRY_CLUSTER


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_agent_arguments(parser)
    return parser.parse_args(list(argv))


def test_a_sidecar_node_is_built_from_the_flags() -> None:
    args = parse(
        "--xds", "127.0.0.1:15010", "--node-id", "reviews-v1-0", "--service", "reviews",
        "--namespace", "shop", "--label", "app=reviews", "--label", "version=v1",
        "--inbound-port", "15006", "--outbound-port", "15001", "--app-port", "9080",
        "--app-protocol", "GRPC",
    )  # fmt: skip
    assert args.xds == ("127.0.0.1", 15010)
    node = node_from_arguments(args)
    assert node.id == "reviews-v1-0"
    assert node.kind == "sidecar"
    assert node.namespace == "shop"
    assert node.service == "reviews"
    assert dict(node.labels) == {"app": "reviews", "version": "v1"}
    assert (node.inbound_port, node.outbound_port, node.app_port) == (15006, 15001, 9080)
    assert node.app_protocol == "GRPC"


def test_defaults_are_delta_with_a_picked_admin_port_and_a_generated_id() -> None:
    args = parse("--xds", "localhost:1", "--kind", "gateway")
    assert args.sotw is False
    assert args.admin_port == 0
    assert args.concurrency == 1
    node = node_from_arguments(args)
    assert node.kind == "gateway"
    assert node.id.startswith("gateway-")


def test_a_telemetry_address_gives_envoy_the_telemetry_cluster(tmp_path: Path) -> None:
    def clusters(*argv: str) -> set[str]:
        args = parse("--xds", "127.0.0.1:1", *argv)
        sidecar = sidecar_from_arguments(args, node_from_arguments(args), None, tmp_path, 2)
        return {c["name"] for c in sidecar.bootstrap["static_resources"]["clusters"]}

    assert TELEMETRY_CLUSTER not in clusters()
    assert TELEMETRY_CLUSTER in clusters("--telemetry-address", "127.0.0.1:9411")
    assert parse("--xds", "h:1", "--telemetry-address", "h:9411").telemetry_address == ("h", 9411)


def test_the_service_account_names_the_node_identity() -> None:
    assert node_from_arguments(parse("--xds", "h:1")).service_account == "default"
    node = node_from_arguments(
        parse("--xds", "h:1", "--namespace", "shop", "--service-account", "reviews")
    )
    assert node.identity("example.org").spiffe_id == "spiffe://example.org/ns/shop/sa/reviews"


def test_without_a_token_file_there_are_no_certificates() -> None:
    args = parse("--xds", "h:1")
    assert certificates_from_arguments(args, node_from_arguments(args)) is None


def test_a_token_file_asks_the_ca_on_the_xds_port_for_the_node_identity(tmp_path: Path) -> None:
    (tmp_path / "token").write_text("pf1.abc.def\n")
    args = parse(
        "--xds", "127.0.0.1:15010", "--node-id", "web-0", "--namespace", "shop",
        "--service-account", "web", "--trust-domain", "example.org",
        "--ca-token-file", str(tmp_path / "token"), "--cert-ttl", "600",
    )  # fmt: skip
    certificates = certificates_from_arguments(args, node_from_arguments(args))
    assert certificates is not None
    assert certificates.identity.spiffe_id == "spiffe://example.org/ns/shop/sa/web"
    assert certificates.ttl_seconds == 600
    assert isinstance(certificates.signer, GrpcCertificateSigner)
    assert certificates.signer.address == "127.0.0.1:15010"


def test_the_ca_address_may_differ_from_the_xds_address(tmp_path: Path) -> None:
    (tmp_path / "token").write_text("pf1.abc.def")
    args = parse(
        "--xds", "10.0.0.1:1", "--ca-token-file", str(tmp_path / "token"),
        "--ca-address", "localhost:2",
    )  # fmt: skip
    certificates = certificates_from_arguments(args, node_from_arguments(args))
    assert certificates is not None and isinstance(certificates.signer, GrpcCertificateSigner)
    assert certificates.signer.address == "localhost:2"
    assert certificates.ttl_seconds == 24 * 3600


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--ca-address", "ca:1"], "--ca-address needs --ca-token-file"),
        (["--ca-token-file", "{dir}/missing"], "No such file"),
        (["--ca-token-file", "{dir}/empty"], "the file is empty"),
        (
            ["--ca-token-file", "{dir}/token", "--cert-ttl", "0"],
            "--cert-ttl must be a positive number",
        ),
        (
            ["--ca-token-file", "{dir}/token", "--ca-address", "ca.example:2"],
            "--ca-address ca.example:2: the CA must be on this machine .* TLS to the CA is "
            "not implemented yet",
        ),
        (
            ["--ca-token-file", "{dir}/token", "--ca-address", "10.1.2.3:2"],
            "--ca-address 10.1.2.3:2: the CA must be on this machine",
        ),
    ],
)
def test_identity_flags_that_do_not_fit_are_named(
    argv: list[str], message: str, tmp_path: Path
) -> None:
    (tmp_path / "empty").write_text("\n")
    (tmp_path / "token").write_text("pf1.abc.def")
    args = parse("--xds", "127.0.0.1:1", *(a.format(dir=tmp_path) for a in argv))
    with pytest.raises(AgentArgumentError, match=message):
        certificates_from_arguments(args, node_from_arguments(args))


def test_the_xds_address_names_the_ca_when_no_ca_address_is_given(tmp_path: Path) -> None:
    (tmp_path / "token").write_text("pf1.abc.def")
    args = parse("--xds", "cp.example:15010", "--ca-token-file", str(tmp_path / "token"))
    with pytest.raises(AgentArgumentError, match=r"--xds \(where the CA is by default\)"):
        certificates_from_arguments(args, node_from_arguments(args))
    ipv6 = parse("--xds", "[::1]:15010", "--ca-token-file", str(tmp_path / "token"))
    assert certificates_from_arguments(ipv6, node_from_arguments(ipv6)) is not None


def test_an_equals_sign_may_appear_in_a_label_value() -> None:
    args = parse("--xds", "h:1", "--label", "expr=a=b")
    assert args.label == [("expr", "a=b")]


@pytest.mark.parametrize(
    "argv",
    [
        ["--xds", "no-port"],
        ["--xds", "host:http"],
        ["--xds", "h:1", "--label", "novalue"],
        ["--xds", "h:1", "--kind", "router"],
        [],
    ],
)
def test_bad_flags_are_rejected(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        parse(*argv)
    assert "error" in capsys.readouterr().err


def test_the_locality_flag_goes_into_the_node_and_its_bootstrap(tmp_path: Path) -> None:
    args = parse("--xds", "127.0.0.1:1", "--locality", "us-east/zone-a")
    node = node_from_arguments(args)
    assert node.locality == "us-east/zone-a"
    assert node.to_metadata()["PILOTFISH_LOCALITY"] == "us-east/zone-a"
    sidecar = sidecar_from_arguments(args, node, None, tmp_path, 2)
    assert sidecar.bootstrap["node"]["locality"] == {"region": "us-east", "zone": "zone-a"}
    assert node_from_arguments(parse("--xds", "h:1")).locality is None


@pytest.mark.parametrize("locality", ["a//b", "a/b/c/d", "a/*", "", "us east/a"])
def test_a_bad_locality_flag_is_refused(locality: str) -> None:
    with pytest.raises(SystemExit):
        parse("--xds", "h:1", "--locality", locality)
