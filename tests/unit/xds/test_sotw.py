from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st
from xds_fakes import CDS, EDS, LDS, RDS, snapshot

from pilotfish.snapshot import Snapshot, version_of_resources
from pilotfish.xds import (
    NackReceived,
    RequestReceived,
    SendResponse,
    SnapshotChanged,
    SotwStream,
    SyncStatus,
)
from pilotfish.xds.protocol import Action
from pilotfish.xds.sotw import NameSets

BASE = snapshot(
    {
        CDS: {"a": "1", "b": "1"},
        EDS: {"a": "1", "b": "1"},
        LDS: {"http": "1"},
        RDS: {"outbound": "1"},
    }
)


def responses(actions: list[Action]) -> list[SendResponse]:
    return [a for a in actions if isinstance(a, SendResponse)]


def only_response(actions: list[Action]) -> SendResponse:
    [response] = responses(actions)
    return response


def test_no_answer_before_a_snapshot() -> None:
    stream = SotwStream()
    assert stream.receive(RequestReceived(CDS)) == []
    [response] = responses(stream.receive(SnapshotChanged(BASE)))
    assert response.type_url == CDS
    assert [r.name for r in response.resources] == ["a", "b"]


def test_empty_names_are_wildcard_for_cds_and_lds_only() -> None:
    stream = SotwStream()
    stream.receive(SnapshotChanged(BASE))
    assert len(only_response(stream.receive(RequestReceived(LDS))).resources) == 1
    assert responses(stream.receive(RequestReceived(EDS))) == []
    eds = only_response(stream.receive(RequestReceived(EDS, resource_names=("b", "ghost"))))
    assert [r.name for r in eds.resources] == ["b"]


def test_ack_does_not_resend_and_marks_synced() -> None:
    stream = SotwStream()
    stream.receive(SnapshotChanged(BASE))
    sent = only_response(stream.receive(RequestReceived(CDS)))
    assert stream.statuses()[0].status is SyncStatus.STALE
    ack = RequestReceived(CDS, version_info=sent.version, response_nonce=sent.nonce)
    assert stream.receive(ack) == []
    assert stream.statuses()[0].status is SyncStatus.SYNCED


def test_nack_is_reported_not_resent_and_cleared_by_a_later_ack() -> None:
    stream = SotwStream()
    stream.receive(SnapshotChanged(BASE))
    first = only_response(stream.receive(RequestReceived(CDS)))
    stream.receive(RequestReceived(CDS, version_info=first.version, response_nonce=first.nonce))
    changed = snapshot({CDS: {"a": "2", "b": "1"}, EDS: {"a": "1", "b": "1"}})
    second = only_response(stream.receive(SnapshotChanged(changed)))
    nack = RequestReceived(
        CDS, version_info=first.version, response_nonce=second.nonce, error_message="bad cluster"
    )
    assert stream.receive(nack) == [NackReceived(CDS, second.version, "bad cluster")]
    [status] = stream.statuses()
    assert (status.status, status.acked_version, status.nack_message) == (
        SyncStatus.NACKED,
        first.version,
        "bad cluster",
    )
    fixed = snapshot({CDS: {"a": "3", "b": "1"}, EDS: {"a": "1", "b": "1"}})
    third = only_response(stream.receive(SnapshotChanged(fixed)))
    stream.receive(RequestReceived(CDS, version_info=third.version, response_nonce=third.nonce))
    assert stream.statuses()[0].status is SyncStatus.SYNCED


def test_stale_nonce_is_ignored_but_its_subscription_kept() -> None:
    stream = SotwStream()
    stream.receive(SnapshotChanged(BASE))
    first = only_response(stream.receive(RequestReceived(EDS, resource_names=("a",))))
    second_snapshot = snapshot({CDS: {"a": "1"}, EDS: {"a": "2", "b": "1"}})
    second = only_response(stream.receive(SnapshotChanged(second_snapshot)))
    stale = RequestReceived(
        EDS, version_info=first.version, resource_names=("a", "b"), response_nonce=first.nonce
    )
    assert stream.receive(stale) == []
    # The ACK of the newer response carries the grown subscription: now b is sent.
    ack = RequestReceived(
        EDS, version_info=second.version, resource_names=("a", "b"), response_nonce=second.nonce
    )
    grown = only_response(stream.receive(ack))
    assert [r.name for r in grown.resources] == ["a", "b"]


def test_changed_cluster_resends_its_load_assignment_in_push_order() -> None:
    stream = SotwStream()
    stream.receive(SnapshotChanged(BASE))
    cds = only_response(stream.receive(RequestReceived(CDS)))
    eds = only_response(stream.receive(RequestReceived(EDS, resource_names=("a", "b"))))
    stream.receive(RequestReceived(CDS, version_info=cds.version, response_nonce=cds.nonce))
    stream.receive(
        RequestReceived(
            EDS, version_info=eds.version, resource_names=("a", "b"), response_nonce=eds.nonce
        )
    )
    changed = snapshot({CDS: {"a": "2", "b": "1"}, EDS: {"a": "1", "b": "1"}})
    sent = responses(stream.receive(SnapshotChanged(changed)))
    assert [r.type_url for r in sent] == [CDS, EDS]
    assert sent[1].version == eds.version


def test_reconnect_with_current_version_gets_no_answer() -> None:
    stream = SotwStream()
    stream.receive(SnapshotChanged(BASE))
    version = BASE.type_version(CDS)
    assert stream.receive(RequestReceived(CDS, version_info=version)) == []
    assert stream.statuses()[0].status is SyncStatus.SYNCED


def test_eds_names_missing_from_the_snapshot_are_pushed_when_they_appear() -> None:
    stream = SotwStream()
    stream.receive(SnapshotChanged(BASE))
    empty = only_response(stream.receive(RequestReceived(EDS, resource_names=("ghost",))))
    assert empty.resources == ()
    stream.receive(
        RequestReceived(
            EDS, version_info=empty.version, resource_names=("ghost",), response_nonce=empty.nonce
        )
    )
    appeared = snapshot({CDS: {"a": "1"}, EDS: {"a": "1", "ghost": "1"}})
    pushed = only_response(stream.receive(SnapshotChanged(appeared)))
    assert [r.name for r in pushed.resources] == ["ghost"]
    gone = only_response(stream.receive(SnapshotChanged(BASE)))
    assert gone.resources == () and gone.version == empty.version


def test_nack_of_a_nonce_never_sent_is_ignored() -> None:
    stream = SotwStream()
    stream.receive(SnapshotChanged(BASE))
    sent = only_response(stream.receive(RequestReceived(CDS)))
    stream.receive(RequestReceived(CDS, version_info=sent.version, response_nonce=sent.nonce))
    for nonce in ("999", "not-a-number"):
        nack = RequestReceived(
            CDS, version_info=sent.version, response_nonce=nonce, error_message="bogus"
        )
        assert stream.receive(nack) == []
    [status] = stream.statuses()
    assert (status.status, status.nack_message) == (SyncStatus.SYNCED, None)


def test_a_nonce_on_a_type_not_answered_yet_is_a_plain_request() -> None:
    # A client may carry nonces over from a stream to an earlier server; ignoring the request
    # as stale would leave it waiting for an answer that never comes.
    stream = SotwStream()
    stream.receive(SnapshotChanged(BASE))
    request = RequestReceived(CDS, response_nonce="7", error_message="from an old stream")
    response = only_response(stream.receive(request))
    assert [r.name for r in response.resources] == ["a", "b"]
    assert stream.statuses()[0].nack_message is None


def test_empty_list_after_naming_listeners_unsubscribes_instead_of_wildcard() -> None:
    stream = SotwStream()
    stream.receive(SnapshotChanged(snapshot({LDS: {"x": "1", "y": "1"}})))
    named = only_response(stream.receive(RequestReceived(LDS, resource_names=("x",))))
    assert [r.name for r in named.resources] == ["x"]
    dropped = only_response(
        stream.receive(RequestReceived(LDS, version_info=named.version, response_nonce=named.nonce))
    )
    assert dropped.resources == ()
    everything = only_response(
        stream.receive(
            RequestReceived(
                LDS,
                version_info=dropped.version,
                resource_names=("*",),
                response_nonce=dropped.nonce,
            )
        )
    )
    assert [r.name for r in everything.resources] == ["x", "y"]


def test_star_is_a_wildcard_for_eds_too() -> None:
    stream = SotwStream()
    stream.receive(SnapshotChanged(BASE))
    response = only_response(stream.receive(RequestReceived(EDS, resource_names=("*", "a"))))
    assert [r.name for r in response.resources] == ["a", "b"]


NAMES = ("a", "b", "c")
snapshots = st.builds(
    lambda cds, eds: snapshot({CDS: cds, EDS: eds}),
    st.dictionaries(st.sampled_from(NAMES), st.sampled_from("12")),
    st.dictionaries(st.sampled_from(NAMES), st.sampled_from("12")),
)


class ModelProxy:
    """A SotW client as the xDS spec describes it, written without looking at SotwStream.

    It applies every response it receives; its subscription per type is the name list of its
    latest request. It owes a request for a type when it has a response it has not answered,
    or when its last request carried an outdated nonce (the server ignores those, so a real
    client repeats its subscription with the response it has yet to answer).

    Per the spec, an empty list is a wildcard for CDS and LDS only while no request of that
    type on the stream has named anything ("*" included); "*" is a wildcard for any type.
    A response of CDS or LDS replaces all the proxy holds of its type; one of another type
    (EDS here) updates the resources it carries and leaves the others as they are, and the
    proxy drops what it unsubscribes from.
    """

    def __init__(self) -> None:
        self.names: dict[str, tuple[str, ...]] = {}
        self.named_before: dict[str, bool] = {}
        self.held: dict[str, dict[str, str]] = {}
        self.latest: dict[str, SendResponse] = {}
        self.owes_request: set[str] = set()

    def sent(self, request: RequestReceived) -> None:
        self.names[request.type_url] = request.resource_names
        named = self.named_before.get(request.type_url, False) or bool(request.resource_names)
        self.named_before[request.type_url] = named
        latest = self.latest.get(request.type_url)
        if latest is None or request.response_nonce == latest.nonce:
            self.owes_request.discard(request.type_url)
        elif request.response_nonce:
            self.owes_request.add(request.type_url)

    def apply(self, response: SendResponse) -> None:
        type_url = response.type_url
        self.latest[type_url] = response
        carried = {r.name: r.version for r in response.resources}
        if type_url in (CDS, LDS):
            self.held[type_url] = carried
        else:
            names = self.names.get(type_url, ())
            kept = {n: v for n, v in self.held.get(type_url, {}).items() if n in names}
            self.held[type_url] = kept | carried
        self.owes_request.add(type_url)

    def holds(self, type_url: str, wanted: dict[str, str]) -> dict[str, str]:
        """What the proxy holds of ``type_url``; of EDS, only the names it wants (one the
        server removed stays held: SotW cannot say so for EDS, the cluster's removal does)."""
        held = self.held.get(type_url, {})
        if type_url in (CDS, LDS):
            return held
        return {n: v for n, v in held.items() if n in wanted}

    def wanted(self, type_url: str, current: Snapshot) -> dict[str, str]:
        available = current.of_type(type_url)
        names = self.names[type_url]
        legacy_wildcard = not self.named_before[type_url] and type_url in (CDS, LDS)
        wildcard = "*" in names or legacy_wildcard
        chosen = set(available) if wildcard else set(names) & set(available)
        return {name: available[name].version for name in chosen}

    def ack_latest(self, type_url: str) -> RequestReceived:
        """An ACK of the latest response, carrying the current subscription."""
        latest = self.latest[type_url]
        request = RequestReceived(
            type_url,
            version_info=latest.version,
            resource_names=self.names[type_url],
            response_nonce=latest.nonce,
        )
        self.sent(request)
        return request


def assert_proxy_caught_up(stream: SotwStream, proxy: ModelProxy) -> None:
    """Liveness: once the proxy has sent every request it owes (and nothing more: a stream that
    fails to push a change must not be rescued by extra requests), it holds what it wants of
    the last snapshot."""
    for _ in range(5):
        answers = [
            response
            for type_url in sorted(proxy.owes_request)
            for response in responses(stream.receive(proxy.ack_latest(type_url)))
        ]
        for response in answers:
            proxy.apply(response)
        if not answers:
            break
    else:
        raise AssertionError("the stream keeps answering ACKs")
    current = stream.snapshot
    if current is None:
        return
    statuses = {s.type_url: s for s in stream.statuses()}
    for type_url in proxy.names:
        wanted = proxy.wanted(type_url, current)
        assert proxy.holds(type_url, wanted) == wanted, type_url
        if type_url in proxy.latest:
            assert proxy.latest[type_url].version == statuses[type_url].desired_version


@settings(max_examples=300, deadline=None)
@given(st.data())
def test_invariants_over_event_sequences(data: st.DataObject) -> None:
    stream = SotwStream()
    proxy = ModelProxy()
    sent_nonces: list[str] = []
    latest = proxy.latest
    for _ in range(data.draw(st.integers(1, 25))):
        type_url = data.draw(st.sampled_from((CDS, EDS)))
        nonce_choice = data.draw(st.sampled_from(("none", "latest", "old")))
        if nonce_choice == "latest" and type_url in latest:
            nonce = latest[type_url].nonce
        elif nonce_choice == "old" and sent_nonces:
            nonce = data.draw(st.sampled_from(sent_nonces))
        else:
            nonce = ""
        event: SnapshotChanged | RequestReceived = data.draw(
            st.one_of(
                snapshots.map(SnapshotChanged),
                st.builds(
                    RequestReceived,
                    type_url=st.just(type_url),
                    version_info=st.sampled_from(["", latest[type_url].version])
                    if type_url in latest
                    else st.just(""),
                    resource_names=st.lists(st.sampled_from((*NAMES, "*")), unique=True).map(tuple),
                    response_nonce=st.just(nonce),
                    error_message=st.one_of(st.none(), st.just("rejected")),
                ),
            )
        )
        before = {t: r.version for t, r in latest.items()}
        # Stale: answers a response of ours, but not the latest one of its type.
        stale = (
            isinstance(event, RequestReceived)
            and event.response_nonce != ""
            and type_url in latest
            and event.response_nonce != latest[type_url].nonce
        )
        if isinstance(event, RequestReceived):
            proxy.sent(event)
        actions = stream.receive(event)
        for response in responses(actions):
            assert response.nonce not in sent_nonces
            sent_nonces.append(response.nonce)
            if isinstance(event, RequestReceived):
                # An ACK, NACK or subscription change never brings back the same content.
                assert response.version != before.get(response.type_url)
            proxy.apply(response)
            # Complete or not, a response leaves the proxy holding all it wants, at the
            # response's version.
            assert stream.snapshot is not None
            wanted = proxy.wanted(response.type_url, stream.snapshot)
            assert proxy.holds(response.type_url, wanted) == wanted
            available = stream.snapshot.of_type(response.type_url)
            assert response.version == version_of_resources(available[n] for n in wanted)
        if stale:
            assert actions == []
        order = [r.type_url for r in responses(actions)]
        assert order == sorted(order, key=[CDS, EDS].index)
    assert_proxy_caught_up(stream, proxy)


def acked(stream: SotwStream, response: SendResponse, names: tuple[str, ...] = ()) -> None:
    ack = RequestReceived(
        response.type_url,
        version_info=response.version,
        resource_names=names,
        response_nonce=response.nonce,
    )
    assert responses(stream.receive(ack)) == []


def subscribed_to_endpoints(names: tuple[str, ...]) -> SotwStream:
    stream = SotwStream()
    stream.receive(SnapshotChanged(BASE))
    acked(stream, only_response(stream.receive(RequestReceived(CDS))))
    first = only_response(stream.receive(RequestReceived(EDS, resource_names=names)))
    assert [r.name for r in first.resources] == sorted(names)
    acked(stream, first, names)
    return stream


CHANGED_B = snapshot(
    {
        CDS: {"a": "1", "b": "1"},
        EDS: {"a": "1", "b": "2"},
        LDS: {"http": "1"},
        RDS: {"outbound": "1"},
    }
)


def test_endpoints_that_changed_are_sent_alone_at_the_version_of_all() -> None:
    stream = subscribed_to_endpoints(("a", "b"))
    eds = only_response(stream.receive(SnapshotChanged(CHANGED_B)))
    assert eds.type_url == EDS
    assert [(r.name, r.version) for r in eds.resources] == [("b", "2")]
    available = CHANGED_B.of_type(EDS)
    assert eds.version == version_of_resources(available.values())


def test_clusters_are_always_sent_whole() -> None:
    stream = subscribed_to_endpoints(("a", "b"))
    changed = snapshot({CDS: {"a": "1", "b": "2"}, EDS: {"a": "1", "b": "1"}})
    sent = responses(stream.receive(SnapshotChanged(changed)))
    cds = next(r for r in sent if r.type_url == CDS)
    assert [r.name for r in cds.resources] == ["a", "b"]
    # The changed cluster's assignment goes again (Envoy warms the cluster until it does).
    eds = next(r for r in sent if r.type_url == EDS)
    assert [r.name for r in eds.resources] == ["b"]


def test_after_a_nack_the_next_response_carries_every_subscribed_resource() -> None:
    stream = subscribed_to_endpoints(("a", "b"))
    eds = only_response(stream.receive(SnapshotChanged(CHANGED_B)))
    nack = RequestReceived(
        EDS,
        version_info="",
        resource_names=("a", "b"),
        response_nonce=eds.nonce,
        error_message="no",
    )
    stream.receive(nack)
    again = snapshot({CDS: {"a": "1", "b": "1"}, EDS: {"a": "2", "b": "2"}})
    eds = only_response(stream.receive(SnapshotChanged(again)))
    assert [(r.name, r.version) for r in eds.resources] == [("a", "2"), ("b", "2")]


def test_a_new_subscription_gets_every_resource_it_names() -> None:
    stream = subscribed_to_endpoints(("a",))
    both = only_response(stream.receive(RequestReceived(EDS, resource_names=("a", "b"))))
    assert [r.name for r in both.resources] == ["a", "b"]


def test_a_wildcard_subscriber_gets_every_resource_of_the_type() -> None:
    stream = subscribed_to_endpoints(("b",))
    wildcard = only_response(stream.receive(RequestReceived(EDS, resource_names=("*", "b"))))
    acked(stream, wildcard, ("*", "b"))
    eds = only_response(stream.receive(SnapshotChanged(CHANGED_B)))
    assert [r.name for r in eds.resources] == ["a", "b"]


def test_equal_subscriptions_share_one_set_and_the_table_stays_bounded() -> None:
    sets = NameSets(size=2)
    first = frozenset({"a", "b"})
    assert sets.shared(frozenset(["b", "a"])) is sets.shared(first)
    sets.shared(frozenset({"c"}))
    sets.shared(frozenset({"d"}))
    again = frozenset({"a", "b"})
    assert sets.shared(again) is again  # the oldest went when the table was full


def eds_snapshot(a: str, b: str) -> Snapshot:
    return snapshot({CDS: {"a": "1", "b": "1"}, EDS: {"a": a, "b": b}})


def test_while_a_response_is_unanswered_the_next_one_carries_everything() -> None:
    """Envoy answers in order: a NACK of the first response can come after the second was
    sent, and is then ignored as stale. The second must carry what the first did."""
    stream = subscribed_to_endpoints(("a", "b"))
    first = only_response(stream.receive(SnapshotChanged(eds_snapshot("2", "1"))))
    assert [r.name for r in first.resources] == ["a"]
    second = only_response(stream.receive(SnapshotChanged(eds_snapshot("2", "2"))))
    assert [(r.name, r.version) for r in second.resources] == [("a", "2"), ("b", "2")]
    stale_nack = RequestReceived(
        EDS, resource_names=("a", "b"), response_nonce=first.nonce, error_message="no"
    )
    assert stream.receive(stale_nack) == []
    acked(stream, second, ("a", "b"))
    third = only_response(stream.receive(SnapshotChanged(eds_snapshot("2", "3"))))
    assert [r.name for r in third.resources] == ["b"]  # everything answered: changes alone


def test_after_a_wildcard_the_named_subscription_starts_from_a_complete_response() -> None:
    def only_a(version: str) -> Snapshot:
        return snapshot({CDS: {"a": "1"}, EDS: {"a": version}})

    stream = subscribed_to_endpoints(("a",))  # holds a=1
    for response in responses(stream.receive(SnapshotChanged(only_a("1")))):
        acked(stream, response, ("a",) if response.type_url == EDS else ())
    # The wildcard covers exactly what the proxy holds: nothing to send.
    assert responses(stream.receive(RequestReceived(EDS, resource_names=("*", "a")))) == []
    moved = only_response(stream.receive(SnapshotChanged(only_a("2"))))
    acked(stream, moved, ("*", "a"))
    # Named again, the same set at the same version: nothing to send, it holds a=2.
    named_again = RequestReceived(
        EDS, version_info=moved.version, resource_names=("a",), response_nonce=moved.nonce
    )
    assert responses(stream.receive(named_again)) == []
    back = only_response(stream.receive(SnapshotChanged(only_a("1"))))
    assert [(r.name, r.version) for r in back.resources] == [("a", "1")]
