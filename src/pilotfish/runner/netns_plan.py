"""Transparent interception, planned: names, addresses, commands, iptables rules, hosts files.

Pure (``runner/netns.py`` runs what this says). The layout, for ``pilotfish up`` with pid P
and the /24 ``S`` chosen from ``ADDRESS_POOL``::

    root namespace          pfPh  S.1/24  (the one address and the one route it gets)
       |  veth
    pfP-hub namespace       up0 -- br0 (a bridge) -- r0, r1, ...
                                                     |  veth
    pfP-0, pfP-1, ...       eth0  S.2, S.3, ...  default route via S.1

Replicas reach each other over the bridge and the root namespace over its one veth, so the
root namespace's FORWARD chain (which Docker sets to DROP) is never on the path. Inside each
replica's fresh namespace nothing else listens, so the fixed ports of Istio (15001 outbound,
15006 inbound, 15000 admin) cannot collide with anything.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass

from pilotfish.model.resources import CLUSTER_DOMAIN
from pilotfish.model.service_addresses import ServiceAddress
from pilotfish.model.services import Service

ENVOY_UID = 1337
"""The sidecar's own uid (Istio's): its connections are the ones iptables lets through."""
OUTBOUND_CAPTURE_PORT = 15001
INBOUND_CAPTURE_PORT = 15006
ENVOY_ADMIN_PORT = 15000
ADDRESS_POOL = ipaddress.IPv4Network("10.250.0.0/16")
"""Each ``up`` takes the first /24 of it that no route of the root namespace overlaps (so
several meshes, and a host network in 10.250.x, can coexist)."""
SUBNET_PREFIX = 24
MAX_REPLICAS = 2 ** (32 - SUBNET_PREFIX) - 3  # less network, broadcast and the root end

_PREFIX = "pf"
_HUB_BRIDGE = "br0"
_HUB_UPLINK = "up0"
_REPLICA_LINK = "eth0"
_NAME = re.compile(rf"^{_PREFIX}(\d+)(?:-(?:hub|\d+)|h)$")


@dataclass(frozen=True)
class Command:
    argv: tuple[str, ...]
    stdin: str | None = None


def _ip(*args: str) -> Command:
    return Command(("ip", *args))


def choose_subnet(
    routes: Iterable[ipaddress.IPv4Network], pool: ipaddress.IPv4Network = ADDRESS_POOL
) -> ipaddress.IPv4Network:
    """The first /24 of ``pool`` that overlaps none of ``routes`` (default routes aside)."""
    used = [route for route in routes if route.prefixlen > 0]
    for subnet in pool.subnets(new_prefix=SUBNET_PREFIX):
        if not any(subnet.overlaps(route) for route in used):
            return subnet
    raise ValueError(f"every /{SUBNET_PREFIX} of {pool} is already routed on this host")


def namespace_owner(name: str) -> int | None:
    """The pid of the ``up`` that made a namespace or link of ours; None if not ours."""
    match = _NAME.match(name)
    return int(match.group(1)) if match else None


@dataclass(frozen=True)
class HostNetwork:
    """What one ``up`` adds to the root namespace: the hub namespace and its veth."""

    pid: int
    subnet: ipaddress.IPv4Network

    @property
    def hub(self) -> str:
        return f"{_PREFIX}{self.pid}-hub"

    @property
    def root_link(self) -> str:
        return f"{_PREFIX}{self.pid}h"

    @property
    def host_address(self) -> str:
        """The root namespace's end: where the Envoys find the control plane."""
        return str(self.subnet.network_address + 1)

    def setup(self) -> tuple[Command, ...]:
        hub = self.hub
        return (
            _ip("netns", "add", hub),
            _ip("-n", hub, "link", "set", "lo", "up"),
            _ip("-n", hub, "link", "add", _HUB_BRIDGE, "type", "bridge"),
            _ip("-n", hub, "link", "set", _HUB_BRIDGE, "up"),
            _ip(
                "link",
                "add",
                self.root_link,
                "type",
                "veth",
                "peer",
                "name",
                _HUB_UPLINK,
                "netns",
                hub,
            ),
            _ip("-n", hub, "link", "set", _HUB_UPLINK, "master", _HUB_BRIDGE, "up"),
            _ip("addr", "add", f"{self.host_address}/{SUBNET_PREFIX}", "dev", self.root_link),
            _ip("link", "set", self.root_link, "up"),
        )

    def replica(self, slot: int) -> ReplicaNetwork:
        if not 0 <= slot < MAX_REPLICAS:
            raise ValueError(f"a mesh holds at most {MAX_REPLICAS} replicas in transparent mode")
        return ReplicaNetwork(self, slot)


@dataclass(frozen=True)
class ReplicaNetwork:
    host: HostNetwork
    slot: int

    @property
    def namespace(self) -> str:
        return f"{_PREFIX}{self.host.pid}-{self.slot}"

    @property
    def address(self) -> str:
        return str(self.host.subnet.network_address + 2 + self.slot)

    @property
    def hub_link(self) -> str:
        return f"r{self.slot}"

    def setup(self, app_port: int) -> tuple[Command, ...]:
        ns, hub = self.namespace, self.host.hub
        return (
            _ip("netns", "add", ns),
            _ip("-n", ns, "link", "set", "lo", "up"),
            _ip(
                "-n",
                hub,
                "link",
                "add",
                self.hub_link,
                "type",
                "veth",
                "peer",
                "name",
                _REPLICA_LINK,
                "netns",
                ns,
            ),
            _ip("-n", hub, "link", "set", self.hub_link, "master", _HUB_BRIDGE, "up"),
            _ip("-n", ns, "addr", "add", f"{self.address}/{SUBNET_PREFIX}", "dev", _REPLICA_LINK),
            _ip("-n", ns, "link", "set", _REPLICA_LINK, "up"),
            _ip("-n", ns, "route", "add", "default", "via", self.host.host_address),
            Command(("ip", "netns", "exec", ns, "iptables-restore"), capture_rules(self, app_port)),
        )

    def in_namespace(self, argv: Sequence[str]) -> tuple[str, ...]:
        return ("ip", "netns", "exec", self.namespace, *argv)

    def as_sidecar(self, argv: Sequence[str]) -> tuple[str, ...]:
        """``argv`` in the namespace as ``ENVOY_UID``; the kernel kills it when ``up`` dies
        (``--pdeathsig``: changing uid clears the death signal the runner set)."""
        uid = str(ENVOY_UID)
        return self.in_namespace(
            (
                "setpriv",
                f"--reuid={uid}",
                f"--regid={uid}",
                "--clear-groups",
                "--pdeathsig",
                "KILL",
                *argv,
            )
        )


def capture_rules(replica: ReplicaNetwork, app_port: int) -> str:
    """The nat table of a replica's namespace, for ``iptables-restore``.

    Inbound: TCP for the app's port goes to the sidecar's inbound listener. Outbound: every
    TCP connection that is not the sidecar's own (uid 1337) nor to loopback goes to its
    outbound listener. The sidecar's own connection to its replica's address and app port
    (a replica calling its own service) goes to the inbound listener too, as it would have
    from another replica, or it would reach the app still in TLS.
    """
    uid, app = str(ENVOY_UID), str(app_port)
    inbound = f"{replica.address}:{INBOUND_CAPTURE_PORT}"
    lines = [
        "*nat",
        ":PREROUTING ACCEPT [0:0]",
        ":INPUT ACCEPT [0:0]",
        ":OUTPUT ACCEPT [0:0]",
        ":POSTROUTING ACCEPT [0:0]",
        f"-A PREROUTING -p tcp --dport {app} -j REDIRECT --to-ports {INBOUND_CAPTURE_PORT}",
        f"-A OUTPUT -p tcp -d {replica.address}/32 --dport {app} -m owner --uid-owner {uid}"
        f" -j DNAT --to-destination {inbound}",
        f"-A OUTPUT -p tcp -m owner --uid-owner {uid} -j RETURN",
        "-A OUTPUT -p tcp -d 127.0.0.0/8 -j RETURN",
        f"-A OUTPUT -p tcp -j REDIRECT --to-ports {OUTBOUND_CAPTURE_PORT}",
        "COMMIT",
    ]
    return "\n".join(lines) + "\n"


def replica_teardown(namespace: str, pids: Iterable[int]) -> tuple[Command, ...]:
    """Kill what still runs inside (a namespace with a process lives on), then delete it:
    its veth goes with it."""
    kill = tuple(Command(("kill", "-KILL", str(pid))) for pid in sorted(pids))
    return (*kill, _ip("netns", "delete", namespace))


def leftovers(
    namespaces: Iterable[str], links: Iterable[str], is_alive: Callable[[int], bool]
) -> tuple[list[str], list[str]]:
    """The namespaces and root links of ours whose ``up`` is gone (killed before it could
    clean, and its reaper too), to delete."""
    dead_namespaces = [n for n in namespaces if _is_dead(n, is_alive)]
    dead_links = [link for link in links if _is_dead(link, is_alive)]
    # Replicas before the hub, so the bridge's ports go before the bridge.
    dead_namespaces.sort(key=lambda name: name.endswith("-hub"))
    return dead_namespaces, dead_links


def _is_dead(name: str, is_alive: Callable[[int], bool]) -> bool:
    owner = namespace_owner(name)
    return owner is not None and not is_alive(owner)


def owned_by(pid: int, names: Iterable[str]) -> list[str]:
    return [name for name in names if namespace_owner(name) == pid]


def hosts_file(
    namespace: str, services: Mapping[str, Service], addresses: Mapping[str, ServiceAddress]
) -> str:
    """``/etc/hosts`` of a replica in mesh ``namespace``: loopback, then each service's
    qualified name, ``name.namespace`` and ``name.namespace.svc``, and its short name for
    services of the replica's own namespace (as a Kubernetes pod's search path resolves them).
    """
    lines = ["127.0.0.1\tlocalhost", "::1\tlocalhost ip6-localhost ip6-loopback"]
    for hostname in sorted(services):
        service = services[hostname]
        address = addresses.get(hostname)
        if address is None or address.address is None:
            continue
        names = [hostname]
        if service.short_name and service.namespace == namespace and "." not in service.short_name:
            names.append(service.short_name)
        in_namespace = f"{service.short_name}.{service.namespace}"
        if service.short_name and hostname == f"{in_namespace}.{CLUSTER_DOMAIN}":
            names.extend([in_namespace, f"{in_namespace}.svc"])
        lines.append(f"{address.address}\t{' '.join(names)}")
    return "\n".join(lines) + "\n"


def hosts_path(namespace: str) -> str:
    """iproute2 bind-mounts ``/etc/netns/NS/hosts`` over ``/etc/hosts`` for ``ip netns exec``."""
    return f"/etc/netns/{namespace}/hosts"


_EXPLICIT_PROXY_VARIABLES = (
    "HTTP_PROXY",
    "http_proxy",
    "HTTPS_PROXY",
    "https_proxy",
    "NO_PROXY",
    "no_proxy",
    "ALL_PROXY",
    "all_proxy",
)


def transparent_environment(environment: Mapping[str, str]) -> dict[str, str]:
    """The explicit mode's environment without its proxy variables: under interception the
    app connects where it means to, and iptables takes the connection to the sidecar (an
    app that sent to the outbound listener as a proxy would loop)."""
    return {k: v for k, v in environment.items() if k not in _EXPLICIT_PROXY_VARIABLES}
