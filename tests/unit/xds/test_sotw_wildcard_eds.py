from xds_fakes import CDS, EDS, snapshot

from pilotfish.xds import RequestReceived, SendResponse, SnapshotChanged, SotwStream


def test_changed_cluster_resends_its_assignment_to_a_wildcard_eds_subscriber() -> None:
    stream = SotwStream()
    stream.receive(SnapshotChanged(snapshot({CDS: {"a": "1"}, EDS: {"a": "1"}})))
    first = stream.receive(RequestReceived(EDS, resource_names=("*",)))
    assert [r.name for r in first[0].resources] == ["a"]  # type: ignore[union-attr]
    stream.receive(
        RequestReceived(
            EDS, version_info=first[0].version, resource_names=("*",), response_nonce=first[0].nonce
        )
    )  # type: ignore[union-attr]
    actions = stream.receive(SnapshotChanged(snapshot({CDS: {"a": "2"}, EDS: {"a": "1"}})))
    eds = [a for a in actions if isinstance(a, SendResponse) and a.type_url == EDS]
    assert eds, "cluster a changed: its load assignment must be sent again"


def test_same_with_explicit_names() -> None:
    stream = SotwStream()
    stream.receive(SnapshotChanged(snapshot({CDS: {"a": "1"}, EDS: {"a": "1"}})))
    first = stream.receive(RequestReceived(EDS, resource_names=("a",)))
    stream.receive(
        RequestReceived(
            EDS, version_info=first[0].version, resource_names=("a",), response_nonce=first[0].nonce
        )
    )  # type: ignore[union-attr]
    actions = stream.receive(SnapshotChanged(snapshot({CDS: {"a": "2"}, EDS: {"a": "1"}})))
    assert [a for a in actions if isinstance(a, SendResponse) and a.type_url == EDS]
