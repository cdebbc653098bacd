from __future__ import annotations

from pilotfish.ratelimit.outage import OutageEnded, OutageStarted, StoreOutage


def test_an_outage_is_reported_once_when_it_starts_and_once_when_it_ends() -> None:
    outage = StoreOutage(probe_interval=0.1, failures_to_trip=1)
    assert outage.call_succeeded(0.0) is None
    assert outage.call_failed(1.0, "refused") == OutageStarted("refused")
    assert outage.call_failed(1.2, "refused") is None
    assert outage.down
    assert outage.call_succeeded(3.5) == OutageEnded(2.5, 2)
    assert not outage.down
    assert outage.call_succeeded(3.6) is None


def test_it_takes_failures_in_a_row_to_start_an_outage() -> None:
    outage = StoreOutage(probe_interval=0.1, failures_to_trip=3)
    assert outage.call_failed(1.0, "timeout") is None
    assert outage.call_failed(1.1, "timeout") is None
    assert outage.call_succeeded(1.2) is None  # a success starts the count again
    assert outage.call_failed(2.0, "timeout") is None
    assert outage.call_failed(2.1, "timeout") is None
    assert not outage.down and outage.may_call(2.1)
    assert outage.call_failed(2.2, "refused") == OutageStarted("refused")
    assert outage.down
    assert outage.call_succeeded(3.0) == OutageEnded(1.0, 3)  # from the run's first failure


def test_while_down_one_call_per_probe_interval_reaches_the_store() -> None:
    outage = StoreOutage(probe_interval=0.1, failures_to_trip=1)
    assert outage.may_call(0.0)
    outage.call_failed(0.0, "timeout")
    assert [outage.may_call(t) for t in (0.05, 0.09)] == [False, False]
    assert outage.may_call(0.1)
    assert not outage.may_call(0.1)  # the probe is out: the others still fail at once
    outage.call_failed(0.12, "timeout")
    assert not outage.may_call(0.2)
    assert outage.may_call(0.22)
    ended = outage.call_succeeded(0.23)
    assert ended == OutageEnded(0.23, 6)  # 2 failed calls and 4 turned away
    assert outage.may_call(0.24) and outage.may_call(0.24)
