"""Typed reads of one document's fields, turning every surprise into a positioned diagnostic.

Parsers never raise on bad input: each read returns ``None`` (or an empty value) and records
why, so that one pass over a document reports all of its problems. A YAML ``null`` counts as
"not set", as it does for Kubernetes objects.
"""

from __future__ import annotations

import difflib
from collections.abc import Collection, Iterator, Mapping
from dataclasses import dataclass, field
from typing import TypeVar

from pilotfish.load.durations import DurationError, parse_duration
from pilotfish.load.yaml_source import index_path, join_path
from pilotfish.model.diagnostics import Diagnostic, Severity, SourceMap

NOT_IMPLEMENTED_PREFIX = "not implemented by Pilotfish"
NOT_IMPLEMENTED = f"{NOT_IMPLEMENTED_PREFIX}; ignored"
REQUIRED = "required field is missing"
PORT_MIN = 1
PORT_MAX = 65535
# Below a millisecond Envoy (and our translation) round a duration to zero, which silently
# means "no timeout" or makes Envoy reject the value; Istio also refuses sub-millisecond values.
MIN_NONZERO_DURATION_SECONDS = 0.001

Fields = Mapping[str, object]

T = TypeVar("T")


class ObjectPaths:
    """The field path each parsed object came from, for checks made after parsing.

    Parsers drop list items they cannot build, so an index into a model tuple is not always
    the index in the file. Entries hold the object itself so that its ``id`` is never reused.
    """

    def __init__(self) -> None:
        self._entries: dict[int, tuple[object, str]] = {}

    def remember(self, parsed: T, path: str) -> T:
        self._entries[id(parsed)] = (parsed, path)
        return parsed

    def path_of(self, parsed: object) -> str | None:
        entry = self._entries.get(id(parsed))
        return entry[1] if entry is not None and entry[0] is parsed else None


def describe(value: object) -> str:
    """How a value reads in a message: its YAML type, and the value when it is short."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return f"boolean {str(value).lower()}"
    if isinstance(value, int):
        return f"integer {value}"
    if isinstance(value, float):
        return f"number {value}"
    if isinstance(value, str):
        shown = value if len(value) <= 40 else value[:37] + "..."
        return f'string "{shown}"'
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    return type(value).__name__


@dataclass
class FieldReader:
    """Reads fields of one document and collects diagnostics located through its SourceMap."""

    source: SourceMap
    diagnostics: list[Diagnostic] = field(default_factory=list)
    paths: ObjectPaths = field(default_factory=ObjectPaths)

    # --- reporting ---------------------------------------------------------------------------

    def report(self, path: str, message: str, severity: Severity = "error") -> None:
        self.diagnostics.append(self.source.diagnostic(path, message, severity))

    def error(self, path: str, message: str) -> None:
        self.report(path, message, "error")

    def warning(self, path: str, message: str) -> None:
        self.report(path, message, "warning")

    @property
    def error_count(self) -> int:
        return sum(1 for d in self.diagnostics if d.severity == "error")

    # --- structure ---------------------------------------------------------------------------

    def mapping(
        self,
        value: object,
        path: str,
        known: Collection[str],
        not_implemented: Collection[str] | Mapping[str, str] = (),
    ) -> Fields | None:
        """``value`` as a mapping of known fields: unknown ones are errors, ignored ones warn
        (``not_implemented`` may map each to what does not happen because of it)."""
        if not isinstance(value, dict):
            self.error(path, f"expected a mapping, got {describe(value)}")
            return None
        accepted: dict[str, object] = {}
        for key, item in value.items():
            if not isinstance(key, str):
                self.error(join_path(path, str(key)), "field names must be strings")
            elif key in known:
                accepted[key] = item
            elif key in not_implemented:
                self.warning(join_path(path, key), _not_implemented_message(key, not_implemented))
            else:
                self.error(join_path(path, key), _unknown_field_message(key, known))
        return accepted

    def child_mapping(
        self,
        fields: Fields,
        key: str,
        path: str,
        known: Collection[str],
        not_implemented: Collection[str] | Mapping[str, str] = (),
        *,
        required: bool = False,
    ) -> Fields | None:
        value = self._present(fields, key, path, required)
        if value is None:
            return None
        return self.mapping(value, join_path(path, key), known, not_implemented)

    def items(
        self, fields: Fields, key: str, path: str, *, required: bool = False
    ) -> Iterator[tuple[object, str]]:
        """Each element of a list field with its own path (``http[2]``)."""
        value = self._present(fields, key, path, required)
        if value is None:
            return
        list_path = join_path(path, key)
        if not isinstance(value, list):
            self.error(list_path, f"expected a list, got {describe(value)}")
            return
        if required and not value:
            self.error(list_path, "must not be empty")
        for index, item in enumerate(value):
            yield item, index_path(list_path, index)

    # --- scalars -----------------------------------------------------------------------------

    def string(self, fields: Fields, key: str, path: str, *, required: bool = False) -> str | None:
        value = self._present(fields, key, path, required)
        if value is None:
            return None
        if not isinstance(value, str):
            self.error(join_path(path, key), f"expected a string, got {describe(value)}")
            return None
        if required and not value:
            self.error(join_path(path, key), "must not be empty")
            return None
        return value

    def integer(
        self,
        fields: Fields,
        key: str,
        path: str,
        *,
        required: bool = False,
        minimum: int | None = None,
        maximum: int | None = None,
    ) -> int | None:
        value = self._present(fields, key, path, required)
        if value is None:
            return None
        field_path = join_path(path, key)
        if isinstance(value, bool) or not isinstance(value, int):
            self.error(field_path, f"expected an integer, got {describe(value)}")
            return None
        if not _within(value, minimum, maximum):
            self.error(field_path, f"{value} is out of range ({_range_text(minimum, maximum)})")
            return None
        return value

    def port(self, fields: Fields, key: str, path: str, *, required: bool = False) -> int | None:
        return self.integer(
            fields, key, path, required=required, minimum=PORT_MIN, maximum=PORT_MAX
        )

    def number(
        self,
        fields: Fields,
        key: str,
        path: str,
        *,
        minimum: float | None = None,
        maximum: float | None = None,
    ) -> float | None:
        value = self._present(fields, key, path, required=False)
        if value is None:
            return None
        field_path = join_path(path, key)
        if isinstance(value, bool) or not isinstance(value, int | float):
            self.error(field_path, f"expected a number, got {describe(value)}")
            return None
        if not _within(value, minimum, maximum):
            self.error(field_path, f"{value} is out of range ({_range_text(minimum, maximum)})")
            return None
        return float(value)

    def boolean(self, fields: Fields, key: str, path: str) -> bool | None:
        value = self._present(fields, key, path, required=False)
        if value is None:
            return None
        if not isinstance(value, bool):
            self.error(join_path(path, key), f"expected true or false, got {describe(value)}")
            return None
        return value

    def duration(
        self,
        fields: Fields,
        key: str,
        path: str,
        *,
        required: bool = False,
        allow_zero: bool = False,
    ) -> float | None:
        text = self.string(fields, key, path, required=required)
        if text is None:
            return None
        field_path = join_path(path, key)
        try:
            seconds = parse_duration(text)
        except DurationError as problem:
            self.error(field_path, str(problem))
            return None
        if seconds == 0 and not allow_zero:
            self.error(field_path, "must be greater than zero")
            return None
        if 0 < seconds < MIN_NONZERO_DURATION_SECONDS:
            self.error(field_path, f"{text!r} is shorter than 1ms, the smallest duration accepted")
            return None
        return seconds

    def choice(
        self,
        fields: Fields,
        key: str,
        path: str,
        choices: Collection[str],
        *,
        required: bool = False,
        not_supported: Collection[str] = (),
    ) -> str | None:
        """An enum value; ``not_supported`` lists real values we do not implement yet."""
        text = self.string(fields, key, path, required=required)
        if text is None:
            return None
        field_path = join_path(path, key)
        if text in not_supported:
            self.error(field_path, f"{text} is not supported yet")
            return None
        if text not in choices:
            self.error(field_path, f'"{text}" must be one of {", ".join(choices)}')
            return None
        return text

    # --- collections of scalars --------------------------------------------------------------

    def string_list(
        self, fields: Fields, key: str, path: str, *, required: bool = False
    ) -> tuple[str, ...]:
        """Strings of a list; a bad item becomes "" so later indexes still match the file."""
        found: list[str] = []
        for item, item_path in self.items(fields, key, path, required=required):
            if isinstance(item, str) and item:
                found.append(item)
            else:
                self.error(item_path, f"expected a non-empty string, got {describe(item)}")
                found.append("")
        return tuple(found)

    def string_map(
        self,
        fields: Fields,
        key: str,
        path: str,
        *,
        required: bool = False,
        non_empty: bool = False,
    ) -> dict[str, str]:
        value = self._present(fields, key, path, required)
        if value is None:
            return {}
        map_path = join_path(path, key)
        if not isinstance(value, dict):
            self.error(map_path, f"expected a mapping of strings, got {describe(value)}")
            return {}
        if non_empty and not value:
            self.error(map_path, "must not be empty")
        found: dict[str, str] = {}
        for item_key, item in value.items():
            item_path = join_path(map_path, str(item_key))
            if not isinstance(item_key, str) or not item_key:
                self.error(item_path, "keys must be non-empty strings")
            elif not isinstance(item, str):
                self.error(item_path, f"expected a string, got {describe(item)}")
            else:
                found[item_key] = item
        return found

    # --- helpers -----------------------------------------------------------------------------

    def _present(self, fields: Fields, key: str, path: str, required: bool) -> object | None:
        value = fields.get(key)
        if value is None and required:
            self.error(join_path(path, key), REQUIRED)
        return value


def _not_implemented_message(key: str, fields: Collection[str] | Mapping[str, str]) -> str:
    if isinstance(fields, Mapping):
        return f"{NOT_IMPLEMENTED_PREFIX}: {fields[key]}"
    return NOT_IMPLEMENTED


def _unknown_field_message(key: str, known: Collection[str]) -> str:
    close = difflib.get_close_matches(key, list(known), n=1)
    hint = f' (did you mean "{close[0]}"?)' if close else ""
    return f"unknown field{hint}"


def _within(value: float, minimum: float | None, maximum: float | None) -> bool:
    return (minimum is None or value >= minimum) and (maximum is None or value <= maximum)


def _range_text(minimum: float | None, maximum: float | None) -> str:
    if minimum is not None and maximum is not None:
        return f"must be {minimum}..{maximum}"
    if minimum is not None:
        return f"must be >= {minimum}"
    return f"must be <= {maximum}"
