from __future__ import annotations

from pathlib import Path

import pytest

from pilotfish.load import load_directory
from pilotfish.model.diagnostics import Diagnostic
from pilotfish.model.rate_limits import RateLimitSettings

MESH = """apiVersion: pilotfish.io/v1alpha1
kind: MeshConfig
metadata: {{name: mesh}}
spec:
  rateLimit:
{body}
"""


def load(tmp_path: Path, body: str) -> tuple[RateLimitSettings | None, list[Diagnostic]]:
    (tmp_path / "mesh.yaml").write_text(MESH.format(body=body))
    result = load_directory(tmp_path)
    errors = [d for d in result.diagnostics if d.severity == "error"]
    return (result.config.mesh.rate_limit if result.config else None), errors


def test_every_field_is_read(tmp_path: Path) -> None:
    body = "    redis: {address: 127.0.0.1:6390}\n    failureMode: deny\n    timeout: 50ms"
    settings, errors = load(tmp_path, body)
    assert errors == []
    assert settings == RateLimitSettings(
        redis_address="127.0.0.1:6390", failure_mode="deny", timeout=0.05
    )


def test_unset_fields_keep_the_defaults(tmp_path: Path) -> None:
    settings, errors = load(tmp_path, "    failureMode: allow")
    assert errors == []
    assert settings == RateLimitSettings(redis_address=None, failure_mode="allow", timeout=0.02)


def test_no_rate_limit_section_keeps_the_defaults(tmp_path: Path) -> None:
    (tmp_path / "mesh.yaml").write_text(
        MESH.format(body="").replace("  rateLimit:\n", "  trustDomain: a.b")
    )
    result = load_directory(tmp_path)
    assert result.config is not None
    assert result.config.mesh.rate_limit == RateLimitSettings()


@pytest.mark.parametrize(
    ("body", "line", "field", "message"),
    [
        (
            "    redis: {address: localhost}",
            6,
            "spec.rateLimit.redis.address",
            '"localhost" is not HOST:PORT',
        ),
        (
            "    redis: {address: 127.0.0.1:70000}",
            6,
            "spec.rateLimit.redis.address",
            "is not HOST:PORT",
        ),
        ("    redis: {}", 6, "spec.rateLimit.redis.address", "required field is missing"),
        (
            "    redis: {address: 127.0.0.1:6379, password: x}",
            6,
            "spec.rateLimit.redis.password",
            "unknown field",
        ),
        (
            "    timeout: 1s\n    failureMode: open",
            7,
            "spec.rateLimit.failureMode",
            '"open" must be one of allow, deny',
        ),
        ("    timeout: soon", 6, "spec.rateLimit.timeout", "soon"),
        ("    timeout: 0s", 6, "spec.rateLimit.timeout", "must be greater than zero"),
        ("    failuremode: deny", 6, "spec.rateLimit.failuremode", 'did you mean "failureMode"'),
    ],
)
def test_bad_values_are_errors_at_their_line(
    tmp_path: Path, body: str, line: int, field: str, message: str
) -> None:
    settings, errors = load(tmp_path, body)
    assert settings is None
    (error,) = errors
    assert error.file.endswith("mesh.yaml") and error.line == line
    assert error.field == field
    assert message in error.message


def test_every_problem_is_reported_at_once(tmp_path: Path) -> None:
    body = "    redis: {address: nowhere}\n    failureMode: maybe\n    timeout: -1s"
    _, errors = load(tmp_path, body)
    assert [e.field for e in errors] == [
        "spec.rateLimit.redis.address",
        "spec.rateLimit.failureMode",
        "spec.rateLimit.timeout",
    ]
