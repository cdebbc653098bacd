"""Recent traces, kept in memory and asked as Zipkin's v2 API asks.

Spans arrive as Zipkin v2 JSON (what Envoy's Zipkin tracer posts). Each one is checked on its
own: a bad span is refused with the reason, the others of its batch are kept. The store is
bounded five ways (traces, spans in all, spans per trace, bytes in all, age) and each span
is cut to a bounded size (tags, annotations, text lengths); the oldest trace goes first and
every drop or cut is counted, so a busy mesh costs a fixed amount of memory and says what
it forgot.

Zipkin's rules kept here: names and service names are lower case; a 16-hex trace id and a
32-hex one with the same low half are the same trace (Zipkin's ``STRICT_TRACE_ID=false``, which
is what a mesh mixing 64- and 128-bit tracers needs); times are microseconds in spans,
milliseconds in query parameters.
"""

from __future__ import annotations

import re
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Literal

SpanKind = Literal["CLIENT", "SERVER", "PRODUCER", "CONSUMER"]
SPAN_KINDS: tuple[SpanKind, ...] = ("CLIENT", "SERVER", "PRODUCER", "CONSUMER")

_HEX16 = re.compile(r"[0-9a-f]{16}")
_TRACE_ID = re.compile(r"[0-9a-f]{16}|[0-9a-f]{32}")
# Zipkin's query defaults: the last day, ten traces.
DEFAULT_LOOKBACK_MS = 86_400_000
DEFAULT_LIMIT = 10


class SpanError(ValueError):
    """A span that does not follow Zipkin's v2 model; the message names the field."""


@dataclass(frozen=True)
class Endpoint:
    service_name: str | None = None
    ipv4: str | None = None
    ipv6: str | None = None
    port: int | None = None

    def to_json(self) -> dict[str, object]:
        out: dict[str, object] = {}
        if self.service_name is not None:
            out["serviceName"] = self.service_name
        if self.ipv4 is not None:
            out["ipv4"] = self.ipv4
        if self.ipv6 is not None:
            out["ipv6"] = self.ipv6
        if self.port is not None:
            out["port"] = self.port
        return out


@dataclass(frozen=True)
class Annotation:
    timestamp: int
    value: str


@dataclass(frozen=True)
class Span:
    trace_id: str
    id: str
    parent_id: str | None = None
    name: str | None = None
    kind: SpanKind | None = None
    timestamp: int | None = None
    """Microseconds since the epoch."""
    duration: int | None = None
    """Microseconds."""
    local: Endpoint | None = None
    remote: Endpoint | None = None
    annotations: tuple[Annotation, ...] = ()
    tags: Mapping[str, str] = field(default_factory=dict)
    shared: bool = False
    debug: bool = False

    @property
    def service(self) -> str | None:
        return self.local.service_name if self.local else None

    @property
    def remote_service(self) -> str | None:
        return self.remote.service_name if self.remote else None

    def to_json(self) -> dict[str, object]:
        out: dict[str, object] = {"traceId": self.trace_id, "id": self.id}
        if self.parent_id is not None:
            out["parentId"] = self.parent_id
        if self.name is not None:
            out["name"] = self.name
        if self.kind is not None:
            out["kind"] = self.kind
        if self.timestamp is not None:
            out["timestamp"] = self.timestamp
        if self.duration is not None:
            out["duration"] = self.duration
        if self.local is not None:
            out["localEndpoint"] = self.local.to_json()
        if self.remote is not None:
            out["remoteEndpoint"] = self.remote.to_json()
        if self.annotations:
            out["annotations"] = [
                {"timestamp": a.timestamp, "value": a.value} for a in self.annotations
            ]
        if self.tags:
            out["tags"] = dict(self.tags)
        if self.shared:
            out["shared"] = True
        if self.debug:
            out["debug"] = True
        return out


# --- reading spans --------------------------------------------------------------------------


def _hex(value: object, field_name: str, pattern: re.Pattern[str], wanted: str) -> str:
    if not isinstance(value, str) or not pattern.fullmatch(value.lower()):
        raise SpanError(f"{field_name}: {value!r} is not {wanted}")
    return value.lower()


def _micros(value: object, field_name: str) -> int | None:
    if value is None:
        return None
    # bool is an int in Python; a JSON true is no time.
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise SpanError(f"{field_name}: {value!r} is not a whole number of microseconds")
    return value


def _optional_str(value: object, field_name: str) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise SpanError(f"{field_name}: {value!r} is not a string")
    return value


def _endpoint(value: object, field_name: str) -> Endpoint | None:
    if value is None:
        return None
    if not isinstance(value, Mapping):
        raise SpanError(f"{field_name}: {value!r} is not an object")
    service = _optional_str(value.get("serviceName"), f"{field_name}.serviceName")
    port = value.get("port")
    if port is not None and (
        isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 65535
    ):
        raise SpanError(f"{field_name}.port: {port!r} is not a port number")
    endpoint = Endpoint(
        service_name=service.lower() if service else None,
        ipv4=_optional_str(value.get("ipv4"), f"{field_name}.ipv4"),
        ipv6=_optional_str(value.get("ipv6"), f"{field_name}.ipv6"),
        port=port or None,
    )
    return endpoint if endpoint != Endpoint() else None


def _tags(value: object) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise SpanError(f"tags: {value!r} is not an object")
    for key, tag in value.items():
        if not isinstance(tag, str):
            raise SpanError(f"tags.{key}: {tag!r} is not a string (Zipkin tags are strings)")
    return {str(k): v for k, v in value.items()}


def _annotations(value: object) -> tuple[Annotation, ...]:
    if value is None:
        return ()
    if not isinstance(value, list):
        raise SpanError(f"annotations: {value!r} is not a list")
    found = []
    for index, item in enumerate(value):
        if not isinstance(item, Mapping):
            raise SpanError(f"annotations[{index}]: {item!r} is not an object")
        timestamp = _micros(item.get("timestamp"), f"annotations[{index}].timestamp")
        text = _optional_str(item.get("value"), f"annotations[{index}].value")
        if timestamp is None or text is None:
            raise SpanError(f"annotations[{index}]: needs a timestamp and a value")
        found.append(Annotation(timestamp, text))
    return tuple(found)


def _flag(value: object, field_name: str) -> bool:
    if value is None:
        return False
    if not isinstance(value, bool):
        raise SpanError(f"{field_name}: {value!r} is not true or false")
    return value


def parse_span(data: object) -> Span:
    """One Zipkin v2 JSON span; raises SpanError naming the field that is wrong."""
    if not isinstance(data, Mapping):
        raise SpanError(f"{data!r} is not an object")
    trace_id = _hex(data.get("traceId"), "traceId", _TRACE_ID, "16 or 32 hex digits")
    span_id = _hex(data.get("id"), "id", _HEX16, "16 hex digits")
    parent = data.get("parentId")
    parent_id = None if parent is None else _hex(parent, "parentId", _HEX16, "16 hex digits")
    name = _optional_str(data.get("name"), "name")
    kind = data.get("kind")
    if kind is not None and kind not in SPAN_KINDS:
        raise SpanError(f"kind: {kind!r} is not one of {', '.join(SPAN_KINDS)}")
    return Span(
        trace_id=trace_id,
        id=span_id,
        parent_id=parent_id if parent_id != span_id else None,
        name=name.lower() if name else None,
        kind=kind,
        timestamp=_micros(data.get("timestamp"), "timestamp") or None,
        duration=_micros(data.get("duration"), "duration") or None,
        local=_endpoint(data.get("localEndpoint"), "localEndpoint"),
        remote=_endpoint(data.get("remoteEndpoint"), "remoteEndpoint"),
        annotations=_annotations(data.get("annotations")),
        tags=_tags(data.get("tags")),
        shared=_flag(data.get("shared"), "shared"),
        debug=_flag(data.get("debug"), "debug"),
    )


@dataclass(frozen=True)
class RefusedSpan:
    index: int
    """Where the span was in its batch, from 0."""
    reason: str


def parse_spans(data: object) -> tuple[list[Span], list[RefusedSpan]]:
    """A batch (a JSON list of spans): the good ones, and why each bad one was refused."""
    if not isinstance(data, list):
        raise SpanError("a batch of spans is a JSON list")
    good: list[Span] = []
    refused: list[RefusedSpan] = []
    for index, item in enumerate(data):
        try:
            good.append(parse_span(item))
        except SpanError as exc:
            refused.append(RefusedSpan(index, str(exc)))
    return good, refused


# --- queries --------------------------------------------------------------------------------


@dataclass(frozen=True)
class TraceQuery:
    """Zipkin's ``GET /api/v2/traces`` parameters; durations in µs, times in ms."""

    end_ts_ms: int
    lookback_ms: int = DEFAULT_LOOKBACK_MS
    limit: int = DEFAULT_LIMIT
    service_name: str | None = None
    remote_service_name: str | None = None
    span_name: str | None = None
    min_duration: int | None = None
    max_duration: int | None = None
    annotation_query: tuple[tuple[str, str | None], ...] = ()
    """Terms joined by ``and``: ``key=value`` (a tag with that value) or ``key`` (a tag with
    that key, or an annotation with that value)."""


def parse_annotation_query(text: str) -> tuple[tuple[str, str | None], ...]:
    terms: list[tuple[str, str | None]] = []
    for raw in re.split(r"\s+and\s+", text.strip()):
        if not raw.strip():
            continue
        key, sep, value = raw.partition("=")
        terms.append((key.strip(), value.strip() if sep else None))
    return tuple(terms)


def parse_trace_query(params: Mapping[str, str], now_ms: int) -> TraceQuery:
    """Raises ValueError naming the parameter that is not what Zipkin takes."""

    def number(name: str, minimum: int) -> int | None:
        raw = params.get(name)
        if raw is None or raw == "":
            return None
        try:
            value = int(raw)
        except ValueError:
            raise ValueError(f"{name}: {raw!r} is not a whole number") from None
        if value < minimum:
            raise ValueError(f"{name}: {value} is below {minimum}")
        return value

    def name(key: str) -> str | None:
        raw = params.get(key)
        # The Zipkin UI sends "all" for "any service".
        return raw.lower() if raw and raw.lower() != "all" else None

    end_ts = number("endTs", 1)
    lookback = number("lookback", 1)
    limit = number("limit", 1)
    return TraceQuery(
        end_ts_ms=now_ms if end_ts is None else end_ts,
        lookback_ms=DEFAULT_LOOKBACK_MS if lookback is None else lookback,
        limit=DEFAULT_LIMIT if limit is None else limit,
        service_name=name("serviceName"),
        remote_service_name=name("remoteServiceName"),
        span_name=name("spanName"),
        min_duration=number("minDuration", 0),
        max_duration=number("maxDuration", 0),
        annotation_query=parse_annotation_query(params.get("annotationQuery", "")),
    )


def trace_start(spans: Iterable[Span]) -> int | None:
    times = [s.timestamp for s in spans if s.timestamp is not None]
    return min(times) if times else None


def _term_matches(span: Span, key: str, value: str | None) -> bool:
    if value is None:
        return key in span.tags or any(a.value == key for a in span.annotations)
    return span.tags.get(key) == value


def trace_matches(spans: Sequence[Span], query: TraceQuery) -> bool:
    """Zipkin's rule: the trace started in the window, and the spans of the asked service
    (all spans when none is asked) between them have every asked property."""
    start = trace_start(spans)
    if start is None:
        return False
    end_us = query.end_ts_ms * 1000
    if not end_us - query.lookback_ms * 1000 <= start <= end_us:
        return False
    candidates = [s for s in spans if query.service_name in (None, s.service)]
    if not candidates:
        return False
    if query.remote_service_name is not None and not any(
        s.remote_service == query.remote_service_name for s in candidates
    ):
        return False
    named = [s for s in candidates if query.span_name in (None, s.name)]
    if not named:
        return False
    if query.min_duration is not None or query.max_duration is not None:
        low = query.min_duration or 0
        high = query.max_duration
        if not any(
            s.duration is not None and s.duration >= low and (high is None or s.duration <= high)
            for s in named
        ):
            return False
    return all(
        any(_term_matches(s, key, value) for s in candidates)
        for key, value in query.annotation_query
    )


# --- the store ------------------------------------------------------------------------------


@dataclass(frozen=True)
class TraceLimits:
    max_traces: int = 2000
    max_spans: int = 50_000
    """In all traces together: about 2 KB each as Envoy writes them, so ~100 MB at most."""
    max_spans_per_trace: int = 500
    max_age_seconds: float = 3600.0
    max_bytes: int = 100_000_000
    """In all traces together, as ``span_bytes`` estimates them: what holds the ~100 MB when
    spans are far bigger than Envoy's."""
    max_tags_per_span: int = 64
    max_annotations_per_span: int = 64
    max_text_bytes: int = 1024
    """Per tag key, tag value, annotation value and name; longer ones are cut (UTF-8)."""


# What a span costs beyond its text, and each tag or annotation beyond its text: Python's
# objects, roughly (a span as Envoy writes it comes to ~2 KB).
_SPAN_OVERHEAD_BYTES = 1000
_ITEM_OVERHEAD_BYTES = 150


def span_bytes(span: Span) -> int:
    """About what ``span`` costs in memory; the store's byte bound counts this."""
    text = sum(len(k) + len(v) + _ITEM_OVERHEAD_BYTES for k, v in span.tags.items())
    text += sum(len(a.value) + _ITEM_OVERHEAD_BYTES for a in span.annotations)
    text += len(span.name or "")
    for endpoint in (span.local, span.remote):
        if endpoint is not None:
            text += len(endpoint.service_name or "") + len(endpoint.ipv4 or "")
            text += len(endpoint.ipv6 or "")
    return _SPAN_OVERHEAD_BYTES + text


def _cut(text: str, limit: int) -> str:
    if len(text) * 4 <= limit:  # no UTF-8 text of this length can be too long
        return text
    return text.encode()[:limit].decode(errors="ignore")


def bounded_span(span: Span, limits: TraceLimits) -> Span:
    """``span`` with at most the limits' tags and annotations (the first ones), each text cut
    to ``max_text_bytes``; ``span`` itself when it is within them."""
    size = limits.max_text_bytes
    tags = {
        _cut(k, size): _cut(v, size) for k, v in list(span.tags.items())[: limits.max_tags_per_span]
    }
    annotations = tuple(
        a if _cut(a.value, size) == a.value else Annotation(a.timestamp, _cut(a.value, size))
        for a in span.annotations[: limits.max_annotations_per_span]
    )
    name = _cut(span.name, size) if span.name else span.name
    local, remote = (_bounded_endpoint(e, size) for e in (span.local, span.remote))
    cut = replace(span, tags=tags, annotations=annotations, name=name, local=local, remote=remote)
    return span if cut == span else cut


def _bounded_endpoint(endpoint: Endpoint | None, size: int) -> Endpoint | None:
    if endpoint is None:
        return None
    return replace(
        endpoint,
        service_name=_cut(endpoint.service_name, size) if endpoint.service_name else None,
        ipv4=_cut(endpoint.ipv4, size) if endpoint.ipv4 else None,
        ipv6=_cut(endpoint.ipv6, size) if endpoint.ipv6 else None,
    )


@dataclass
class _Trace:
    received_at: float
    spans: dict[tuple[str, bool, str | None, str | None], Span] = field(default_factory=dict)
    bytes: int = 0


@dataclass
class TraceStoreCounts:
    spans_accepted: int = 0
    spans_refused: int = 0
    """Invalid spans (the batch's other spans were kept)."""
    spans_dropped: int = 0
    """Valid spans not kept: their trace already had ``max_spans_per_trace``."""
    spans_cut: int = 0
    """Spans kept with fewer tags or annotations, or shorter texts, than they came with."""
    traces_evicted: int = 0
    """Traces dropped to make room for newer ones."""
    traces_expired: int = 0
    """Traces dropped for their age."""

    def to_json(self) -> dict[str, int]:
        return dict(vars(self))


def trace_key(trace_id: str) -> str:
    return trace_id[-16:]


class TraceStore:
    """Recent traces, the oldest received out first. ``clock`` gives seconds (monotonic)."""

    def __init__(self, limits: TraceLimits | None = None, clock: Callable[[], float] | None = None):
        self.limits = limits or TraceLimits()
        self._clock = clock or time.monotonic
        self._traces: OrderedDict[str, _Trace] = OrderedDict()
        self._span_count = 0
        self._bytes = 0
        self.counts = TraceStoreCounts()

    def __len__(self) -> int:
        self._expire()
        return len(self._traces)

    def add(self, spans: Iterable[Span]) -> None:
        self._expire()
        now = self._clock()
        for received in spans:
            span = bounded_span(received, self.limits)
            if span is not received:
                self.counts.spans_cut += 1
            size = span_bytes(span)
            key = trace_key(span.trace_id)
            trace = self._traces.get(key)
            if trace is None:
                while len(self._traces) >= self.limits.max_traces:
                    self._evict_oldest()
                trace = self._traces[key] = _Trace(now)
            # The same span reported twice (a retried POST) replaces itself; a client and a
            # server sharing an id (B3's shared span) are two spans.
            span_key = (span.id, span.shared, span.kind, span.service)
            old = trace.spans.get(span_key)
            if old is None:
                if len(trace.spans) >= self.limits.max_spans_per_trace:
                    self.counts.spans_dropped += 1
                    continue
                while self._span_count >= self.limits.max_spans and len(self._traces) > 1:
                    self._evict_oldest(keep=key)
                self._span_count += 1
            else:
                trace.bytes -= span_bytes(old)
                self._bytes -= span_bytes(old)
            while self._bytes + size > self.limits.max_bytes and len(self._traces) > 1:
                self._evict_oldest(keep=key)
            trace.spans[span_key] = span
            trace.bytes += size
            self._bytes += size
            self.counts.spans_accepted += 1

    def _evict_oldest(self, keep: str | None = None) -> None:
        """Drop the trace received first (but not ``keep``, the one being added to)."""
        oldest = next(k for k in self._traces if k != keep)
        self._forget(self._traces.pop(oldest))
        self.counts.traces_evicted += 1

    def _forget(self, trace: _Trace) -> None:
        self._span_count -= len(trace.spans)
        self._bytes -= trace.bytes

    @property
    def span_count(self) -> int:
        self._expire()
        return self._span_count

    @property
    def bytes(self) -> int:
        """The kept spans' ``span_bytes`` together."""
        self._expire()
        return self._bytes

    def refused(self, count: int) -> None:
        self.counts.spans_refused += count

    def _expire(self) -> None:
        oldest_kept = self._clock() - self.limits.max_age_seconds
        while self._traces:
            first = next(iter(self._traces.values()))
            if first.received_at >= oldest_kept:
                break
            self._forget(self._traces.popitem(last=False)[1])
            self.counts.traces_expired += 1

    def _all(self) -> list[list[Span]]:
        self._expire()
        return [list(t.spans.values()) for t in self._traces.values()]

    def _spans(self) -> Iterable[Span]:
        for spans in self._all():
            yield from spans

    def services(self) -> list[str]:
        return sorted({s.service for s in self._spans() if s.service})

    def span_names(self, service: str) -> list[str]:
        service = service.lower()
        return sorted({s.name for s in self._spans() if s.service == service and s.name})

    def remote_services(self, service: str) -> list[str]:
        service = service.lower()
        return sorted(
            {s.remote_service for s in self._spans() if s.service == service and s.remote_service}
        )

    def traces(self, query: TraceQuery) -> list[list[Span]]:
        """The matching traces, the most recent first, at most ``query.limit``."""
        found = [_ordered(spans) for spans in self._all() if trace_matches(spans, query)]
        found.sort(key=lambda spans: trace_start(spans) or 0, reverse=True)
        return found[: query.limit]

    def trace(self, trace_id: str) -> list[Span] | None:
        """One trace's spans, by a 16- or 32-hex id; None when unknown or not an id."""
        wanted = trace_id.lower()
        if not _TRACE_ID.fullmatch(wanted):
            return None
        self._expire()
        stored = self._traces.get(trace_key(wanted))
        if stored is None:
            return None
        # A 32-hex id asks for that trace only; 16-hex spans of it (the low half) belong too.
        spans = [
            s
            for s in stored.spans.values()
            if len(wanted) == 16 or s.trace_id in (wanted, wanted[16:])
        ]
        return _ordered(spans) or None


def _ordered(spans: Iterable[Span]) -> list[Span]:
    return sorted(spans, key=lambda s: (s.timestamp or 0, s.shared, s.id))


def spans_to_json(spans: Iterable[Span]) -> list[dict[str, object]]:
    return [s.to_json() for s in spans]
