"""The loader never raises on any text, and every diagnostic points inside the file."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st
from load_cases import BOOKINFO_REGISTRY, REVIEWS_RULE, documents

from pilotfish.load import LoadResult, load_text
from pilotfish.load.loader import INTERNAL_ERROR

VALID = documents(
    REVIEWS_RULE,
    """\
    apiVersion: networking.istio.io/v1
    kind: VirtualService
    metadata: {name: reviews}
    spec:
      hosts: [reviews]
      http:
      - match:
        - uri: {regex: "^/api/[a-z]+"}
        retries: {attempts: 2, retryOn: "5xx"}
        route:
        - destination: {host: reviews, subset: v1}
          weight: 50
        - destination: {host: reviews, subset: v2}
          weight: 50
    """,
    *BOOKINFO_REGISTRY[:3],
)

# Pieces that make text look like YAML, so the search reaches the parser's corners and our
# field readers rather than failing on the first character.
YAML_FRAGMENTS = st.sampled_from(
    [
        "\n",
        "  ",
        "- ",
        ": ",
        "---\n",
        "...\n",
        "{",
        "}",
        "[",
        "]",
        ",",
        "'",
        '"',
        "#",
        "&a ",
        "*a",
        "!tag ",
        "<<: ",
        "? ",
        "|\n",
        ">\n",
        "\t",
        "null",
        "true",
        "0x1F",
        "1e3",
        "7s",
        "apiVersion",
        "kind",
        "metadata",
        "name",
        "spec",
        "hosts",
        "http",
        "route",
        "destination",
        "host",
        "weight",
        "networking.istio.io/v1",
        "VirtualService",
        "DestinationRule",
        "Workload",
        "pilotfish.io/v1alpha1",
        "reviews",
        "subset",
        "v1",
        "port",
        "number",
        "command",
        "regex",
        "(?=x)",
        "\\",
        "%YAML 1.2\n",
        "\ufeff",
        "\x00",
        "\u2028",
        # Unicode digits: str.isdigit() accepts them, int() may not.
        "²",
        "\uff15",  # FULLWIDTH DIGIT FIVE
        "٣",
        "retries",
        "attempts",
        "retryOn",
        "headers",
        "set",
        ":path",
        "\r",
        "1ns",
        "consistentHash",
        "useSourceIp",
        "false",
    ]
)


def line_count(text: str) -> int:
    """Lines as a parser counts them: a final line without a newline still counts."""
    return max(1, len(text.splitlines()) or 1, text.count("\n") + 1)


def assert_within(result: LoadResult, text: str) -> None:
    """Every diagnostic points inside the text, and none is a crash turned into a message."""
    lines = line_count(text)
    for diagnostic in result.diagnostics:
        assert not diagnostic.message.startswith(INTERNAL_ERROR), diagnostic
        assert 1 <= diagnostic.line <= lines, (diagnostic, lines)
        assert diagnostic.col >= 1
    assert (result.config is None) == any(d.severity == "error" for d in result.diagnostics)


@settings(deadline=None, max_examples=150)
@given(st.text(max_size=300))
def test_arbitrary_text_never_raises(text: str) -> None:
    assert_within(load_text(text, "fuzz.yaml"), text)


@settings(deadline=None, max_examples=300)
@given(st.lists(YAML_FRAGMENTS, max_size=60).map("".join))
def test_yaml_ish_text_never_raises(text: str) -> None:
    assert_within(load_text(text, "fuzz.yaml"), text)


@settings(deadline=None, max_examples=200)
@given(
    st.integers(min_value=0, max_value=len(VALID)),
    st.integers(min_value=0, max_value=40),
    st.lists(YAML_FRAGMENTS, max_size=4).map("".join),
)
def test_damaged_valid_config_never_raises(position: int, cut: int, insert: str) -> None:
    text = VALID[:position] + insert + VALID[position + cut :]
    assert_within(load_text(text, "fuzz.yaml"), text)


def test_the_undamaged_config_is_valid() -> None:
    result = load_text(VALID, "fuzz.yaml")
    assert result.diagnostics == ()
