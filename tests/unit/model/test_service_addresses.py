"""Each service's virtual address: a ServiceEntry's own, else a stable one from its name."""

from __future__ import annotations

import ipaddress

from pilotfish.model.diagnostics import SourceMap
from pilotfish.model.resources import MeshConfig, Meta, ServiceEntry, ServicePort
from pilotfish.model.service_addresses import (
    AUTO_ALLOCATE_RANGE,
    auto_address,
    service_addresses,
)
from pilotfish.model.services import MeshView, Service

PORT = ServicePort(8080, "http")


def _view(*hostnames: str, entries: tuple[ServiceEntry, ...] = ()) -> MeshView:
    services = {h: Service(hostname=h, ports=(PORT,)) for h in hostnames}
    return MeshView(MeshConfig(service_entries=entries), services, {})


def _entry(host: str, *addresses: str) -> ServiceEntry:
    meta = Meta(kind="ServiceEntry", name=host, namespace="default", source=SourceMap("se.yaml"))
    return ServiceEntry(meta=meta, hosts=(host,), ports=(PORT,), addresses=addresses)


def test_allocated_addresses_are_stable_distinct_and_in_the_range() -> None:
    names = [f"s{i}.default.svc.cluster.local" for i in range(300)]
    first = service_addresses(_view(*names))
    again = service_addresses(_view(*reversed(names), "extra.default.svc.cluster.local"))
    chosen = [first[n].address for n in names]
    assert chosen == [again[n].address for n in names]
    assert len(set(chosen)) == len(names)
    for address in chosen:
        assert address is not None
        assert ipaddress.IPv4Address(address) in AUTO_ALLOCATE_RANGE
        assert address not in ("240.240.0.0", "240.240.255.255")


def test_an_allocated_address_never_takes_a_declared_one() -> None:
    view = _view(
        "a.example.com", entries=(_entry("a.example.com", str(auto_address("b.example.com"))),)
    )
    both = service_addresses(
        MeshView(
            view.config, {**view.services, "b.example.com": Service("b.example.com", (PORT,))}, {}
        )
    )
    taken = auto_address("b.example.com")
    assert both["a.example.com"].address == str(taken)
    assert both["b.example.com"].address == str(taken + 1)


def test_a_service_entry_keeps_its_own_address_and_a_range_is_matched_whole() -> None:
    entries = (
        _entry("single.example.com", "192.0.2.10"),
        _entry("block.example.com", "198.51.100.0/24"),
    )
    found = service_addresses(_view("single.example.com", "block.example.com", entries=entries))
    assert found["single.example.com"].address == "192.0.2.10"
    assert found["block.example.com"].address is None
    assert found["block.example.com"].networks == (ipaddress.IPv4Network("198.51.100.0/24"),)
