"""The pure RESP half of our Redis client: commands encoded as Redis reads them, replies
parsed in order whatever the reads split, anything else refused."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pilotfish.controller.redis_pipeline import (
    MAX_REPLY_LINE,
    RedisConnectionError,
    ReplyError,
    ReplyParser,
    encode_command,
)


def test_a_command_is_an_array_of_bulk_strings() -> None:
    assert encode_command(b"INCRBY", "pilotfish_a", 3) == (
        b"*3\r\n$6\r\nINCRBY\r\n$11\r\npilotfish_a\r\n$1\r\n3\r\n"
    )


def test_bulk_lengths_count_bytes_not_characters() -> None:
    # A key built from a header value may hold any UTF-8 (and CR LF: a bulk string is
    # sized, not delimited).
    assert encode_command("ä\r\n") == b"*1\r\n$4\r\n\xc3\xa4\r\n\r\n"


def test_integers_and_errors_in_order() -> None:
    replies = ReplyParser().feed(b":1\r\n:-7\r\n-ERR value is not an integer\r\n:0\r\n")
    assert replies == [1, -7, ReplyError("ERR value is not an integer"), 0]


def test_a_reply_split_across_reads_waits_for_its_end() -> None:
    parser = ReplyParser()
    assert parser.feed(b":12") == []
    assert parser.feed(b"34\r") == []
    assert parser.feed(b"\n:5\r\n-WRONG") == [1234, 5]
    assert parser.feed(b"TYPE no\r\n") == [ReplyError("WRONGTYPE no")]


@given(
    st.lists(st.integers(min_value=-(2**63), max_value=2**63 - 1), max_size=20),
    st.lists(st.integers(min_value=1, max_value=7), max_size=40),
)
def test_any_split_gives_the_same_replies(values: list[int], cuts: list[int]) -> None:
    stream = b"".join(b":%d\r\n" % value for value in values)
    parser, got, position = ReplyParser(), [], 0
    for cut in cuts:
        got += parser.feed(stream[position : position + cut])
        position += cut
    got += parser.feed(stream[position:])
    assert got == values


@pytest.mark.parametrize(
    "garbage",
    [
        b"+OK\r\n",  # a status: no command we send answers one
        b"$1\r\na\r\n",  # a bulk string
        b"*1\r\n:1\r\n",  # an array
        b":12a\r\n",  # not an integer
        b":\r\n",
        b"HTTP/1.1 400 Bad Request\r\n",  # not Redis at all
    ],
)
def test_anything_else_breaks_the_connection(garbage: bytes) -> None:
    with pytest.raises(RedisConnectionError, match="unexpected reply"):
        ReplyParser().feed(b":1\r\n" + garbage)


def test_a_line_without_end_is_refused_past_its_bound() -> None:
    parser = ReplyParser()
    parser.feed(b":" + b"1" * (MAX_REPLY_LINE - 1))
    with pytest.raises(RedisConnectionError, match="reply line of more than"):
        parser.feed(b"11")
