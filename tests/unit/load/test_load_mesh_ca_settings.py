from __future__ import annotations

from pathlib import Path

from pilotfish.load import load_directory

MESH = """apiVersion: pilotfish.io/v1alpha1
kind: MeshConfig
metadata: {{name: mesh}}
spec:
  certificates:
    rootRenewGracePeriodPercentage: {value}
"""


def test_the_root_renew_grace_percentage_is_read(tmp_path: Path) -> None:
    (tmp_path / "mesh.yaml").write_text(MESH.format(value=35))
    result = load_directory(tmp_path)
    assert result.config is not None
    assert result.config.mesh.certificates.root_renew_grace_percentage == 35.0


def test_a_root_renew_grace_percentage_out_of_range_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "mesh.yaml").write_text(MESH.format(value=95))
    result = load_directory(tmp_path)
    assert result.config is None
    (problem,) = [d for d in result.diagnostics if d.severity == "error"]
    assert problem.field == "spec.certificates.rootRenewGracePeriodPercentage"
    assert "95 is out of range" in problem.message and problem.line == 6
