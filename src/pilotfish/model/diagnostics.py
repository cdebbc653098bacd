"""Problems found in user configuration, each pinned to a file, line, column and field."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Literal

from pilotfish.errors import PilotfishError

Severity = Literal["error", "warning"]


@dataclass(frozen=True, order=True)
class Diagnostic:
    """One problem. Lines and columns are 1-based, as editors show them."""

    file: str
    line: int
    col: int
    field: str
    message: str
    severity: Severity = "error"

    def __str__(self) -> str:
        """``file:line:col: field: message``; warnings carry ``warning:`` before the field,
        and problems of a whole document (bad YAML) have no field."""
        severity = "warning: " if self.severity == "warning" else ""
        subject = f"{self.field}: " if self.field else ""
        return f"{self.file}:{self.line}:{self.col}: {severity}{subject}{self.message}"

    def to_json(self) -> dict[str, object]:
        return {
            "file": self.file,
            "line": self.line,
            "col": self.col,
            "field": self.field,
            "message": self.message,
            "severity": self.severity,
        }


class ConfigError(PilotfishError):
    """Configuration that cannot be used; carries every problem found, not just the first."""

    def __init__(self, diagnostics: Iterable[Diagnostic]) -> None:
        self.diagnostics = tuple(sorted(diagnostics))
        super().__init__("\n".join(str(d) for d in self.diagnostics))


def has_errors(diagnostics: Iterable[Diagnostic]) -> bool:
    return any(d.severity == "error" for d in diagnostics)


@dataclass(frozen=True)
class SourceMap:
    """Where each field of one YAML document was written.

    Keys are field paths as users read them (``spec.http[0].route[1].weight``); values are
    1-based (line, column). A path with no entry of its own is reported at its nearest
    ancestor, so a missing field points at the object that should hold it.
    """

    file: str
    positions: Mapping[str, tuple[int, int]] = field(default_factory=dict)

    def locate(self, path: str) -> tuple[int, int]:
        probe = path
        while probe:
            if probe in self.positions:
                return self.positions[probe]
            probe = _parent_path(probe)
        return self.positions.get("", (1, 1))

    def diagnostic(self, path: str, message: str, severity: Severity = "error") -> Diagnostic:
        line, col = self.locate(path)
        return Diagnostic(self.file, line, col, path, message, severity)


def _parent_path(path: str) -> str:
    cut = max(path.rfind("."), path.rfind("["))
    return path[:cut] if cut > 0 else ""
