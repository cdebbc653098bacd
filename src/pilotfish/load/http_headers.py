"""What Envoy accepts as an HTTP header name or value in routes, matchers and hash policies.

Envoy checks these only when a proxy receives the config, so a bad name reaches users as a
NACK on every proxy; we reject it where it was written.
"""

from __future__ import annotations

import re

# RFC 7230 section 3.2.6 "token": the characters a header field name may contain.
_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
# Envoy refuses to add, set or remove pseudo-headers (":path") and Host through route
# header operations: "':-prefixed' or host headers may not be modified".
_PROTECTED = "host"
_FORBIDDEN_IN_VALUES = {"\r": "CR", "\n": "LF", "\x00": "NUL"}
# Envoy expands %COMMAND%, %COMMAND(argument)% and %COMMAND(argument):length% in the
# headers a route adds; any other "%" makes it reject the whole listener.
_ENVOY_COMMAND = re.compile(r"%[A-Z][A-Z0-9_]*(\([^)]*\))?(:[0-9]+)?%")


def header_name_problem(name: str) -> str | None:
    """Why ``name`` is not a valid HTTP header name, or ``None``."""
    if not name:
        return "header name must not be empty"
    if _TOKEN.fullmatch(name) is None:
        return f'"{name}" is not a valid HTTP header name (RFC 7230 token characters only)'
    return None


def modifiable_header_problem(name: str) -> str | None:
    """Why a route may not set, add or remove the header ``name``, or ``None``."""
    if name.startswith(":"):
        return f'"{name}": pseudo-headers (":"-prefixed) may not be modified'
    if name.lower() == _PROTECTED:
        return f'"{name}": the host header may not be modified (use rewrite.authority)'
    return header_name_problem(name)


def header_value_problem(value: str) -> str | None:
    """Why ``value`` cannot be sent as an HTTP header value, or ``None``."""
    found = [label for char, label in _FORBIDDEN_IN_VALUES.items() if char in value]
    if found:
        return f"header values must not contain {', '.join(found)}"
    return None


def is_ascii_decimal(text: str) -> bool:
    """Digits ``int()`` reads as the number users see: "²" and "٣" are digits, not numbers."""
    return text.isascii() and text.isdecimal()


def added_header_value_problem(value: str) -> str | None:
    """Why Envoy refuses ``value`` in a header a route sets or adds, or ``None``."""
    problem = header_value_problem(value)
    index = value.find("%")
    while problem is None and index >= 0:
        if value.startswith("%%", index):
            index = value.find("%", index + 2)
            continue
        command = _ENVOY_COMMAND.match(value, index)
        if command is None:
            return (
                f'unescaped "%" at character {index + 1}: Envoy reads %NAME% as a variable '
                'and rejects the listener; write "%%" for a percent sign'
            )
        index = value.find("%", command.end())
    return problem
