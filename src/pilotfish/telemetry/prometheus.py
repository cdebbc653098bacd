"""Prometheus's text exposition format, version 0.0.4, written out from plain values.

One ``MetricFamily`` per metric name: ``# HELP`` and ``# TYPE`` lines, then one line per
series (a histogram: cumulative ``_bucket{le=...}`` lines ending with ``+Inf``, then ``_sum``
and ``_count``). Label values are escaped (backslash, double quote, newline), HELP text too
(backslash, newline). No timestamps: Prometheus stamps what it scrapes.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Literal

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

MetricType = Literal["counter", "gauge", "histogram"]
Labels = tuple[tuple[str, str], ...]


@dataclass(frozen=True, slots=True)
class Sample:
    """One series of a counter or gauge."""

    labels: Labels
    value: float


@dataclass(frozen=True, slots=True)
class HistogramSample:
    """One series of a histogram. ``counts[i]`` is the number of observations in bucket i
    alone (``bounds[i-1] < x <= bounds[i]``); the last count is above every bound."""

    labels: Labels
    bounds: tuple[float, ...]
    counts: tuple[int, ...]
    total: float

    def __post_init__(self) -> None:
        if len(self.counts) != len(self.bounds) + 1:
            raise ValueError(
                f"a histogram with {len(self.bounds)} bounds needs {len(self.bounds) + 1} "
                f"counts (the last for +Inf), not {len(self.counts)}"
            )


@dataclass(frozen=True, slots=True)
class MetricFamily:
    name: str
    help: str
    type: MetricType
    samples: Sequence[Sample | HistogramSample]


class Histogram:
    """Observations counted into fixed buckets, for one series."""

    __slots__ = ("bounds", "counts", "total")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)
        self.total = 0.0

    def observe(self, value: float) -> None:
        # bisect_left: a value equal to a bound belongs to that bound's bucket (le = "<=").
        self.counts[bisect.bisect_left(self.bounds, value)] += 1
        self.total += value

    def sample(self, labels: Labels) -> HistogramSample:
        return HistogramSample(labels, self.bounds, tuple(self.counts), self.total)


def render(families: Iterable[MetricFamily]) -> str:
    lines: list[str] = []
    for family in families:
        lines.append(f"# HELP {family.name} {_escape_help(family.help)}")
        lines.append(f"# TYPE {family.name} {family.type}")
        for sample in family.samples:
            if isinstance(sample, HistogramSample):
                _histogram_lines(family.name, sample, lines)
            else:
                lines.append(f"{family.name}{_labels(sample.labels)} {format_value(sample.value)}")
    return "\n".join(lines) + "\n" if lines else ""


def format_value(value: float) -> str:
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if value == int(value) and abs(value) < 2**53:
        return str(int(value))
    return repr(float(value))


def escape_label_value(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _escape_help(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n")


def _labels(labels: Labels) -> str:
    if not labels:
        return ""
    return "{" + ",".join(f'{k}="{escape_label_value(v)}"' for k, v in labels) + "}"


def _histogram_lines(name: str, sample: HistogramSample, lines: list[str]) -> None:
    running = 0
    for bound, count in zip((*sample.bounds, math.inf), sample.counts, strict=True):
        running += count
        le = (*sample.labels, ("le", format_value(bound)))
        lines.append(f"{name}_bucket{_labels(le)} {running}")
    lines.append(f"{name}_sum{_labels(sample.labels)} {format_value(sample.total)}")
    lines.append(f"{name}_count{_labels(sample.labels)} {running}")
