"""YAML folders -> validated ``MeshConfig``, with every problem pinned to file, line and field."""

from __future__ import annotations

from pilotfish.load.loader import (
    LoadResult,
    ParseCache,
    format_diagnostics,
    load_directory,
    load_text,
    load_texts,
)

__all__ = [
    "LoadResult",
    "ParseCache",
    "format_diagnostics",
    "load_directory",
    "load_text",
    "load_texts",
]
