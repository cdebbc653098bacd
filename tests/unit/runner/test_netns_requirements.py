"""Without root or its tools, transparent interception refuses with why and what instead."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest

from pilotfish.runner import netns


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the Linux checks")
def test_without_root_it_says_why_and_points_to_explicit_mode(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(netns.os, "geteuid", lambda: 1000)
    problem = netns.interception_problem()
    assert problem is not None
    assert "needs root" in problem
    assert "interception: explicit" in problem and "HTTP_PROXY" in problem
    assert "upstreams" in problem
    with pytest.raises(netns.InterceptionError, match="needs root"):
        netns.NetworkNamespaces.open()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the Linux checks")
def test_a_missing_tool_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(netns.os, "geteuid", lambda: 0)
    real = shutil.which
    monkeypatch.setattr(
        netns.shutil, "which", lambda name: None if name == "setpriv" else real(name) or name
    )
    problem = netns.interception_problem()
    assert problem is not None and "needs setpriv" in problem


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the Linux checks")
def test_up_refuses_at_start_and_starts_nothing(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from pilotfish.cli.main import main

    (tmp_path / "mesh.yaml").write_text(
        "apiVersion: pilotfish.io/v1alpha1\nkind: MeshConfig\nmetadata: {name: m}\n"
        "spec: {interception: transparent}\n"
    )
    monkeypatch.setattr(netns.os, "geteuid", lambda: 1000)
    assert main(["up", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert "pilotfish up: transparent interception needs root" in err
    assert not (tmp_path / ".pilotfish" / "admin.url").exists()
