"""A running mesh cannot take another trust domain: the edit is refused with its line, and
the other certificate settings wait for a restart, with a warning."""

from __future__ import annotations

from pathlib import Path

from pilotfish.controller.control_plane import mesh_settings_changes
from pilotfish.load import LoadResult, load_texts
from pilotfish.model.resources import MeshSettings

RUNNING = MeshSettings()
MESH = """\
apiVersion: pilotfish.io/v1alpha1
kind: MeshConfig
metadata: {name: mesh}
spec:
"""


def loaded(spec: str) -> LoadResult:
    result = load_texts([("mesh.yaml", MESH + spec)])
    assert result.config is not None, result.diagnostics
    return result


def test_another_trust_domain_is_refused_where_it_is_written() -> None:
    result = mesh_settings_changes(RUNNING, loaded("  trustDomain: example.org\n"), Path("."))
    assert result.config is None
    (error,) = result.diagnostics
    assert (error.file, error.line, error.field) == ("mesh.yaml", 5, "spec.trustDomain")
    assert '"cluster.local"' in error.message and "restart" in error.message


def test_other_certificate_settings_apply_after_a_restart() -> None:
    result = mesh_settings_changes(
        RUNNING, loaded("  certificates: {workloadTTL: 1h}\n"), Path(".")
    )
    assert result.config is not None
    (warning,) = result.diagnostics
    assert warning.severity == "warning" and warning.field == "spec.certificates"


def test_the_same_settings_change_nothing() -> None:
    same = loaded("  trustDomain: cluster.local\n")
    assert mesh_settings_changes(RUNNING, same, Path(".")) is same


def test_removing_the_mesh_config_of_another_domain_is_refused_too() -> None:
    running = MeshSettings(trust_domain="example.org")
    without = load_texts([("other.yaml", "")])
    result = mesh_settings_changes(running, without, Path("/config"))
    assert result.config is None
    (error,) = result.diagnostics
    assert error.file == "/config" and "MeshConfig removed" in error.message
