from __future__ import annotations

import pytest
from tests.request_records import T0, connection, record

from pilotfish.telemetry.tap import ProxyLogs, TapFeed, TapFilter, TapFull

BACKEND = "backend.default.svc.cluster.local"


@pytest.mark.parametrize(
    ("tap", "wanted"),
    [
        (TapFilter(), True),
        (TapFilter(service=BACKEND), True),
        (TapFilter(service="backend"), True),
        (TapFilter(service="reviews"), False),
        (TapFilter(path_prefix="/api"), True),
        (TapFilter(path_prefix="/apx"), False),
        (TapFilter(workload="frontend"), True),
        (TapFilter(workload="backend"), True),
        (TapFilter(workload="other"), False),
        (TapFilter(proxy="backend-0"), True),
        (TapFilter(proxy="frontend-0"), False),
        (TapFilter(errors_only=True), False),
    ],
)
def test_filters(tap: TapFilter, wanted: bool) -> None:
    assert tap.matches(record(path="/api/items")) is wanted


def test_errors_only_lets_failures_through() -> None:
    assert TapFilter(errors_only=True).matches(record(code=503, flags=("UF",)))


def test_a_subscriber_gets_what_its_filter_lets_through_and_is_woken() -> None:
    feed = TapFeed()
    woken: list[int] = []
    subscriber = feed.subscribe(TapFilter(path_prefix="/a"), wake=lambda: woken.append(1))
    feed.add([record(path="/a/1"), record(path="/b"), record(path="/a/2")])
    feed.add([record(path="/b")])
    assert [r.path for r in subscriber.take()] == ["/a/1", "/a/2"]
    assert woken == [1]
    assert subscriber.take() == []


def test_a_slow_subscriber_drops_and_counts_instead_of_growing() -> None:
    feed = TapFeed(max_queued=3)
    slow = feed.subscribe(TapFilter())
    fast = feed.subscribe(TapFilter())
    feed.add([record(path=f"/{i}") for i in range(5)])
    assert [r.path for r in fast.take()] == ["/0", "/1", "/2"]
    feed.add([record(path="/5")])
    assert [r.path for r in fast.take()] == ["/5"]
    assert [r.path for r in slow.take()] == ["/0", "/1", "/2"]
    assert (slow.dropped, fast.dropped) == (3, 2)


def test_unsubscribed_gets_nothing_and_the_number_of_taps_is_capped() -> None:
    feed = TapFeed(max_subscribers=1)
    subscriber = feed.subscribe(TapFilter())
    with pytest.raises(TapFull):
        feed.subscribe(TapFilter())
    feed.unsubscribe(subscriber)
    feed.add([record()])
    assert subscriber.take() == []
    assert feed.subscribers == 0


def test_each_proxy_keeps_its_last_records() -> None:
    logs = ProxyLogs(per_proxy=2)
    logs.add([record(proxy="a", at=T0 + i, path=f"/{i}") for i in range(3)])
    logs.add([record(proxy="b", at=T0 + 1.5, path="/b")])
    assert [r.path for r in logs.recent("a")] == ["/1", "/2"]
    assert [r.path for r in logs.recent(None)] == ["/1", "/b", "/2"]
    assert [r.path for r in logs.recent(None, limit=1)] == ["/2"]
    assert logs.recent("nobody") == []
    assert logs.proxies == ["a", "b"]


def test_the_quietest_proxy_is_forgotten_beyond_the_cap() -> None:
    logs = ProxyLogs(max_proxies=2)
    logs.add([record(proxy="old", at=T0), record(proxy="new", at=T0 + 5)])
    logs.add([record(proxy="newest", at=T0 + 6)])
    assert logs.proxies == ["new", "newest"]
    assert logs.dropped == 1


def test_the_last_records_of_all_proxies_interleave() -> None:
    logs = ProxyLogs(per_proxy=10)
    for i in range(10):
        for proxy in "abc":
            logs.add([record(proxy=proxy, at=T0 + i + "abc".index(proxy) / 10, path=f"/{i}")])
    recent = logs.recent(None, limit=4)
    assert [(r.proxy, r.path) for r in recent] == [
        ("c", "/8"),
        ("a", "/9"),
        ("b", "/9"),
        ("c", "/9"),
    ]
    assert len(logs.recent(None, limit=100)) == 30
    assert logs.recent(None, limit=0) == []


def test_records_of_equal_start_stay_in_arrival_order() -> None:
    logs = ProxyLogs()
    logs.add([record(proxy="a", path="/a1"), record(proxy="b", path="/b1")])
    logs.add([record(proxy="a", path="/a2")])
    assert [r.path for r in logs.recent(None)] == ["/a1", "/a2", "/b1"]
    assert [r.path for r in logs.recent(None, limit=1)] == ["/b1"]


def test_tcp_connections_are_logged_once_when_they_end_among_the_requests() -> None:
    logs = ProxyLogs()
    logs.add([record(proxy="db-0", at=T0, path="/first")])
    logs.add_connections(
        [connection(event="connected", at=T0 + 1), connection(event="periodic", at=T0 + 1)]
    )
    logs.add_connections([connection(at=T0 + 1)])
    logs.add([record(proxy="db-0", at=T0 + 2, path="/last")])
    assert [type(r).__name__ for r in logs.recent("db-0")] == [
        "RequestRecord",
        "ConnectionRecord",
        "RequestRecord",
    ]


def test_only_a_subscriber_that_asks_for_connections_gets_their_ends() -> None:
    feed = TapFeed()
    requests_only = feed.subscribe(TapFilter())
    logs = feed.subscribe(TapFilter(proxy="db-0", connections=True))
    feed.add_connections([connection(event="connected"), connection(), connection(proxy="x")])
    assert requests_only.take() == []
    assert [r.event for r in logs.take()] == ["closed"]  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("tap", "wanted"),
    [
        (TapFilter(connections=True), True),
        (TapFilter(connections=True, service="db"), True),
        (TapFilter(connections=True, service="backend"), False),
        (TapFilter(connections=True, workload="client"), True),
        (TapFilter(connections=True, path_prefix="/"), False),
        (TapFilter(connections=True, errors_only=True), False),
        (TapFilter(), False),
    ],
)
def test_filters_of_connections(tap: TapFilter, wanted: bool) -> None:
    assert tap.matches(connection()) is wanted
    assert TapFilter(connections=True, errors_only=True).matches(connection(flags=("UF",)))
