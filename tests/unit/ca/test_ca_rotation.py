from __future__ import annotations

import datetime as dt

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pilotfish.ca.rotation import (
    IssuedLog,
    IssuedRecord,
    RotationError,
    RotationPhase,
    RotationState,
    old_epoch_holders,
    rotation_due,
)

NOW = dt.datetime(2026, 12, 1, 12, 0, tzinfo=dt.UTC)
HOUR = dt.timedelta(hours=1)


WEB = "spiffe://cluster.local/ns/default/sa/web"


def record(
    node: str | None, epoch: int, serial: int, at: dt.datetime = NOW, identity: str = WEB
) -> IssuedRecord:
    return IssuedRecord(
        identity=identity,
        node_id=node,
        serial=serial,
        not_after=at + 24 * HOUR,
        issuer_epoch=epoch,
        signed_at=at,
    )


def test_begin_bumps_the_epoch_and_finish_returns_to_steady() -> None:
    started = RotationState().begin(NOW, 3600)
    assert started.issuer_epoch == 2 and started.phase is RotationPhase.OVERLAP
    assert started.drop_after == NOW + HOUR
    done = started.finish()
    assert done == RotationState(issuer_epoch=2)
    with pytest.raises(RotationError, match="already running"):
        started.begin(NOW, 3600)
    with pytest.raises(RotationError, match="no root rotation"):
        done.finish()


def test_the_old_root_goes_once_nobody_holds_an_old_certificate_or_time_is_up() -> None:
    started = RotationState().begin(NOW, 3600)
    assert not started.ready_to_finish(NOW, ["web-0"])
    assert started.ready_to_finish(NOW, [])
    assert started.ready_to_finish(NOW + HOUR, ["web-0"])
    assert not RotationState().ready_to_finish(NOW + HOUR, [])


def test_holders_are_agents_whose_latest_valid_certificate_is_older() -> None:
    later = NOW + HOUR
    records = [
        record("web-0", 1, 1),
        record("web-0", 2, 2, later),  # re-issued: holds the new epoch
        record("api-0", 1, 3),
        record(None, 1, 0xAB),  # no node id: the certificate counts on its own
        record("gone-0", 1, 4, NOW - 30 * HOUR),  # expired: holds no trust
    ]
    assert old_epoch_holders(records, 2, later) == [f"api-0 ({WEB})", f"serial ab ({WEB})"]
    assert old_epoch_holders(records, 1, later) == []


def test_a_node_id_under_another_identity_never_stands_in_for_the_real_holder() -> None:
    gateway = "spiffe://cluster.local/ns/default/sa/pilotfish-ingressgateway"
    later = NOW + HOUR
    records = [
        record("ingressgateway", 1, 1, identity=gateway),
        # Any token holder may name itself "ingressgateway": it is another holder.
        record("ingressgateway", 2, 2, later),
    ]
    assert old_epoch_holders(records, 2, later) == [f"ingressgateway ({gateway})"]


def test_rotation_is_due_with_less_than_a_fifth_of_the_lifetime_left() -> None:
    start, end = NOW, NOW + 100 * HOUR
    assert not rotation_due(start, end, NOW + 79 * HOUR)
    assert rotation_due(start, end, NOW + 81 * HOUR)
    assert rotation_due(start, end, NOW + 200 * HOUR)
    assert rotation_due(start, end, NOW + 50 * HOUR, fraction=0.6)


def test_state_round_trips_through_json_and_bad_json_names_the_field() -> None:
    state = RotationState().begin(NOW, 3600)
    assert RotationState.from_json(state.to_json()) == state
    with pytest.raises(ValueError, match="issuer_epoch"):
        RotationState.from_json({"issuer_epoch": 0, "phase": "steady"})
    with pytest.raises(ValueError, match="phase"):
        RotationState.from_json({"issuer_epoch": 1, "phase": "spinning"})
    with pytest.raises(ValueError, match="started_at"):
        RotationState.from_json({"issuer_epoch": 1, "phase": "overlap", "started_at": "soon"})


@given(st.lists(st.sampled_from(["begin", "finish", "tick"]), max_size=30))
def test_any_sequence_keeps_the_epoch_growing_by_one_per_rotation(steps: list[str]) -> None:
    state = RotationState()
    now = NOW
    rotations = 0
    for step in steps:
        now += HOUR
        before = state
        try:
            if step == "begin":
                state = state.begin(now, 1800)
                rotations += 1
            elif step == "finish" or state.ready_to_finish(now, ["someone"]):
                state = state.finish()
        except RotationError:
            assert state == before
            assert (step == "begin") == (before.phase is RotationPhase.OVERLAP)
        assert state.issuer_epoch == 1 + rotations
        assert (state.phase is RotationPhase.OVERLAP) == (state.drop_after is not None)
        assert RotationState.from_json(state.to_json()) == state


def test_records_round_trip_through_json() -> None:
    log = IssuedLog((record("web-0", 2, 0xABC), record(None, 1, 7)), complete=False)
    assert IssuedLog.from_json(log.to_json()) == log
    with pytest.raises(ValueError, match="serial"):
        IssuedRecord.from_json({**record("w", 1, 1).to_json(), "serial": "zz"})
    with pytest.raises(ValueError, match="complete"):
        IssuedLog.from_json({"records": []})
