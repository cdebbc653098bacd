"""The text exposition format 0.0.4, as Prometheus parses it."""

from __future__ import annotations

import math

import pytest

from pilotfish.telemetry.prometheus import (
    Histogram,
    HistogramSample,
    MetricFamily,
    Sample,
    format_value,
    render,
)


def test_counter_and_gauge() -> None:
    text = render(
        [
            MetricFamily("a_total", "Things.", "counter", [Sample((("k", "v"),), 3)]),
            MetricFamily("b", "Now.", "gauge", [Sample((), 1.5), Sample((("x", "1"),), 0)]),
        ]
    )
    assert text == (
        "# HELP a_total Things.\n"
        "# TYPE a_total counter\n"
        'a_total{k="v"} 3\n'
        "# HELP b Now.\n"
        "# TYPE b gauge\n"
        "b 1.5\n"
        'b{x="1"} 0\n'
    )


def test_label_values_and_help_are_escaped() -> None:
    family = MetricFamily("m", "A \\ help\nline.", "gauge", [Sample((("path", 'a"b\\c\nd'),), 1)])
    assert render([family]).splitlines() == [
        "# HELP m A \\\\ help\\nline.",
        "# TYPE m gauge",
        'm{path="a\\"b\\\\c\\nd"} 1',
    ]


def test_histogram_buckets_are_cumulative_and_end_with_inf() -> None:
    histogram = Histogram((1.0, 5.0))
    for value in (0.5, 1.0, 3.0, 7.0):
        histogram.observe(value)
    text = render([MetricFamily("d", "D.", "histogram", [histogram.sample((("r", "s"),))])])
    assert text.splitlines()[2:] == [
        'd_bucket{r="s",le="1"} 2',
        'd_bucket{r="s",le="5"} 3',
        'd_bucket{r="s",le="+Inf"} 4',
        'd_sum{r="s"} 11.5',
        'd_count{r="s"} 4',
    ]


def test_a_histogram_needs_a_count_per_bucket_and_one_for_inf() -> None:
    with pytest.raises(ValueError, match="needs 3 counts"):
        HistogramSample((), (1.0, 2.0), (1, 2), 3.0)


def test_values() -> None:
    assert format_value(3.0) == "3"
    assert format_value(0.25) == "0.25"
    assert format_value(math.inf) == "+Inf"
    assert format_value(-math.inf) == "-Inf"
    assert format_value(math.nan) == "NaN"
    assert format_value(1e20) == "1e+20"


def test_nothing_renders_as_nothing() -> None:
    assert render([]) == ""
