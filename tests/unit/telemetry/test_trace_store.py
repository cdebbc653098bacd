from __future__ import annotations

import pytest

from pilotfish.telemetry.traces import (
    Span,
    SpanError,
    TraceLimits,
    TraceQuery,
    TraceStore,
    parse_annotation_query,
    parse_span,
    parse_spans,
    parse_trace_query,
    span_bytes,
)

TRACE = "463ac35c9f6413ad48485a3953bb6124"
NOW_MS = 1_800_000_000_000


def span(**fields: object) -> dict[str, object]:
    base: dict[str, object] = {
        "traceId": TRACE,
        "id": "a2fb4a1d1a96d312",
        "name": "frontend.default.svc.cluster.local:8080/*",
        "kind": "CLIENT",
        "timestamp": NOW_MS * 1000 - 5_000_000,
        "duration": 2500,
        "localEndpoint": {"serviceName": "Frontend", "ipv4": "127.0.0.1"},
        "remoteEndpoint": {"serviceName": "backend", "port": 8080},
        "tags": {"http.status_code": "200", "http.method": "GET"},
    }
    base.update(fields)
    return {k: v for k, v in base.items() if v is not None}


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def query(**fields: object) -> TraceQuery:
    return TraceQuery(end_ts_ms=NOW_MS, **fields)  # type: ignore[arg-type]


# --- validation -----------------------------------------------------------------------------


def test_a_zipkin_span_reads_back_as_itself_with_names_in_lower_case() -> None:
    parsed = parse_span(span(parentId="0000000000000001", shared=True))
    assert parsed.service == "frontend"
    assert parsed.remote_service == "backend"
    assert parsed.kind == "CLIENT"
    out = parsed.to_json()
    assert out["traceId"] == TRACE
    assert out["parentId"] == "0000000000000001"
    assert out["localEndpoint"] == {"serviceName": "frontend", "ipv4": "127.0.0.1"}
    assert out["remoteEndpoint"] == {"serviceName": "backend", "port": 8080}
    assert out["shared"] is True
    assert out["tags"] == {"http.status_code": "200", "http.method": "GET"}


@pytest.mark.parametrize(
    ("fields", "reason"),
    [
        ({"traceId": "abc"}, "traceId"),
        ({"traceId": "463ac35c9f6413ad48485a3953bb61"}, "traceId"),
        ({"traceId": None}, "traceId"),
        ({"id": "463ac35c9f6413ad48485a3953bb6124"}, "id:"),
        ({"id": "zzfb4a1d1a96d312"}, "id:"),
        ({"parentId": "12"}, "parentId"),
        ({"name": 7}, "name"),
        ({"kind": "SIDEWAYS"}, "kind"),
        ({"timestamp": "soon"}, "timestamp"),
        ({"timestamp": 1.5}, "timestamp"),
        ({"duration": -1}, "duration"),
        ({"duration": True}, "duration"),
        ({"localEndpoint": "frontend"}, "localEndpoint"),
        ({"remoteEndpoint": {"port": 70000}}, "remoteEndpoint.port"),
        ({"tags": {"http.status_code": 200}}, "tags.http.status_code"),
        ({"annotations": [{"value": "cs"}]}, "annotations[0]"),
        ({"shared": "yes"}, "shared"),
    ],
)
def test_a_bad_span_is_refused_naming_its_field(fields: dict[str, object], reason: str) -> None:
    data = span()
    data.update(fields)
    with pytest.raises(SpanError, match=reason.replace("[", r"\[").replace("]", r"\]")):
        parse_span(data)


def test_a_batch_keeps_its_good_spans_and_says_why_each_bad_one_was_refused() -> None:
    good, refused = parse_spans([span(), span(id="nothex"), span(id="b2fb4a1d1a96d312")])
    assert [s.id for s in good] == ["a2fb4a1d1a96d312", "b2fb4a1d1a96d312"]
    assert [(r.index, r.reason.split(":")[0]) for r in refused] == [(1, "id")]
    with pytest.raises(SpanError, match="list"):
        parse_spans({"traceId": TRACE})


# --- the store ------------------------------------------------------------------------------


def spans(*items: dict[str, object]) -> list[Span]:
    return [parse_span(item) for item in items]


def test_the_oldest_trace_goes_first_when_the_store_is_full_and_each_drop_is_counted() -> None:
    store = TraceStore(TraceLimits(max_traces=2, max_spans_per_trace=2), Clock())
    for n in range(3):
        store.add(spans(span(traceId=f"{n:016x}")))
    assert store.trace("0000000000000000") is None
    assert store.trace("0000000000000001") is not None
    assert store.trace("0000000000000002") is not None
    assert store.counts.traces_evicted == 1
    store.add(spans(*(span(traceId=f"{2:016x}", id=f"{n + 10:016x}") for n in range(3))))
    assert len(store.trace("0000000000000002") or []) == 2
    assert store.counts.spans_dropped == 2


def test_the_spans_of_all_traces_together_are_bounded_by_dropping_the_oldest_traces() -> None:
    store = TraceStore(TraceLimits(max_spans=5), Clock())
    for n in range(3):
        store.add(spans(*(span(traceId=f"{n:016x}", id=f"{k + 1:016x}") for k in range(2))))
    assert store.trace(f"{0:016x}") is None
    assert store.counts.traces_evicted == 1
    # the trace being added to is never the one dropped: it is bounded by spans per trace
    store.add(spans(*(span(traceId="9" * 16, id=f"{k + 1:016x}") for k in range(7))))
    assert len(store) == 1
    assert len(store.trace("9" * 16) or []) == 7
    store.add(spans(span(traceId="8" * 16)))
    assert store.trace("9" * 16) is None
    assert len(store.trace("8" * 16) or []) == 1
    assert store.counts.traces_evicted == 4


def test_a_huge_span_is_cut_to_the_tag_annotation_and_text_limits() -> None:
    store = TraceStore(clock=Clock())
    tags = {f"key{n}": "v" * 5000 for n in range(1000)}
    notes = [{"timestamp": NOW_MS * 1000, "value": "é" * 5000} for _ in range(1000)]
    store.add(spans(span(tags=tags, annotations=notes, name="n" * 5000)))
    (kept,) = store.trace(TRACE) or []
    limits = store.limits
    assert len(kept.tags) == limits.max_tags_per_span
    assert all(len(v) == limits.max_text_bytes for v in kept.tags.values())
    assert len(kept.annotations) == limits.max_annotations_per_span
    # cut on a character boundary: 512 two-byte characters
    assert {a.value for a in kept.annotations} == {"é" * 512}
    assert kept.name == "n" * limits.max_text_bytes
    assert store.counts.spans_cut == 1
    assert span_bytes(kept) < 200_000
    store.add(spans(span(traceId="1" * 16)))
    assert store.counts.spans_cut == 1  # a span within the limits is kept as it came


def test_the_bytes_of_all_traces_together_are_bounded_by_dropping_the_oldest_traces() -> None:
    one = span_bytes(parse_span(span()))
    store = TraceStore(TraceLimits(max_bytes=one * 3), Clock())
    for n in range(3):
        store.add(spans(span(traceId=f"{n:016x}")))
    assert (len(store), store.bytes, store.counts.traces_evicted) == (3, one * 3, 0)
    store.add(spans(span(traceId=f"{3:016x}")))
    assert store.trace(f"{0:016x}") is None
    assert (len(store), store.bytes, store.counts.traces_evicted) == (3, one * 3, 1)
    store.add(spans(span(traceId=f"{3:016x}")))  # the same span again costs nothing more
    assert (len(store), store.bytes) == (3, one * 3)


def test_a_trace_older_than_the_age_limit_is_forgotten_and_counted() -> None:
    clock = Clock()
    store = TraceStore(TraceLimits(max_age_seconds=60), clock)
    store.add(spans(span()))
    clock.now += 59
    store.add(spans(span(traceId="1" * 16)))
    assert len(store) == 2
    clock.now += 2
    assert store.trace(TRACE) is None
    assert len(store) == 1
    assert store.counts.traces_expired == 1


def test_an_expired_trace_gives_its_room_back() -> None:
    clock = Clock()
    store = TraceStore(TraceLimits(max_age_seconds=60, max_spans=2), clock)
    store.add(spans(span()))
    clock.now += 61
    store.add(spans(span(traceId="1" * 16), span(traceId="2" * 16)))
    assert len(store) == 2
    assert store.counts.traces_evicted == 0


def test_the_same_span_posted_twice_is_kept_once_and_a_shared_server_span_beside_it() -> None:
    store = TraceStore(clock=Clock())
    client = span()
    server = span(kind="SERVER", shared=True, localEndpoint={"serviceName": "backend"})
    store.add(spans(client, client, server))
    assert len(store.trace(TRACE) or []) == 2


def test_a_64_bit_trace_id_finds_the_128_bit_trace_whose_low_half_it_is() -> None:
    store = TraceStore(clock=Clock())
    store.add(spans(span(), span(traceId=TRACE[16:], id="c2fb4a1d1a96d312")))
    assert len(store.trace(TRACE[16:]) or []) == 2
    assert len(store.trace(TRACE.upper()) or []) == 2
    # another 128-bit id with the same low half is another trace: only the 64-bit span is its
    other = store.trace("0" * 16 + TRACE[16:]) or []
    assert [s.trace_id for s in other] == [TRACE[16:]]
    assert store.trace("not-an-id") is None


def test_services_span_names_and_remote_services_are_those_of_the_local_service() -> None:
    store = TraceStore(clock=Clock())
    store.add(
        spans(
            span(),
            span(
                id="b2fb4a1d1a96d312",
                name="inbound",
                kind="SERVER",
                localEndpoint={"serviceName": "backend"},
                remoteEndpoint=None,
            ),
        )
    )
    assert store.services() == ["backend", "frontend"]
    assert store.span_names("FRONTEND") == ["frontend.default.svc.cluster.local:8080/*"]
    assert store.span_names("backend") == ["inbound"]
    assert store.remote_services("frontend") == ["backend"]
    assert store.remote_services("backend") == []


# --- queries --------------------------------------------------------------------------------


def loaded_store() -> TraceStore:
    store = TraceStore(clock=Clock())
    base = NOW_MS * 1000
    store.add(
        spans(
            # slow, failing, an hour ago
            span(traceId="1" * 16, timestamp=base - 3_600_000_000, duration=900_000,
                 tags={"http.status_code": "503", "error": "true"}),
            # fast, now
            span(traceId="2" * 16, timestamp=base - 1_000, duration=1_000),
            span(traceId="2" * 16, id="b" * 16, kind="SERVER", name="inbound",
                 localEndpoint={"serviceName": "backend"}, remoteEndpoint=None,
                 timestamp=base - 900, duration=500),
            # two days ago
            span(traceId="3" * 16, timestamp=base - 2 * 86_400_000_000),
        )
    )  # fmt: skip
    return store


def ids(found: list[list[Span]]) -> list[str]:
    return [trace[0].trace_id[0] for trace in found]


def test_traces_are_the_most_recent_first_within_the_lookback() -> None:
    store = loaded_store()
    assert ids(store.traces(query())) == ["2", "1"]
    assert ids(store.traces(query(limit=1))) == ["2"]
    assert ids(store.traces(query(lookback_ms=60_000))) == ["2"]
    assert ids(store.traces(query(lookback_ms=3 * 86_400_000))) == ["2", "1", "3"]
    assert ids(store.traces(TraceQuery(end_ts_ms=NOW_MS - 3_000_000))) == ["1"]


def test_traces_by_service_span_name_remote_service_and_duration() -> None:
    store = loaded_store()
    assert ids(store.traces(query(service_name="backend"))) == ["2"]
    assert ids(store.traces(query(service_name="nobody"))) == []
    assert ids(store.traces(query(service_name="frontend", span_name="inbound"))) == []
    assert ids(store.traces(query(service_name="backend", span_name="inbound"))) == ["2"]
    assert ids(store.traces(query(remote_service_name="backend"))) == ["2", "1"]
    assert ids(store.traces(query(service_name="backend", remote_service_name="backend"))) == []
    assert ids(store.traces(query(min_duration=100_000))) == ["1"]
    assert ids(store.traces(query(max_duration=600))) == ["2"]
    assert ids(store.traces(query(service_name="frontend", max_duration=600))) == []


def test_an_annotation_query_matches_tags_by_value_or_by_key() -> None:
    store = loaded_store()
    assert ids(store.traces(query(annotation_query=(("http.status_code", "503"),)))) == ["1"]
    assert ids(store.traces(query(annotation_query=(("error", None),)))) == ["1"]
    both = (("error", None), ("http.status_code", "503"))
    assert ids(store.traces(query(annotation_query=both))) == ["1"]
    assert ids(store.traces(query(annotation_query=(("http.method", "POST"),)))) == []


def test_query_parameters_are_read_as_zipkin_sends_them() -> None:
    parsed = parse_trace_query(
        {
            "serviceName": "Frontend",
            "spanName": "all",
            "limit": "5",
            "lookback": "60000",
            "minDuration": "10",
            "annotationQuery": "error and http.status_code=503",
        },
        NOW_MS,
    )
    assert parsed.service_name == "frontend"
    assert parsed.span_name is None
    assert (parsed.limit, parsed.lookback_ms, parsed.end_ts_ms) == (5, 60_000, NOW_MS)
    assert parsed.min_duration == 10
    assert parsed.annotation_query == (("error", None), ("http.status_code", "503"))
    assert parse_annotation_query("") == ()
    with pytest.raises(ValueError, match="limit"):
        parse_trace_query({"limit": "ten"}, NOW_MS)
    with pytest.raises(ValueError, match="lookback"):
        parse_trace_query({"lookback": "0"}, NOW_MS)
