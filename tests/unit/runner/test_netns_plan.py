"""The plan of transparent interception: names, addresses, commands, rules, hosts files."""

from __future__ import annotations

import ipaddress

import pytest

from pilotfish.model.resources import ServicePort
from pilotfish.model.service_addresses import ServiceAddress
from pilotfish.model.services import Service
from pilotfish.runner.netns_plan import (
    ENVOY_UID,
    HostNetwork,
    capture_rules,
    choose_subnet,
    hosts_file,
    leftovers,
    namespace_owner,
    owned_by,
    replica_teardown,
    transparent_environment,
)

NET = ipaddress.IPv4Network


def test_the_first_free_slash_24_of_the_pool_is_chosen_around_existing_routes() -> None:
    assert choose_subnet([]) == NET("10.250.0.0/24")
    routes = [NET("0.0.0.0/0"), NET("10.250.0.0/24"), NET("10.250.1.128/25"), NET("192.0.2.0/24")]
    assert choose_subnet(routes) == NET("10.250.2.0/24")


def test_a_route_covering_the_whole_pool_leaves_no_subnet() -> None:
    with pytest.raises(ValueError, match="already routed"):
        choose_subnet([NET("10.0.0.0/8")])


def test_names_carry_the_pid_and_addresses_follow_the_slot() -> None:
    host = HostNetwork(4242, NET("10.250.3.0/24"))
    replica = host.replica(1)
    assert (host.hub, host.root_link, host.host_address) == ("pf4242-hub", "pf4242h", "10.250.3.1")
    assert (replica.namespace, replica.address) == ("pf4242-1", "10.250.3.3")
    assert len(host.root_link) <= 15  # IFNAMSIZ
    with pytest.raises(ValueError, match="at most 253"):
        host.replica(253)


def test_the_root_namespace_gets_one_veth_with_one_address_and_the_rest_is_in_the_hub() -> None:
    host = HostNetwork(7, NET("10.250.0.0/24"))
    root = [c.argv for c in host.setup() if c.argv[1] not in ("netns", "-n")]
    assert root == [
        ("ip", "link", "add", "pf7h", "type", "veth", "peer", "name", "up0", "netns", "pf7-hub"),
        ("ip", "addr", "add", "10.250.0.1/24", "dev", "pf7h"),
        ("ip", "link", "set", "pf7h", "up"),
    ]


def test_a_replica_joins_the_hub_bridge_routes_by_the_root_end_and_loads_its_rules() -> None:
    replica = HostNetwork(7, NET("10.250.0.0/24")).replica(0)
    commands = replica.setup(8080)
    argvs = [c.argv for c in commands]
    assert ("ip", "-n", "pf7-hub", "link", "set", "r0", "master", "br0", "up") in argvs
    assert ("ip", "-n", "pf7-0", "route", "add", "default", "via", "10.250.0.1") in argvs
    assert commands[-1].argv == ("ip", "netns", "exec", "pf7-0", "iptables-restore")
    assert commands[-1].stdin == capture_rules(replica, 8080)


def test_capture_rules_exempt_the_sidecar_uid_and_loopback_and_redirect_the_rest() -> None:
    replica = HostNetwork(7, NET("10.250.0.0/24")).replica(0)
    rules = capture_rules(replica, 9000).splitlines()
    assert rules[0] == "*nat" and rules[-1] == "COMMIT"
    body = [line for line in rules if line.startswith("-A")]
    assert body == [
        "-A PREROUTING -p tcp --dport 9000 -j REDIRECT --to-ports 15006",
        f"-A OUTPUT -p tcp -d 10.250.0.2/32 --dport 9000 -m owner --uid-owner {ENVOY_UID}"
        " -j DNAT --to-destination 10.250.0.2:15006",
        f"-A OUTPUT -p tcp -m owner --uid-owner {ENVOY_UID} -j RETURN",
        "-A OUTPUT -p tcp -d 127.0.0.0/8 -j RETURN",
        "-A OUTPUT -p tcp -j REDIRECT --to-ports 15001",
    ]


def test_the_sidecar_runs_in_the_namespace_as_its_uid_and_dies_with_up() -> None:
    replica = HostNetwork(7, NET("10.250.0.0/24")).replica(2)
    assert replica.as_sidecar(("envoy", "-c", "b.json")) == (
        "ip", "netns", "exec", "pf7-2", "setpriv", "--reuid=1337", "--regid=1337",
        "--clear-groups", "--pdeathsig", "KILL", "envoy", "-c", "b.json",
    )  # fmt: skip
    assert replica.in_namespace(("node", "app.js")) == (
        "ip",
        "netns",
        "exec",
        "pf7-2",
        "node",
        "app.js",
    )


def test_teardown_kills_what_is_left_inside_before_deleting_the_namespace() -> None:
    assert [c.argv for c in replica_teardown("pf7-0", [12, 3])] == [
        ("kill", "-KILL", "3"),
        ("kill", "-KILL", "12"),
        ("ip", "netns", "delete", "pf7-0"),
    ]


def test_only_our_names_of_dead_owners_are_leftovers_replicas_before_the_hub() -> None:
    names = ["pf10-hub", "pf10-0", "pf11-0", "other", "pf10x", "pfx-1", "pf10-1"]
    assert [namespace_owner(n) for n in names] == [10, 10, 11, None, None, None, 10]
    namespaces, links = leftovers(names, ["pf10h", "pf11h", "eth0"], lambda pid: pid == 11)
    assert namespaces == ["pf10-0", "pf10-1", "pf10-hub"]
    assert links == ["pf10h"]
    assert owned_by(11, names) == ["pf11-0"]


def _service(short: str, namespace: str = "default") -> Service:
    return Service(
        hostname=f"{short}.{namespace}.svc.cluster.local",
        ports=(ServicePort(8080, "http"),),
        namespace=namespace,
        short_name=short,
    )


def test_hosts_name_every_service_and_short_names_only_in_the_replicas_namespace() -> None:
    services = {s.hostname: s for s in (_service("backend"), _service("db", "data"))}
    addresses = {
        "backend.default.svc.cluster.local": ServiceAddress("240.240.0.9", ()),
        "db.data.svc.cluster.local": ServiceAddress("240.240.0.7", ()),
    }
    text = hosts_file("default", services, addresses)
    assert text.splitlines()[2:] == [
        "240.240.0.9\tbackend.default.svc.cluster.local backend backend.default "
        "backend.default.svc",
        "240.240.0.7\tdb.data.svc.cluster.local db.data db.data.svc",
    ]
    assert text.startswith("127.0.0.1\tlocalhost\n")
    assert "db.data.svc.cluster.local db db.data db.data.svc\n" in hosts_file(
        "data", services, addresses
    )


def test_a_service_with_only_a_range_of_addresses_gets_no_hosts_line() -> None:
    services = {"backend.default.svc.cluster.local": _service("backend")}
    addresses = {"backend.default.svc.cluster.local": ServiceAddress(None, (NET("10.9.0.0/16"),))}
    assert "backend" not in hosts_file("default", services, addresses)


def test_the_app_gets_no_proxy_variables_under_interception() -> None:
    env = {
        "HTTP_PROXY": "x",
        "http_proxy": "x",
        "NO_PROXY": "y",
        "HTTPS_PROXY": "z",
        "PORT": "8080",
    }
    assert transparent_environment(env) == {"PORT": "8080"}
