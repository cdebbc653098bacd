"""Split YAML text into documents and remember where every field was written.

ruamel.yaml's round-trip loader keeps a 0-based line and column for each mapping key and
sequence item. We copy each document into plain Python values (so the parsers never see
ruamel types) and record a 1-based position for every field path at the same time.

Position convention, used by every diagnostic: a mapping entry is located at its *key*
(``metadata.name`` points at ``name:``); a sequence entry at the item itself (``hosts[1]``
points at the second host). Keys always exist, even when the value is empty, so the
convention never leaves a field without a position.
"""

from __future__ import annotations

import datetime
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, replace
from typing import NamedTuple, cast

from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap, CommentedSeq, TaggedScalar
from ruamel.yaml.error import MarkedYAMLError, YAMLError

from pilotfish.model.diagnostics import Diagnostic, SourceMap

# Aliases let a few lines of YAML expand into an enormous tree ("billion laughs"); no real
# mesh config comes near this many values in one document.
MAX_VALUES_PER_DOCUMENT = 200_000

Position = tuple[int, int]

_UNKNOWN_ESCAPE = "found unknown escape character"
# Each repair re-parses the file; a file with more broken quotes than this is not a typo.
MAX_QUOTE_REPAIRS = 20


@dataclass(frozen=True)
class YamlDocument:
    """One ``---``-separated document: plain values plus the position of every field path."""

    body: object
    source: SourceMap
    index: int

    @property
    def start(self) -> Position:
        return self.source.locate("")


class _DocumentTooComplex(Exception):
    def __init__(self, reason: str, position: Position) -> None:
        super().__init__(reason)
        self.reason = reason
        self.position = position


def join_path(parent: str, key: str) -> str:
    return f"{parent}.{key}" if parent else key


def index_path(parent: str, index: int) -> str:
    return f"{parent}[{index}]"


class _Converter:
    def __init__(self) -> None:
        self.positions: dict[str, Position] = {}
        self.values_seen = 0
        self._open: set[int] = set()

    def convert(self, node: object, path: str, position: Position) -> object:
        self.values_seen += 1
        if self.values_seen > MAX_VALUES_PER_DOCUMENT:
            raise _DocumentTooComplex(
                f"document has more than {MAX_VALUES_PER_DOCUMENT} values (alias expansion?)",
                position,
            )
        if isinstance(node, CommentedMap | CommentedSeq):
            if id(node) in self._open:
                raise _DocumentTooComplex("recursive alias: a value contains itself", position)
            self._open.add(id(node))
            try:
                if isinstance(node, CommentedMap):
                    return self._convert_mapping(node, path)
                return self._convert_sequence(node, path)
            finally:
                self._open.discard(id(node))
        return _plain_scalar(node)

    def _convert_mapping(self, node: CommentedMap, path: str) -> dict[object, object]:
        result: dict[object, object] = {}
        for key, value in node.items():
            plain_key = _plain_scalar(key)
            child = join_path(path, str(plain_key))
            position = _one_based(node.lc.key(key)) if _has_key_position(node, key) else None
            if position is None:
                # Keys brought in by a merge (``<<: *base``) have no position of their own.
                position = self.positions.get(path, (1, 1))
            self.positions.setdefault(child, position)
            result[plain_key if _hashable(plain_key) else str(plain_key)] = self.convert(
                value, child, position
            )
        return result

    def _convert_sequence(self, node: CommentedSeq, path: str) -> list[object]:
        result: list[object] = []
        for index, value in enumerate(node):
            child = index_path(path, index)
            try:
                position = _one_based(node.lc.item(index))
            except (KeyError, IndexError, TypeError):
                position = self.positions.get(path, (1, 1))
            self.positions.setdefault(child, position)
            result.append(self.convert(value, child, position))
        return result


def _has_key_position(node: CommentedMap, key: object) -> bool:
    try:
        node.lc.key(key)
    except (KeyError, IndexError, TypeError):
        return False
    return True


def _hashable(value: object) -> bool:
    try:
        hash(value)
    except TypeError:
        return False
    return True


def _one_based(position: object) -> Position:
    line, col = cast(tuple[int, int], position)
    return int(line) + 1, int(col) + 1


def _plain_scalar(value: object) -> object:
    """Strip ruamel's scalar subclasses so parsers can rely on exact built-in types."""
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, str):
        return str(value)
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        return float(value)
    if isinstance(value, TaggedScalar):
        # A custom tag (``!foo bar``) means nothing to us; keep the text so that type
        # checks downstream report it like any other string.
        return str(value.value)
    if isinstance(value, datetime.date | datetime.datetime):
        return value.isoformat()
    if isinstance(value, CommentedMap | CommentedSeq):
        # Only reachable for keys, which we use as text.
        return str(value)
    return str(value)


def _document_start(node: object) -> Position:
    if isinstance(node, CommentedMap | CommentedSeq):
        return int(node.lc.line) + 1, int(node.lc.col) + 1
    return 1, 1


class ParsedYaml(NamedTuple):
    documents: list[YamlDocument]
    problems: list[Diagnostic]
    # False when a syntax error (or a document too large) lost documents of the text.
    complete: bool


def parse_documents(text: str, filename: str) -> tuple[list[YamlDocument], list[Diagnostic]]:
    """``parse_yaml`` without the completeness flag."""
    documents, problems, _ = parse_yaml(text, filename)
    return documents, problems


def parse_yaml(text: str, filename: str) -> ParsedYaml:
    """Every document of ``text`` with positions, and a diagnostic for malformed YAML.

    Documents before a syntax error are still returned, so their own problems can be
    reported alongside it. Empty documents (a trailing ``---``) are skipped. A backslash that
    YAML does not know inside double quotes (``"^/v\\d+"``, nearly always a regex) is reported,
    then read as the single-quoted text the user meant, so that the rest of the file is still
    parsed and checked.
    """
    repairs: list[Diagnostic] = []
    while True:
        parsed = _parse_once(text, filename)
        repaired = None
        if parsed.error is not None and len(repairs) < MAX_QUOTE_REPAIRS:
            repaired = _single_quoted(text, parsed.error)
        if parsed.syntax is None or repaired is None:
            break
        repairs.append(_with_quoting_hint(parsed.syntax))
        text = repaired
    problems = [*repairs, *parsed.problems]
    if parsed.syntax is not None:
        problems.append(parsed.syntax)
    complete = parsed.syntax is None and not parsed.problems
    return ParsedYaml(parsed.documents, problems, complete)


@dataclass
class _Parsed:
    documents: list[YamlDocument]
    problems: list[Diagnostic]
    syntax: Diagnostic | None = None
    error: MarkedYAMLError | None = None


def _parse_once(text: str, filename: str) -> _Parsed:
    parsed = _Parsed([], [])
    index = 0
    try:
        for node in _load_all(text):
            index += 1
            if node is None:
                continue
            converter = _Converter()
            start = _document_start(node)
            converter.positions[""] = start
            try:
                body = converter.convert(node, "", start)
            except _DocumentTooComplex as problem:
                line, col = problem.position
                parsed.problems.append(Diagnostic(filename, line, col, "", problem.reason))
                continue
            source = SourceMap(filename, converter.positions)
            parsed.documents.append(YamlDocument(body=body, source=source, index=index - 1))
    except MarkedYAMLError as error:
        parsed.syntax = _syntax_diagnostic(filename, error, text)
        parsed.error = error
    except YAMLError as error:
        parsed.syntax = Diagnostic(filename, 1, 1, "", f"invalid YAML: {error}")
    except RecursionError:
        parsed.syntax = Diagnostic(filename, 1, 1, "", "invalid YAML: nested too deeply")
    except Exception as error:
        # ruamel raises assorted non-YAMLError exceptions on some malformed input; a
        # loader must turn every one of them into a diagnostic, never crash the caller.
        parsed.syntax = Diagnostic(filename, 1, 1, "", f"invalid YAML: {error}")
    return parsed


def _single_quoted(text: str, error: MarkedYAMLError) -> str | None:
    """``text`` with the double-quoted scalar that ``error`` is about in single quotes.

    Only when that changes nothing but the quotes: the scalar fits on its line and holds no
    escape a user may have meant (``\\\\``, ``\\"``) and no single quote, so every position
    after it stays where it was written.
    """
    start, problem = error.context_mark, error.problem_mark
    if start is None or problem is None or not str(error.problem).startswith(_UNKNOWN_ESCAPE):
        return None
    opening = int(start.index)
    if opening >= len(text) or text[opening] != '"':
        return None
    closing = text.find('"', int(problem.index))
    line_end = text.find("\n", opening)
    if closing < 0 or (0 <= line_end < closing):
        return None
    content = text[opening + 1 : closing]
    if any(mark in content for mark in ("'", "\\\\", '\\"')) or content.endswith("\\"):
        return None
    return f"{text[:opening]}'{content}'{text[closing + 1 :]}"


def _with_quoting_hint(problem: Diagnostic) -> Diagnostic:
    hint = (
        "; inside double quotes YAML reads a backslash as an escape: write a regex in "
        "single quotes ('^/v\\d+')"
    )
    return replace(problem, message=problem.message + hint)


def _load_all(text: str) -> Iterator[object]:
    yaml = YAML(typ="rt")
    # ruamel warns about legal-but-odd input (a reused anchor name); such warnings carry
    # no position and are not problems of the mesh config, so they must not escape.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield from yaml.load_all(text)


def _syntax_diagnostic(filename: str, error: MarkedYAMLError, text: str) -> Diagnostic:
    mark = error.problem_mark or error.context_mark
    line, col = (mark.line + 1, mark.column + 1) if mark is not None else (1, 1)
    # The parser sometimes reports the position just past the last line.
    last_line = max(1, text.count("\n") + (0 if text.endswith("\n") else 1))
    line = min(line, last_line)
    problem = error.problem or error.context or "syntax error"
    context = f" ({error.context})" if error.context and error.problem else ""
    return Diagnostic(filename, line, col, "", f"invalid YAML: {problem}{context}")
