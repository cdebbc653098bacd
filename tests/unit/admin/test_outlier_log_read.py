"""Reading a proxy's outlier event log: the path comes from the proxy's own metadata, so the
control plane must not block, read without bound, follow a link, or say which way it failed."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest

from pilotfish.admin import endpoints_api
from pilotfish.admin.endpoints_api import LOG_NOT_READABLE, read_outlier_log

EJECT = (
    '{"type":"CONSECUTIVE_5XX","cluster_name":"outbound|9000||backend.default.svc.cluster.local",'
    '"upstream_url":"127.0.0.1:9001","action":"EJECT","num_ejections":1,"enforced":true,'
    '"eject_consecutive_event":{},"timestamp":"2026-12-01T10:00:00.000Z",'
    '"secs_since_last_action":"-1"}'
)


def _not_readable(path: Path | str) -> tuple[None, str]:
    return None, f"{path}: {LOG_NOT_READABLE}"


def test_a_regular_log_is_read(tmp_path: Path) -> None:
    log = tmp_path / "outlier-events.log"
    log.write_text(EJECT + "\n")
    events, error = read_outlier_log(str(log))
    assert error is None and events is not None and len(events) == 1


async def test_a_fifo_is_refused_without_blocking(tmp_path: Path) -> None:
    fifo = tmp_path / "outlier-events.log"
    os.mkfifo(fifo)
    reading = asyncio.ensure_future(asyncio.to_thread(read_outlier_log, str(fifo)))
    try:
        # Bounds a hang, asserts no speed: a blocked open would never return at all.
        done, _ = await asyncio.wait({reading}, timeout=10)
        assert done, "reading the FIFO blocked"
        assert reading.result() == _not_readable(fifo)
    finally:
        if not reading.done():  # unblock the old code's open() so the thread can end
            os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
            await reading


def test_a_device_is_refused() -> None:
    # /dev/zero seeks to 0 and never ends: read whole, it exhausts memory.
    assert read_outlier_log("/dev/zero") == _not_readable("/dev/zero")


def test_a_symlink_is_not_followed(tmp_path: Path) -> None:
    target = tmp_path / "secret.log"
    target.write_text(EJECT + "\n")
    link = tmp_path / "outlier-events.log"
    link.symlink_to(target)
    assert read_outlier_log(str(link)) == _not_readable(link)


def test_every_failure_reads_the_same(tmp_path: Path) -> None:
    # Distinct texts would let a proxy probe the control plane's file system.
    for path in (tmp_path / "missing.log", tmp_path, Path("/dev/null")):
        assert read_outlier_log(str(path)) == _not_readable(path)


def test_only_the_tail_of_a_huge_log_is_read(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(endpoints_api, "LOG_TAIL_BYTES", 4096)
    log = tmp_path / "outlier-events.log"
    old = EJECT.replace("127.0.0.1:9001", "127.0.0.1:9002")
    with log.open("wb") as out:
        out.write(old.encode() + b"\n")
        out.seek(1 << 30)  # sparse: a gigabyte on paper, read whole it would fill memory
        out.write(b"\n" + EJECT.encode() + b"\n")
    events, error = read_outlier_log(str(log))
    assert error is None and events is not None
    assert [event.upstream for event in events] == ["127.0.0.1:9001"]
