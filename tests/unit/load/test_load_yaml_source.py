from __future__ import annotations

import textwrap

import pytest
from load_cases import position_of

from pilotfish.load.durations import DurationError, parse_duration
from pilotfish.load.yaml_source import parse_documents

ROUTES = textwrap.dedent(
    """\
    # leading comment
    apiVersion: networking.istio.io/v1
    kind: VirtualService
    metadata:
      name: reviews
    spec:
      hosts: [reviews, "ratings"]
      http:
      - route:
        - destination:
            host: reviews
          weight: 90
        - destination:
            host: reviews
            subset: v2
          weight: 10
    """
)


def test_every_field_path_has_its_key_position() -> None:
    (document,), problems = parse_documents(ROUTES, "r.yaml")
    assert problems == []
    positions = document.source.positions
    assert positions["apiVersion"] == position_of(ROUTES, "apiVersion")
    assert positions["metadata.name"] == position_of(ROUTES, "name: reviews")
    assert positions["spec.http[0]"] == position_of(ROUTES, "route:")
    assert positions["spec.http[0].route[1]"] == position_of(ROUTES, "destination:", 2)
    assert positions["spec.http[0].route[1].destination.host"] == position_of(ROUTES, "host:", 2)
    assert positions["spec.http[0].route[1].destination.subset"] == position_of(ROUTES, "subset")
    assert positions["spec.http[0].route[1].weight"] == position_of(ROUTES, "weight: 10")


def test_flow_sequence_items_point_at_each_item() -> None:
    (document,), _ = parse_documents(ROUTES, "r.yaml")
    assert document.source.positions["spec.hosts[1]"] == position_of(ROUTES, '"ratings"')


def test_values_are_plain_python_types() -> None:
    (document,), _ = parse_documents("a: 1\nb: 2.5\nc: yes\nd: [x]\ne: 0x10\n", "t.yaml")
    assert document.body == {"a": 1, "b": 2.5, "c": "yes", "d": ["x"], "e": 16}
    assert isinstance(document.body, dict)
    assert type(document.body["e"]) is int


def test_documents_are_split_and_empty_ones_skipped() -> None:
    documents, problems = parse_documents("a: 1\n---\n---\nb: 2\n---\n", "t.yaml")
    assert problems == []
    assert [d.body for d in documents] == [{"a": 1}, {"b": 2}]
    assert documents[1].source.positions["b"] == (4, 1)


def test_malformed_yaml_reports_the_parser_line() -> None:
    text = "a: 1\n---\nkey: [unclosed\nother: 2\n"
    documents, (problem,) = parse_documents(text, "t.yaml")
    assert [d.body for d in documents] == [{"a": 1}]
    assert problem.file == "t.yaml"
    assert problem.line in (3, 4)
    assert problem.message.startswith("invalid YAML")


def test_duplicate_keys_are_a_syntax_problem() -> None:
    _, (problem,) = parse_documents("a: 1\na: 2\n", "t.yaml")
    assert problem.line == 2
    assert "invalid YAML" in problem.message


def test_alias_bombs_are_refused_not_expanded() -> None:
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]" for i in range(1, 7)]
    documents, (problem,) = parse_documents("\n".join(lines) + "\n", "bomb.yaml")
    assert documents == []
    assert "more than" in problem.message


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("7s", 7.0),
        ("0.5s", 0.5),
        ("100ms", 0.1),
        ("1m", 60.0),
        ("1h", 3600.0),
        ("1.5s", 1.5),
        ("1h30m", 5400.0),
        ("250us", 0.00025),
        ("0s", 0.0),
    ],
)
def test_durations_in_protobuf_and_istio_forms(text: str, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize(
    "text", ["", "7", "s", "-1s", "1d", "1.s.", "1 s", "ms", "10000000000000h"]
)
def test_invalid_durations_are_refused(text: str) -> None:
    with pytest.raises(DurationError):
        parse_duration(text)
