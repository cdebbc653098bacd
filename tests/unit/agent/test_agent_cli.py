from __future__ import annotations

import argparse

import pytest

from pilotfish.agent.cli import add_agent_arguments, node_from_arguments


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


def test_the_service_account_names_the_node_identity() -> None:
    assert node_from_arguments(parse("--xds", "h:1")).service_account == "default"
    node = node_from_arguments(
        parse("--xds", "h:1", "--namespace", "shop", "--service-account", "reviews")
    )
    assert node.identity("example.org").spiffe_id == "spiffe://example.org/ns/shop/sa/reviews"


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
