from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st
from xds_fakes import CDS, EDS, LDS, snapshot

from pilotfish.snapshot import Snapshot
from pilotfish.xds import (
    DeltaRequestReceived,
    DeltaStream,
    NackReceived,
    SendResponse,
    SnapshotChanged,
    SyncStatus,
)
from pilotfish.xds.protocol import Action, load_assignments_to_resend

BASE = snapshot({CDS: {"a": "1", "b": "1"}, EDS: {"a": "1", "b": "1"}, LDS: {"http": "1"}})


def responses(actions: list[Action]) -> list[SendResponse]:
    return [a for a in actions if isinstance(a, SendResponse)]


def only_response(actions: list[Action]) -> SendResponse:
    [response] = responses(actions)
    return response


def held(response: SendResponse) -> dict[str, str]:
    return {r.name: r.version for r in response.resources}


def test_wildcard_then_only_changes_and_removals() -> None:
    stream = DeltaStream()
    stream.receive(SnapshotChanged(BASE))
    first = only_response(stream.receive(DeltaRequestReceived(CDS)))
    assert held(first) == {"a": "1", "b": "1"}
    stream.receive(DeltaRequestReceived(CDS, response_nonce=first.nonce))
    changed = snapshot({CDS: {"a": "2", "c": "1"}, EDS: {"a": "1", "c": "1"}})
    second = only_response(stream.receive(SnapshotChanged(changed)))
    assert held(second) == {"a": "2", "c": "1"}
    assert second.removed == ("b",)


def test_explicit_subscription_and_unsubscribe() -> None:
    stream = DeltaStream()
    stream.receive(SnapshotChanged(BASE))
    assert responses(stream.receive(DeltaRequestReceived(EDS))) == []
    first = only_response(stream.receive(DeltaRequestReceived(EDS, subscribe=("a",))))
    assert held(first) == {"a": "1"}
    assert stream.receive(DeltaRequestReceived(EDS, unsubscribe=("a",))) == []
    assert stream.client_versions(EDS) == {}


def test_star_subscribes_to_everything_for_any_type() -> None:
    stream = DeltaStream()
    stream.receive(SnapshotChanged(BASE))
    response = only_response(stream.receive(DeltaRequestReceived(EDS, subscribe=("*",))))
    assert held(response) == {"a": "1", "b": "1"}


def test_ack_and_nack_are_matched_by_nonce_and_never_resend() -> None:
    stream = DeltaStream()
    stream.receive(SnapshotChanged(BASE))
    sent = only_response(stream.receive(DeltaRequestReceived(CDS)))
    assert stream.receive(DeltaRequestReceived(CDS, response_nonce=sent.nonce)) == []
    [status] = stream.statuses()
    assert status.status is SyncStatus.SYNCED
    assert status.acked_version == sent.version
    bad = snapshot({CDS: {"a": "9", "b": "1"}, EDS: {"a": "1", "b": "1"}})
    rejected = only_response(stream.receive(SnapshotChanged(bad)))
    nack = DeltaRequestReceived(CDS, response_nonce=rejected.nonce, error_message="no")
    assert stream.receive(nack) == [NackReceived(CDS, rejected.version, "no")]
    [status] = stream.statuses()
    assert (status.status, status.acked_version) == (SyncStatus.NACKED, sent.version)


def test_reconnect_sends_only_what_the_proxy_lacks() -> None:
    stream = DeltaStream()
    stream.receive(SnapshotChanged(BASE))
    request = DeltaRequestReceived(CDS, initial_resource_versions={"a": "1", "b": "0", "gone": "1"})
    response = only_response(stream.receive(request))
    assert held(response) == {"b": "1"}
    assert response.removed == ("gone",)


def test_reconnect_with_everything_current_is_synced_without_a_response() -> None:
    stream = DeltaStream()
    stream.receive(SnapshotChanged(BASE))
    request = DeltaRequestReceived(CDS, initial_resource_versions={"a": "1", "b": "1"})
    assert stream.receive(request) == []
    assert stream.statuses()[0].status is SyncStatus.SYNCED


def test_changed_cluster_resends_its_unchanged_load_assignment() -> None:
    stream = DeltaStream()
    stream.receive(SnapshotChanged(BASE))
    stream.receive(DeltaRequestReceived(CDS))
    stream.receive(DeltaRequestReceived(EDS, subscribe=("a", "b")))
    changed = snapshot({CDS: {"a": "2", "b": "1"}, EDS: {"a": "1", "b": "1"}})
    cds, eds = responses(stream.receive(SnapshotChanged(changed)))
    assert (cds.type_url, held(cds)) == (CDS, {"a": "2"})
    assert (eds.type_url, held(eds)) == (EDS, {"a": "1"})


def test_subscription_in_a_request_with_unknown_nonce_is_honoured() -> None:
    stream = DeltaStream()
    stream.receive(SnapshotChanged(BASE))
    request = DeltaRequestReceived(EDS, subscribe=("b",), response_nonce="12345")
    assert held(only_response(stream.receive(request))) == {"b": "1"}


NAMES = ("a", "b", "c")
snapshots = st.builds(
    lambda cds, eds: snapshot({CDS: cds, EDS: eds}),
    st.dictionaries(st.sampled_from(NAMES), st.sampled_from("12")),
    st.dictionaries(st.sampled_from(NAMES), st.sampled_from("12")),
)
name_lists = st.lists(st.sampled_from((*NAMES, "*")), unique=True, max_size=3).map(tuple)


@settings(max_examples=200, deadline=None)
@given(st.data())
def test_invariants_over_event_sequences(data: st.DataObject) -> None:
    """A model proxy applies every response; it must never receive what it already holds
    (but for load assignments of changed clusters) and must end up holding what it wants."""
    stream = DeltaStream()
    proxy: dict[str, dict[str, str]] = {}
    wildcard: dict[str, bool] = {}
    names: dict[str, set[str]] = {}
    current: Snapshot | None = None
    sent_nonces: list[str] = []
    for _ in range(data.draw(st.integers(1, 25))):
        type_url = data.draw(st.sampled_from((CDS, EDS)))
        nonce = data.draw(st.sampled_from(["", *sent_nonces]))
        event: SnapshotChanged | DeltaRequestReceived = data.draw(
            st.one_of(
                snapshots.map(SnapshotChanged),
                st.builds(
                    DeltaRequestReceived,
                    type_url=st.just(type_url),
                    subscribe=name_lists,
                    unsubscribe=name_lists,
                    response_nonce=st.just(nonce),
                    error_message=st.one_of(st.none(), st.just("rejected")),
                ),
            )
        )
        forced: frozenset[str] = frozenset()
        if isinstance(event, SnapshotChanged):
            forced = load_assignments_to_resend(current, event.snapshot)
            current = event.snapshot
        else:
            first = event.type_url not in proxy
            proxy.setdefault(event.type_url, {})
            if first:
                wildcard[event.type_url] = not event.subscribe and event.type_url == CDS
                names[event.type_url] = set()
            for name in event.subscribe:
                if name == "*":
                    wildcard[event.type_url] = True
                else:
                    names[event.type_url].add(name)
            for name in event.unsubscribe:
                if name == "*":
                    wildcard[event.type_url] = False
                    continue
                names[event.type_url].discard(name)
                if not wildcard[event.type_url]:
                    proxy[event.type_url].pop(name, None)

        for response in responses(stream.receive(event)):
            assert response.nonce not in sent_nonces
            sent_nonces.append(response.nonce)
            holding = proxy[response.type_url]
            for resource in response.resources:
                if response.type_url != EDS or resource.name not in forced:
                    assert holding.get(resource.name) != resource.version
                holding[resource.name] = resource.version
            for name in response.removed:
                assert name in holding
                del holding[name]

        if current is not None:
            for type_url_held, holding in proxy.items():
                available = current.of_type(type_url_held)
                wanted = (
                    set(available)
                    if wildcard[type_url_held]
                    else names[type_url_held] & set(available)
                )
                assert holding == {n: available[n].version for n in wanted}
