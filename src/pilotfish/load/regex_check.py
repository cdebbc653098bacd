"""Reject regular expressions that Envoy's RE2 engine would refuse.

Python's ``re`` accepts lookaround and backreferences; RE2 (Envoy's ``safe_regex``) does
not, so a pattern that "works" in a quick Python check can still be NACKed by every proxy.
"""

from __future__ import annotations

import re2

_OPTIONS = re2.Options()
# RE2 otherwise logs every rejected pattern to stderr, which is noise for a validator.
_OPTIONS.log_errors = False


def re2_problem(pattern: str) -> str | None:
    """Why RE2 rejects ``pattern``, or ``None`` when it compiles."""
    try:
        re2.compile(pattern, _OPTIONS)
    except re2.error as error:
        reason = error.args[0] if error.args else "invalid pattern"
        if isinstance(reason, bytes):
            reason = reason.decode("utf-8", errors="replace")
        return f"regex rejected by RE2 (Envoy's engine): {reason}"
    except UnicodeEncodeError:
        return "regex rejected by RE2 (Envoy's engine): not valid UTF-8"
    return None
