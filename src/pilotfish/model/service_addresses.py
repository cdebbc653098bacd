"""The virtual address of each service under transparent interception.

An app in its own network namespace connects to an IP address, not to a name: each service
needs one that its hosts file names and its sidecar's original-destination listener matches.
A ServiceEntry's own ``addresses`` are used as they are; every other service gets one from
``AUTO_ALLOCATE_RANGE`` (Istio's auto-allocation range, 240.240.0.0/16), derived from its
hostname so that it stays the same across restarts and config edits.

Pure, so the runner (hosts files) and translation (filter chains) cannot disagree.
"""

from __future__ import annotations

import hashlib
import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass

from pilotfish.model.resources import qualify_host
from pilotfish.model.services import MeshView

AUTO_ALLOCATE_RANGE = ipaddress.IPv4Network("240.240.0.0/16")
"""Class E space: never assigned on a network, and Linux routes it (through the default
route) like any other unicast address, so a connect reaches the iptables redirect."""


@dataclass(frozen=True)
class ServiceAddress:
    """``address`` is what the hosts files name; ``networks`` what the listener matches
    (a ServiceEntry's ``addresses`` may be CIDR blocks)."""

    address: str | None
    networks: tuple[ipaddress.IPv4Network, ...]


def service_addresses(view: MeshView) -> Mapping[str, ServiceAddress]:
    """Every service of ``view`` by hostname.

    Auto-allocated addresses start from a hash of the hostname; a collision moves the
    later hostname (in sorted order) to the next free address, so only colliding names
    depend on each other.
    """
    declared = _declared_networks(view)
    taken = {
        int(network.network_address)
        for networks in declared.values()
        for network in networks
        if network.num_addresses == 1
    }
    result: dict[str, ServiceAddress] = {}
    for hostname in sorted(view.services):
        networks = declared.get(hostname, ())
        single = next((n for n in networks if n.num_addresses == 1), None)
        if single is not None:
            result[hostname] = ServiceAddress(str(single.network_address), networks)
        elif networks:
            result[hostname] = ServiceAddress(None, networks)  # a range: no one name for it
        else:
            address = _allocate(hostname, taken)
            taken.add(int(address))
            result[hostname] = ServiceAddress(str(address), (ipaddress.IPv4Network(address),))
    return result


def auto_address(hostname: str) -> ipaddress.IPv4Address:
    """Where allocation for ``hostname`` starts: never the range's first or last address."""
    digest = hashlib.sha256(hostname.encode()).digest()
    usable = AUTO_ALLOCATE_RANGE.num_addresses - 2
    offset = 1 + int.from_bytes(digest[:4], "big") % usable
    return AUTO_ALLOCATE_RANGE.network_address + offset


def _allocate(hostname: str, taken: set[int]) -> ipaddress.IPv4Address:
    first = int(AUTO_ALLOCATE_RANGE.network_address) + 1
    usable = AUTO_ALLOCATE_RANGE.num_addresses - 2
    start = int(auto_address(hostname)) - first
    for step in range(usable):
        candidate = first + (start + step) % usable
        if candidate not in taken:
            return ipaddress.IPv4Address(candidate)
    raise ValueError(f"no free address left in {AUTO_ALLOCATE_RANGE} for {hostname}")


def _declared_networks(view: MeshView) -> dict[str, tuple[ipaddress.IPv4Network, ...]]:
    declared: dict[str, tuple[ipaddress.IPv4Network, ...]] = {}
    for entry in view.config.service_entries:
        networks = []
        for text in entry.addresses:
            try:
                network = ipaddress.ip_network(text, strict=False)
            except ValueError:
                continue  # validation reports it; an unusable one is left to allocation
            if isinstance(network, ipaddress.IPv4Network):
                networks.append(network)
        if not networks:
            continue
        for host in entry.hosts:
            declared.setdefault(qualify_host(host, entry.meta.namespace), tuple(networks))
    return declared
