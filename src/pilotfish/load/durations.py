"""Durations as users write them: protobuf style ("7s", "0.5s") and Istio forms ("100ms", "1m")."""

from __future__ import annotations

import re
from decimal import Decimal

_UNIT_SECONDS = {
    "h": Decimal(3600),
    "m": Decimal(60),
    "s": Decimal(1),
    "ms": Decimal("0.001"),
    "us": Decimal("0.000001"),
    "µs": Decimal("0.000001"),
    "ns": Decimal("0.000000001"),
}

# Longer units first so that "ms" is not read as "m" followed by a stray "s". Digits are
# ASCII only: Python's \d (and Decimal) would read "٣s" as three seconds, which no other
# Istio tool accepts.
_TERM = re.compile(r"([0-9]+(?:\.[0-9]*)?|\.[0-9]+)(ms|us|µs|ns|h|m|s)")


# google.protobuf.Duration's documented range, which Envoy enforces on every duration field.
_PROTOBUF_MAX_SECONDS = Decimal(315_576_000_000)


class DurationError(ValueError):
    pass


def parse_duration(text: str) -> float:
    """Seconds in ``text``; raises ``DurationError`` naming the accepted forms.

    Decimal arithmetic keeps "0.1s" + "100ms" forms exact before the single float conversion.
    """
    stripped = text.strip()
    if not stripped:
        raise DurationError("empty duration")
    if stripped.startswith("-"):
        raise DurationError(f"negative duration {text!r}")
    total = Decimal(0)
    position = 0
    while position < len(stripped):
        term = _TERM.match(stripped, position)
        if term is None:
            raise DurationError(
                f"invalid duration {text!r}: expected forms like 7s, 0.5s, 100ms, 1m, 1h30m"
            )
        total += Decimal(term.group(1)) * _UNIT_SECONDS[term.group(2)]
        position = term.end()
    if total > _PROTOBUF_MAX_SECONDS:
        raise DurationError(f"duration {text!r} is longer than protobuf allows (10,000 years)")
    return float(total)
