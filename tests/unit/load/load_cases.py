"""Shared builders for the loader's unit tests: YAML snippets and diagnostic lookups."""

from __future__ import annotations

import textwrap

from pilotfish.load import LoadResult, load_text
from pilotfish.model.diagnostics import Diagnostic

FILENAME = "mesh.yaml"


def workload(
    name: str,
    service: str,
    *,
    port: int = 9080,
    version: str = "v1",
    protocol: str = "HTTP",
) -> str:
    return textwrap.dedent(
        f"""\
        apiVersion: pilotfish.io/v1alpha1
        kind: Workload
        metadata:
          name: {name}
        spec:
          service: {service}
          port: {port}
          protocol: {protocol}
          labels:
            version: {version}
          command: ["python3", "app.py"]
        """
    )


BOOKINFO_REGISTRY = [
    workload("productpage-v1", "productpage"),
    workload("details-v1", "details"),
    workload("reviews-v1", "reviews", version="v1"),
    workload("reviews-v2", "reviews", version="v2"),
    workload("reviews-v3", "reviews", version="v3"),
    workload("ratings-v1", "ratings"),
]

REVIEWS_RULE = textwrap.dedent(
    """\
    apiVersion: networking.istio.io/v1
    kind: DestinationRule
    metadata:
      name: reviews
    spec:
      host: reviews
      subsets:
      - name: v1
        labels: {version: v1}
      - name: v2
        labels: {version: v2}
    """
)


def documents(*parts: str) -> str:
    """Join YAML documents (each dedented) into one multi-document text."""
    return "---\n".join(textwrap.dedent(part) for part in parts)


def load(*parts: str) -> tuple[str, LoadResult]:
    text = documents(*parts)
    return text, load_text(text, FILENAME)


def position_of(text: str, needle: str, occurrence: int = 1) -> tuple[int, int]:
    """1-based line and column of the ``occurrence``-th ``needle`` in ``text``."""
    start = -1
    for _ in range(occurrence):
        start = text.index(needle, start + 1)
    line = text.count("\n", 0, start) + 1
    col = start - (text.rfind("\n", 0, start) + 1) + 1
    return line, col


def find(result: LoadResult, field: str) -> Diagnostic:
    """The single diagnostic for ``field``; fails listing everything when there is not one."""
    matching = [d for d in result.diagnostics if d.field == field]
    assert len(matching) == 1, f"expected one diagnostic for {field!r}, got {result.diagnostics}"
    return matching[0]


def assert_at(
    result: LoadResult,
    text: str,
    field: str,
    needle: str,
    message_part: str,
    *,
    severity: str = "error",
    occurrence: int = 1,
) -> Diagnostic:
    """The one diagnostic for ``field``: at ``needle``'s position, saying ``message_part``."""
    diagnostic = find(result, field)
    assert diagnostic.file == FILENAME
    assert (diagnostic.line, diagnostic.col) == position_of(text, needle, occurrence)
    assert message_part in diagnostic.message
    assert diagnostic.severity == severity
    if severity == "error":
        assert result.config is None
    return diagnostic


def errors(result: LoadResult) -> list[str]:
    return [str(d) for d in result.diagnostics if d.severity == "error"]
