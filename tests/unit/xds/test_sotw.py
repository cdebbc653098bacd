from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st
from xds_fakes import CDS, EDS, LDS, RDS, snapshot

from pilotfish.snapshot import version_of_resources
from pilotfish.xds import (
    NackReceived,
    RequestReceived,
    SendResponse,
    SnapshotChanged,
    SotwStream,
    SyncStatus,
)
from pilotfish.xds.protocol import Action

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


NAMES = ("a", "b", "c")
snapshots = st.builds(
    lambda cds, eds: snapshot({CDS: cds, EDS: eds}),
    st.dictionaries(st.sampled_from(NAMES), st.sampled_from("12")),
    st.dictionaries(st.sampled_from(NAMES), st.sampled_from("12")),
)


@settings(max_examples=200, deadline=None)
@given(st.data())
def test_invariants_over_event_sequences(data: st.DataObject) -> None:
    stream = SotwStream()
    sent_nonces: list[str] = []
    latest: dict[str, SendResponse] = {}
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
                    resource_names=st.lists(st.sampled_from(NAMES), unique=True).map(tuple),
                    response_nonce=st.just(nonce),
                    error_message=st.one_of(st.none(), st.just("rejected")),
                ),
            )
        )
        before = {t: r.version for t, r in latest.items()}
        stale = (
            isinstance(event, RequestReceived)
            and event.response_nonce != ""
            and (type_url not in latest or event.response_nonce != latest[type_url].nonce)
        )
        actions = stream.receive(event)
        for response in responses(actions):
            assert response.nonce not in sent_nonces
            sent_nonces.append(response.nonce)
            assert response.version == version_of_resources(response.resources)
            if isinstance(event, RequestReceived):
                # An ACK, NACK or subscription change never brings back the same content.
                assert response.version != before.get(response.type_url)
            latest[response.type_url] = response
        if stale:
            assert actions == []
        order = [r.type_url for r in responses(actions)]
        assert order == sorted(order, key=[CDS, EDS].index)
