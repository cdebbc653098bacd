"""Small protobuf values every generator needs: durations, percentages, the ADS config source."""

from __future__ import annotations

from envoy.config.core.v3 import config_source_pb2
from envoy.type.v3 import percent_pb2
from google.protobuf import any_pb2, duration_pb2
from google.protobuf.message import Message

_NANOS_PER_SECOND = 1_000_000_000


def duration_from_seconds(seconds: float) -> duration_pb2.Duration:
    # Round to whole milliseconds first so that 0.1 s does not become 99999999 ns.
    total_nanos = round(seconds * 1000) * 1_000_000
    whole, nanos = divmod(total_nanos, _NANOS_PER_SECOND)
    return duration_pb2.Duration(seconds=whole, nanos=nanos)


def percent_to_fraction(percent: float) -> percent_pb2.FractionalPercent:
    # Per million keeps fractions such as Istio's 0.1% exact.
    return percent_pb2.FractionalPercent(
        numerator=round(percent * 10_000),
        denominator=percent_pb2.FractionalPercent.MILLION,
    )


def ads_config_source() -> config_source_pb2.ConfigSource:
    return config_source_pb2.ConfigSource(
        ads=config_source_pb2.AggregatedConfigSource(),
        resource_api_version=config_source_pb2.V3,
    )


def pack(message: Message) -> any_pb2.Any:
    packed = any_pb2.Any()
    packed.Pack(message)
    return packed


def format_literal(text: str) -> str:
    """``text`` for an Envoy format string (headers, bodies, logs): a ``%`` of ours must not
    read as the start of a command operator."""
    return text.replace("%", "%%")
