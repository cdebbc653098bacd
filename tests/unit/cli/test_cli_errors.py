"""The command line answers mistakes with a message and an exit code, never a traceback."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from pilotfish.cli.main import main


@pytest.mark.parametrize("command", ["validate", "up", "control-plane"])
def test_a_missing_folder_is_named(
    command: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = tmp_path / "nowhere"
    assert main([command, str(missing)]) == 2
    assert f"{missing}: not a folder" in capsys.readouterr().err


def test_up_with_a_broken_config_lists_every_problem_and_starts_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "mesh.yaml").write_text(
        "apiVersion: pilotfish.io/v1alpha1\n"
        "kind: Workload\n"
        "metadata: {name: web}\n"
        "spec: {service: web, port: 80800, command: [web], colour: blue}\n"
    )
    assert main(["up", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert f"{tmp_path / 'mesh.yaml'}:4:" in err
    assert "spec.port" in err and "spec.colour" in err
    assert "nothing was started" in err
    assert not (tmp_path / ".pilotfish" / "admin.url").exists()


def test_proxy_status_without_a_running_mesh_says_how_to_find_one(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["proxy-status", str(tmp_path)]) == 2
    assert "pass --admin URL" in capsys.readouterr().err


def test_a_reader_that_goes_away_is_no_traceback(tmp_path: Path) -> None:
    """`pilotfish validate DIR | head -0`: stdout's reader is gone before the first line."""
    (tmp_path / "mesh.yaml").write_text(
        "apiVersion: pilotfish.io/v1alpha1\nkind: Workload\nmetadata: {name: web}\n"
        "spec: {service: web, port: 8080, command: [web], colour: blue}\n"
    )
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        done = subprocess.run(
            [sys.executable, "-m", "pilotfish.cli.main", "validate", str(tmp_path)],
            stdout=write_end,
            stderr=subprocess.PIPE,
            text=True,
            timeout=60,
            check=False,
        )
    finally:
        os.close(write_end)
    assert "Traceback" not in done.stderr, done.stderr
    assert done.returncode == 141
