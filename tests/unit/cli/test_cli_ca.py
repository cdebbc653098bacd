from __future__ import annotations

from pathlib import Path

import pytest

from pilotfish.cli.main import main


def test_ca_rotate_without_a_running_mesh_says_what_to_do(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["ca", "rotate", str(tmp_path)]) == 2
    assert "no running mesh found" in capsys.readouterr().err


def test_ca_status_before_any_start_says_there_is_no_ca_yet(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["ca", "status", str(tmp_path)]) == 1
    assert "no CA in" in capsys.readouterr().out


def test_a_ca_that_cannot_keep_its_files_stops_the_control_plane_with_a_message(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / ".pilotfish").write_text("a file where the state folder should be")
    assert main(["control-plane", str(tmp_path)]) == 1
    assert "the CA cannot start:" in capsys.readouterr().err
