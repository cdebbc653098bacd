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


def test_unsubscribing_a_name_under_a_wildcard_sends_it_again() -> None:
    # Envoy holds such a resource as "ambiguous" until the server says whether the wildcard
    # still covers it: by sending it again, or by removing it.
    stream = DeltaStream()
    stream.receive(SnapshotChanged(BASE))
    first = only_response(stream.receive(DeltaRequestReceived(CDS, subscribe=("*", "a"))))
    stream.receive(DeltaRequestReceived(CDS, response_nonce=first.nonce))
    again = only_response(stream.receive(DeltaRequestReceived(CDS, unsubscribe=("a",))))
    assert (held(again), again.removed) == ({"a": "1"}, ())


def test_unsubscribing_a_name_gone_from_a_wildcard_removes_it() -> None:
    stream = DeltaStream()
    request = DeltaRequestReceived(
        CDS, subscribe=("*", "a"), initial_resource_versions={"a": "1", "b": "1"}
    )
    assert stream.receive(request) == []
    stream.receive(DeltaRequestReceived(CDS, unsubscribe=("a",)))
    only_b = snapshot({CDS: {"b": "1"}, EDS: {"b": "1"}})
    answer = only_response(stream.receive(SnapshotChanged(only_b)))
    assert (held(answer), answer.removed) == ({}, ("a",))


def test_explicit_names_outlive_the_wildcard() -> None:
    stream = DeltaStream()
    stream.receive(SnapshotChanged(BASE))
    first = only_response(stream.receive(DeltaRequestReceived(CDS)))
    assert held(first) == {"a": "1", "b": "1"}
    assert stream.receive(DeltaRequestReceived(CDS, subscribe=("a",))) == []
    narrowed = only_response(stream.receive(DeltaRequestReceived(CDS, unsubscribe=("*",))))
    assert (held(narrowed), narrowed.removed) == ({}, ("b",))


def test_nack_of_a_nonce_never_sent_is_ignored() -> None:
    stream = DeltaStream()
    stream.receive(SnapshotChanged(BASE))
    sent = only_response(stream.receive(DeltaRequestReceived(CDS)))
    stream.receive(DeltaRequestReceived(CDS, response_nonce=sent.nonce))
    for nonce in ("999", "not-a-number"):
        nack = DeltaRequestReceived(CDS, response_nonce=nonce, error_message="bogus")
        assert stream.receive(nack) == []
    [status] = stream.statuses()
    assert (status.status, status.nack_message) == (SyncStatus.SYNCED, None)


NAMES = ("a", "b", "c")
snapshots = st.builds(
    lambda cds, eds: snapshot({CDS: cds, EDS: eds}),
    st.dictionaries(st.sampled_from(NAMES), st.sampled_from("12")),
    st.dictionaries(st.sampled_from(NAMES), st.sampled_from("12")),
)
name_sets = st.frozensets(st.sampled_from((*NAMES, "*")), max_size=3)


class ModelDeltaProxy:
    """An incremental xDS client for one type, written from the spec, not from DeltaStream.

    - A wildcard starts with "*" in ``resource_names_subscribe``, or (legacy, CDS and LDS
      only) with a first request that subscribes to nothing; only unsubscribing "*" ends it.
    - Other names are added to or removed from the explicit subscription.
    - Unsubscribing a name outside a wildcard drops the resource (the server owes no removal).
      Under a wildcard it becomes ambiguous, as Envoy keeps it: the server must send it again
      (still covered) or remove it.
    - Unsubscribing "*" keeps what it holds until the server removes it (a cautious client;
      Envoy drops it, and a removal of what it dropped is harmless).
    """

    def __init__(self, type_url: str) -> None:
        self.type_url = type_url
        self.started = False
        self.wildcard = False
        self.explicit: set[str] = set()
        self.held: dict[str, str] = {}
        self.ambiguous: dict[str, str] = {}

    def sent(self, request: DeltaRequestReceived) -> None:
        if not self.started:
            self.started = True
            self.wildcard = not request.subscribe and self.type_url in (CDS, LDS)
        for name in request.subscribe:
            if name == "*":
                self.wildcard = True
            else:
                self.explicit.add(name)
                if name in self.ambiguous:
                    self.held[name] = self.ambiguous.pop(name)
        for name in request.unsubscribe:
            if name == "*":
                self.wildcard = False
                continue
            self.explicit.discard(name)
            if name in self.held:
                if self.wildcard:
                    self.ambiguous[name] = self.held.pop(name)
                else:
                    del self.held[name]

    def apply(self, response: SendResponse, forced: frozenset[str]) -> None:
        for resource in response.resources:
            assert self.wildcard or resource.name in self.explicit, "not subscribed"
            if resource.name not in forced:
                assert self.held.get(resource.name) != resource.version, "already held"
            self.ambiguous.pop(resource.name, None)
            self.held[resource.name] = resource.version
        for name in response.removed:
            assert name in self.held or name in self.ambiguous, "removal of what is not held"
            self.held.pop(name, None)
            self.ambiguous.pop(name, None)

    def wanted(self, current: Snapshot) -> dict[str, str]:
        available = current.of_type(self.type_url)
        names = set(available) if self.wildcard else self.explicit & set(available)
        return {name: available[name].version for name in names}


@settings(max_examples=300, deadline=None)
@given(st.data())
def test_invariants_over_event_sequences(data: st.DataObject) -> None:
    """A model proxy applies every response; it must never receive what it already holds (but
    for load assignments of changed clusters and resources it holds as ambiguous), nor what it
    did not subscribe to, and after every event it must hold exactly what it wants."""
    stream = DeltaStream()
    proxies: dict[str, ModelDeltaProxy] = {}
    current: Snapshot | None = None
    sent_nonces: list[str] = []
    for _ in range(data.draw(st.integers(1, 25))):
        type_url = data.draw(st.sampled_from((CDS, EDS)))
        nonce = data.draw(st.sampled_from(["", *sent_nonces]))
        subscribe = data.draw(name_sets)
        # Envoy never subscribes and unsubscribes a name in one request; the spec is silent.
        unsubscribe = data.draw(name_sets) - subscribe
        event: SnapshotChanged | DeltaRequestReceived = data.draw(
            st.one_of(
                snapshots.map(SnapshotChanged),
                st.builds(
                    DeltaRequestReceived,
                    type_url=st.just(type_url),
                    subscribe=st.permutations(sorted(subscribe)).map(tuple),
                    unsubscribe=st.permutations(sorted(unsubscribe)).map(tuple),
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
            proxies.setdefault(event.type_url, ModelDeltaProxy(event.type_url)).sent(event)

        for response in responses(stream.receive(event)):
            assert response.nonce not in sent_nonces
            sent_nonces.append(response.nonce)
            proxies[response.type_url].apply(
                response, forced if response.type_url == EDS else frozenset()
            )

        if current is not None:
            for proxy in proxies.values():
                assert proxy.ambiguous == {}
                assert proxy.held == proxy.wanted(current)
