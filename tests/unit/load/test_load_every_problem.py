"""One mistake never hides another: every problem of a document is reported in one load."""

from __future__ import annotations

import textwrap

import pytest
from load_cases import BOOKINFO_REGISTRY, REVIEWS_RULE, documents, position_of

from pilotfish.load import LoadResult, load_texts

ROUTES = "routes.yaml"

# Each mistake is independent of the others: (route text, field, text it points at, message).
MISTAKES = [
    (
        """\
        - match:
          - uri: {regex: '(?=lookahead)'}
          route:
          - destination: {host: reviews, subset: v1}
        """,
        "spec.http[{i}].match[0].uri.regex",
        "regex: '(?=lookahead)'",
        "rejected by RE2",
    ),
    (
        """\
        - route:
          - destination: {host: reviews, subset: v9}
        """,
        "spec.http[{i}].route[0].destination.subset",
        "subset: v9",
        'subset "v9" is not defined',
    ),
    (
        """\
        - route:
          - destination: {host: nowhere}
        """,
        "spec.http[{i}].route[0].destination.host",
        "host: nowhere",
        'unknown service "nowhere"',
    ),
    (
        """\
        - timeout: 3 seconds
          route:
          - destination: {host: reviews, subset: v1}
        """,
        "spec.http[{i}].timeout",
        "timeout: 3 seconds",
        "",
    ),
    (
        """\
        - retries: {attempts: 2, retryOn: sometimes}
          route:
          - destination: {host: reviews, subset: v1}
        """,
        "spec.http[{i}].retries.retryOn",
        "retryOn: sometimes",
        'unknown retry condition "sometimes"',
    ),
]


def _virtual_service(order: list[int]) -> str:
    routes = "".join(textwrap.dedent(MISTAKES[index][0]) for index in order)
    return (
        "apiVersion: networking.istio.io/v1\n"
        "kind: VirtualService\n"
        "metadata: {name: reviews}\n"
        "spec:\n"
        "  hosts: [reviews]\n"
        "  http:\n" + textwrap.indent(routes, "  ")
    )


def _load(text: str) -> LoadResult:
    return load_texts(
        [
            (ROUTES, text),
            ("rules.yaml", REVIEWS_RULE),
            ("registry.yaml", documents(*BOOKINFO_REGISTRY)),
        ]
    )


@pytest.mark.parametrize("order", [[0, 1, 2, 3, 4], [4, 3, 2, 1, 0], [2, 0, 4, 1, 3]])
def test_every_mistake_of_one_document_is_reported_whatever_the_order(order: list[int]) -> None:
    text = _virtual_service(order)
    result = _load(text)
    expected = []
    for position, index in enumerate(order):
        _, field, needle, message = MISTAKES[index]
        expected.append((ROUTES, *position_of(text, needle), field.format(i=position), message))
    found = [(d.file, d.line, d.col, d.field, d.message) for d in result.errors]
    assert len(found) == len(expected), result.diagnostics
    for got, want in zip(sorted(found), sorted(expected), strict=True):
        assert got[:4] == want[:4]
        assert want[4] in got[4]
    assert result.config is None


def test_a_backslash_in_double_quotes_is_reported_and_the_rest_still_checked() -> None:
    text = textwrap.dedent(
        """\
        apiVersion: networking.istio.io/v1
        kind: VirtualService
        metadata: {name: reviews}
        spec:
          hosts: [reviews]
          http:
          - match:
            - uri: {regex: "^/v\\d+"}
            route:
            - destination: {host: reviews, subset: v9}
            - destination: {host: nowhere}
        """
    )
    result = _load(text)
    by_field = {d.field: d for d in result.diagnostics}
    quoting = by_field[""]
    assert (quoting.line, quoting.col) == position_of(text, "d+")
    assert "write a regex in single quotes" in quoting.message
    assert set(by_field) == {
        "",
        "spec.http[0].route",  # two destinations, no weight: Istio's "total weight = 0"
        "spec.http[0].route[0].destination.subset",
        "spec.http[0].route[1].destination.host",
    }
    assert result.config is None


def test_a_document_without_a_name_still_reports_its_spec() -> None:
    text = textwrap.dedent(
        """\
        apiVersion: networking.istio.io/v1
        kind: VirtualService
        metadata: {namespace: default}
        spec:
          hosts: [reviews]
          http:
          - timeout: soon
            route:
            - destination: {host: reviews}
        """
    )
    result = _load(text)
    assert {d.field for d in result.errors} == {"metadata.name", "spec.http[0].timeout"}


def test_a_broken_file_hides_only_the_references_it_may_hold() -> None:
    """A VirtualService may name a subset defined in the part of a file that was lost; its
    other problems do not depend on that file and are still reported."""
    text = textwrap.dedent(
        """\
        apiVersion: networking.istio.io/v1
        kind: VirtualService
        metadata: {name: reviews}
        spec:
          hosts: [reviews]
          http:
          - route:
            - destination: {host: reviews, subset: maybe-in-the-broken-file}
              weight: 0
            - destination: {host: reviews}
              weight: 0
        """
    )
    result = load_texts(
        [
            (ROUTES, text),
            ("broken.yaml", "apiVersion: [unclosed\n"),
            ("registry.yaml", documents(*BOOKINFO_REGISTRY)),
        ]
    )
    assert {(d.file, d.field) for d in result.errors} == {
        ("broken.yaml", ""),
        (ROUTES, "spec.http[0].route"),
    }


def test_a_double_quoted_value_is_only_reread_when_nothing_but_its_quotes_change() -> None:
    """With a single quote inside, single quotes would change the value: no second guess."""
    text = 'apiVersion: v1\nkind: "it\'s \\d"\nmetadata: {name: x}\n'
    result = load_texts([(ROUTES, text)])
    (problem,) = result.diagnostics
    assert problem.message.startswith("invalid YAML: found unknown escape character")
    assert "single quotes" not in problem.message
