"""The Delta fast path (diffed_against + Snapshot.changed_names) must answer exactly as a full
diff would, over layered snapshots built the way the snapshot cache builds them."""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType

from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.endpoint.v3 import endpoint_pb2
from envoy.config.listener.v3 import listener_pb2
from envoy.config.route.v3 import route_pb2
from hypothesis import given, settings
from hypothesis import strategies as st

from pilotfish.snapshot import (
    ChangeMemo,
    Layer,
    PackingCache,
    Resource,
    Snapshot,
    check_consistency,
    layered_snapshot,
    make_layer,
    make_snapshot,
    type_urls,
)
from pilotfish.xds import DeltaRequestReceived, DeltaStream, SendResponse, SnapshotChanged
from pilotfish.xds.protocol import Action

CDS, EDS, LDS, RDS = type_urls.CLUSTER, type_urls.ENDPOINT, type_urls.LISTENER, type_urls.ROUTE
TYPES = (CDS, EDS, LDS, RDS)
NAMES = ("a", "b", "c", "d")


def message(type_url: str, name: str, version: int):  # type: ignore[no-untyped-def]
    if type_url == CDS:
        cluster = cluster_pb2.Cluster(name=name, type=cluster_pb2.Cluster.EDS)
        cluster.connect_timeout.seconds = version
        return cluster
    if type_url == EDS:
        cla = endpoint_pb2.ClusterLoadAssignment(cluster_name=name)
        cla.endpoints.add().load_balancing_weight.value = version
        return cla
    if type_url == LDS:
        return listener_pb2.Listener(name=name, stat_prefix=str(version))
    return route_pb2.RouteConfiguration(name=name, request_headers_to_remove=[str(version)])


class Layers:
    """Layers as the cache makes them: an unchanged part is usually the very same mapping
    object (the cache reuses it), and one change memo serves every snapshot."""

    def __init__(self) -> None:
        self.packing = PackingCache()
        self.memo = ChangeMemo()
        self._known: dict[tuple[str, tuple[tuple[str, int], ...]], Mapping[str, Resource]] = {}

    def mapping(self, type_url: str, spec: dict[str, int], fresh: bool) -> Mapping[str, Resource]:
        key = (type_url, tuple(sorted(spec.items())))
        if fresh or key not in self._known:
            self._known[key] = MappingProxyType(
                {n: self.packing.pack(type_url, message(type_url, n, v)) for n, v in key[1]}
            )
        return self._known[key]

    def layer(self, spec, fresh: bool) -> Layer:  # type: ignore[no-untyped-def]
        return make_layer({t: self.mapping(t, spec[t], fresh) for t in TYPES})


layer = st.fixed_dictionaries(
    {t: st.dictionaries(st.sampled_from(NAMES), st.integers(1, 2), max_size=3) for t in TYPES}
)


def build(layers: Layers, shared_spec, own_specs, fresh: bool):  # type: ignore[no-untyped-def]
    shared = layers.layer(shared_spec, fresh)
    return [layered_snapshot(shared, layers.layer(own, fresh), layers.memo) for own in own_specs]


def build_plain(shared_spec, own_spec) -> Snapshot:  # type: ignore[no-untyped-def]
    by_type = {
        t: [
            message(t, n, v) for spec in (shared_spec, own_spec) for n, v in sorted(spec[t].items())
        ]
        for t in TYPES
    }
    return make_snapshot(by_type)


class FullDiffStream(DeltaStream):
    """Reference: forget what the last diff was against, so every diff is a full one."""

    def _diff(self, state, snapshot, forced):  # type: ignore[no-untyped-def]
        state.diffed_against = None
        return super()._diff(state, snapshot, forced)


def summary(actions: list[Action]) -> list[object]:
    out: list[object] = []
    for a in actions:
        if isinstance(a, SendResponse):
            out.append(
                (
                    a.type_url,
                    a.version,
                    a.nonce,
                    [(r.name, r.version) for r in a.resources],
                    a.removed,
                )
            )
        else:
            out.append(a)
    return out


names = st.frozensets(st.sampled_from((*NAMES, "*")), max_size=3)


@settings(max_examples=400, deadline=None)
@given(st.data())
def test_fast_path_answers_as_a_full_diff(data: st.DataObject) -> None:
    layers = Layers()
    built: list[Snapshot] = []
    fast, full = DeltaStream(), FullDiffStream()
    nonces: list[str] = []
    for _ in range(data.draw(st.integers(1, 30), label="steps")):
        kind = data.draw(st.sampled_from(["gen", "gen", "old", "req", "req", "req", "reconnect"]))
        if kind == "gen" or (kind == "old" and not built):
            shared = data.draw(layer)
            own = data.draw(st.lists(layer, min_size=1, max_size=2))
            fresh = data.draw(st.booleans())
            snaps = build(layers, shared, own, fresh)
            built.extend(snaps)
            event: object = SnapshotChanged(data.draw(st.sampled_from(snaps)))
        elif kind == "old":
            event = SnapshotChanged(data.draw(st.sampled_from(built)))  # last good / other proxy
        elif kind == "reconnect":
            fast, full = DeltaStream(), FullDiffStream()
            nonces = []
            continue
        else:
            type_url = data.draw(st.sampled_from(TYPES))
            subscribe = data.draw(names)
            unsubscribe = data.draw(names) - subscribe
            first = type_url not in fast._types
            initial: dict[str, str] = {}
            if first:
                initial = data.draw(
                    st.dictionaries(st.sampled_from(NAMES), st.sampled_from(["x", "v1", "v2"]))
                )
                if built and data.draw(st.booleans()):
                    # Versions the proxy really may hold.
                    snap = data.draw(st.sampled_from(built))
                    for n, r in snap.of_type(type_url).items():
                        if data.draw(st.booleans()):
                            initial[n] = r.version
            event = DeltaRequestReceived(
                type_url,
                subscribe=tuple(sorted(subscribe)),
                unsubscribe=tuple(sorted(unsubscribe)),
                initial_resource_versions=initial,
                response_nonce=data.draw(st.sampled_from(["", "999", *nonces])),
                error_message=data.draw(st.one_of(st.none(), st.just("bad"))),
            )
        got, want = fast.receive(event), full.receive(event)  # type: ignore[arg-type]
        assert summary(got) == summary(want), event
        assert fast.statuses() == full.statuses()
        for t in TYPES:
            assert fast.client_versions(t) == full.client_versions(t)
        nonces.extend(a.nonce for a in got if isinstance(a, SendResponse))


@settings(max_examples=300, deadline=None)
@given(layer, layer, st.booleans())
def test_layered_snapshot_equals_plain(shared_spec, own_spec, fresh) -> None:  # type: ignore[no-untyped-def]
    (layered,) = build(Layers(), shared_spec, [own_spec], fresh)
    plain = build_plain(shared_spec, own_spec)
    for t in TYPES:
        assert {n: r.version for n, r in layered.of_type(t).items()} == {
            n: r.version for n, r in plain.of_type(t).items()
        }
        assert layered.type_version(t) == plain.type_version(t)
    # Same set of problems (with a name in both layers the layered check reports the shadowed
    # shared resource's dangling references too; the snapshot is rejected as a duplicate anyway).
    assert set(check_consistency(layered)) == set(check_consistency(plain))
    if not any(set(shared_spec[t]) & set(own_spec[t]) for t in TYPES):
        assert sorted(check_consistency(layered)) == sorted(check_consistency(plain))
