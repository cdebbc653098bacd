"""The config folder watcher on real files: inotify (watchfiles), and the polling fallback."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from pathlib import Path

import pytest
from tests.waiting import eventually

from pilotfish.controller.config_watch import config_fingerprint, watch_config_dir

# Bounds how long a test waits for a change it made; not a statement about speed.
PATIENCE = 10.0

modes = pytest.mark.parametrize("inotify", [True, False], ids=["inotify", "polling"])
# With inotify, the safety rescan is pushed out of reach: inotify alone must see each change.
NO_RESCAN = 3600.0


def save_atomically(path: Path, text: str) -> None:
    """As editors that save safely do: write a temporary file, rename it over the old one."""
    temporary = path.with_name(f".{path.name}.swp")
    temporary.write_text(text)
    temporary.replace(path)


async def next_change(changes: AsyncIterator[str]) -> str:
    return await asyncio.wait_for(anext(changes), PATIENCE)


def waiting_for_events(changes: AsyncGenerator[str, None]) -> bool:
    """True while the watcher sits in ``Event.wait``, having looked at the folder."""
    awaited = changes.ag_await
    return getattr(getattr(awaited, "cr_code", None), "co_name", None) == "wait"


async def change_while_waiting(
    changes: AsyncGenerator[str, None], edit: Callable[[], object]
) -> str:
    """Edit only once the watcher waits, so that only an event (or a poll) can reveal it."""
    pending = asyncio.ensure_future(anext(changes))
    await eventually(lambda: waiting_for_events(changes), "the watcher to wait", timeout=PATIENCE)
    edit()
    return await asyncio.wait_for(pending, PATIENCE)


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    directory = tmp_path / "config"
    directory.mkdir()
    (directory / "mesh.yaml").write_text("kind: A\n")
    return directory


def test_the_fingerprint_covers_what_the_loader_reads_and_nothing_else(folder: Path) -> None:
    before = config_fingerprint(folder)
    (folder / ".hidden.yaml").write_text("kind: Hidden\n")
    (folder / ".git").mkdir()
    (folder / ".git" / "x.yaml").write_text("kind: Hidden\n")
    (folder / "notes.txt").write_text("not config\n")
    (folder / "mesh.yaml.swp").write_text("editor junk\n")
    assert config_fingerprint(folder) == before
    (folder / "sub").mkdir()
    (folder / "sub" / "more.yml").write_text("kind: B\n")
    assert config_fingerprint(folder) != before


def test_renaming_a_file_changes_the_fingerprint(folder: Path) -> None:
    before = config_fingerprint(folder)
    (folder / "mesh.yaml").rename(folder / "other.yaml")
    assert config_fingerprint(folder) != before


@modes
async def test_the_first_fingerprint_is_yielded_unless_already_seen(
    folder: Path, inotify: bool
) -> None:
    changes = watch_config_dir(folder, interval=0.05, inotify=inotify, rescan=NO_RESCAN)
    try:
        assert await next_change(changes) == config_fingerprint(folder)
    finally:
        await changes.aclose()
    seen = config_fingerprint(folder)
    changes = watch_config_dir(folder, interval=0.05, last=seen, inotify=inotify, rescan=NO_RESCAN)
    try:
        save_atomically(folder / "mesh.yaml", "kind: B\n")
        assert await next_change(changes) == config_fingerprint(folder) != seen
    finally:
        await changes.aclose()


@modes
async def test_atomic_saves_deletes_and_new_subfolders_are_all_seen(
    folder: Path, inotify: bool
) -> None:
    changes = watch_config_dir(
        folder, interval=0.05, last=config_fingerprint(folder), inotify=inotify, rescan=NO_RESCAN
    )
    nested = folder / "team" / "nested"

    def new_subfolder() -> None:
        nested.mkdir(parents=True)
        (nested / "routes.yaml").write_text("kind: Nested\n")

    edits: list[Callable[[], object]] = [
        lambda: save_atomically(folder / "mesh.yaml", "kind: Edited\n"),
        lambda: (folder / "extra.yaml").write_text("kind: Extra\n"),
        lambda: (folder / "extra.yaml").unlink(),
        new_subfolder,
        # The new subfolder is watched too, not only the file that came with it.
        lambda: save_atomically(nested / "routes.yaml", "kind: NestedEdited\n"),
        lambda: (nested / "later.yaml").write_text("kind: Later\n"),
    ]
    try:
        for edit in edits:
            assert await change_while_waiting(changes, edit) == config_fingerprint(folder)
    finally:
        await changes.aclose()


@modes
async def test_an_edit_saved_during_a_reload_is_not_lost(folder: Path, inotify: bool) -> None:
    changes = watch_config_dir(
        folder, interval=0.05, last=config_fingerprint(folder), inotify=inotify, rescan=NO_RESCAN
    )
    try:
        save_atomically(folder / "mesh.yaml", "kind: First\n")
        await next_change(changes)
        # The consumer is busy reloading "First": the second save arrives meanwhile, and its
        # event is long handled by the time the consumer asks for the next change.
        save_atomically(folder / "mesh.yaml", "kind: Second\n")
        await asyncio.sleep(0.3)
        assert await next_change(changes) == config_fingerprint(folder)
        assert "Second" in (folder / "mesh.yaml").read_text()
    finally:
        await changes.aclose()


async def test_when_inotify_fails_it_says_so_once_and_polls(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # inotify cannot watch a folder that is not there yet; polling notices when it appears.
    folder = tmp_path / "not-yet"
    changes = watch_config_dir(folder, interval=0.02, last=config_fingerprint(folder))
    try:
        with caplog.at_level(logging.WARNING, logger="pilotfish.controller.config_watch"):
            first = asyncio.ensure_future(next_change(changes))
            await eventually(
                lambda: "cannot watch" in caplog.text, "the fallback", timeout=PATIENCE
            )
            folder.mkdir()
            save_atomically(folder / "mesh.yaml", "kind: A\n")
            assert await first == config_fingerprint(folder)
            edited = await change_while_waiting(
                changes, lambda: save_atomically(folder / "mesh.yaml", "kind: B\n")
            )
            assert edited == config_fingerprint(folder)
    finally:
        await changes.aclose()
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "cannot watch" in warnings[0] and "polling it every 0.02s" in warnings[0]
