"""`pilotfish stat`, `tap` and `logs`: their formatting, and the commands against a real
admin server (in a thread) whose hub the test feeds."""

from __future__ import annotations

import argparse
import asyncio
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from tests.request_records import T0, both_sides, record
from tests.waiting import wait_until

from pilotfish.admin.server import start_admin_server
from pilotfish.cli.main import main
from pilotfish.cli.telemetry_commands import (
    format_stat_table,
    format_tap_line,
    parse_window,
)
from pilotfish.controller.control_plane import ControlPlane
from pilotfish.telemetry.records import RequestRecord

BACKEND = "backend.default.svc.cluster.local"


def test_the_stat_table_lines_up_like_linkerds() -> None:
    body = {
        "window_seconds": 60,
        "by": "service",
        "rows": [
            {
                "name": BACKEND,
                "namespace": "default",
                "requests": 120,
                "rps": 2.0,
                "success_rate": 0.9917,
                "p50_ms": 1.234,
                "p95_ms": 12.6,
                "p99_ms": 250.0,
            },
            {
                "name": "api.example.com",
                "namespace": "unknown",
                "requests": 0,
                "rps": 0.0,
                "success_rate": None,
                "p50_ms": None,
                "p95_ms": None,
                "p99_ms": None,
            },
        ],
    }
    assert format_stat_table(body).splitlines() == [
        "NAME                               NAMESPACE  SUCCESS  RPS     LATENCY_P50  LATENCY_P95"
        "  LATENCY_P99  REQUESTS",
        "backend.default.svc.cluster.local  default    99.17%   2.0rps  1.2ms        13ms"
        "         250ms        120",
        "api.example.com                    unknown    -        0.0rps  -            -"
        "            -            0",
    ]


def test_no_rows_say_so() -> None:
    body = {"window_seconds": 60, "by": "workload", "rows": []}
    assert format_stat_table(body) == "no requests to any workload in the last 60s"


def test_a_tap_line_has_who_called_what_and_the_flags_in_words() -> None:
    failed = record(reporter="source", code=503, flags=("UF", "URX"), at=T0 + 0.25)
    assert format_tap_line(failed.to_json()) == (
        "08:00:00.245 src frontend -> backend.default.svc.cluster.local GET / 503 5.0ms "
        "UF=upstream connection failure, URX=upstream retry limit exceeded"
    )
    grpc = record(grpc_status="14", duration_ms=42.0, at=T0 + 0.042)
    assert format_tap_line(grpc.to_json()) == (
        "08:00:00.000 dst frontend -> backend.default.svc.cluster.local GET / 200 "
        "grpc-status=14 42ms"
    )


@pytest.mark.parametrize(("text", "seconds"), [("60s", 60), ("5m", 300), ("90", 90), ("10m", 600)])
def test_windows(text: str, seconds: int) -> None:
    assert parse_window(text) == seconds


@pytest.mark.parametrize(
    ("text", "message"), [("11m", "must be from 1s to 10m"), ("soon", "expected forms like 7s")]
)
def test_bad_windows(text: str, message: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError, match=message):
        parse_window(text)


@pytest.mark.parametrize("command", ["stat", "tap", "logs"])
def test_without_a_running_mesh_each_command_says_how_to_start_one(
    command: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main([command, str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert f"no running mesh found in {tmp_path}" in err
    assert f"`pilotfish up {tmp_path}`, or pass --admin URL" in err


class AdminInThread:
    """A control plane's admin server on a free port, on an event loop in a thread."""

    def __init__(self, directory: Path) -> None:
        self.control_plane = ControlPlane(directory)
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        started = asyncio.run_coroutine_threadsafe(
            start_admin_server(self.control_plane), self.loop
        )
        self.runner, self.port = started.result(timeout=10)
        state = directory / ".pilotfish"
        state.mkdir()
        (state / "admin.url").write_text(f"http://127.0.0.1:{self.port}\n")

    def ingest(self, records: list[RequestRecord]) -> None:
        done = asyncio.run_coroutine_threadsafe(self._ingest(records), self.loop)
        done.result(timeout=10)

    async def _ingest(self, records: list[RequestRecord]) -> None:
        self.control_plane.telemetry.ingest(records)

    def close(self) -> None:
        asyncio.run_coroutine_threadsafe(self.runner.cleanup(), self.loop).result(timeout=10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=10)
        self.loop.close()


@pytest.fixture
def admin(tmp_path: Path) -> Iterator[AdminInThread]:
    server = AdminInThread(tmp_path)
    yield server
    server.close()


def test_stat_prints_the_services_of_the_running_mesh(
    admin: AdminInThread, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    now = time.time()
    admin.ingest(both_sides(at=now) + both_sides(at=now, code=503))
    assert main(["stat", str(tmp_path)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["NAME", "NAMESPACE", "SUCCESS", "RPS", "LATENCY_P50",
                                "LATENCY_P95", "LATENCY_P99", "REQUESTS"]  # fmt: skip
    assert lines[1].split()[:3] == [BACKEND, "default", "50.00%"]
    assert lines[1].split()[-1] == "2"
    assert main(["stat", str(tmp_path), "--by", "workload", "--window", "10m"]) == 0
    assert capsys.readouterr().out.splitlines()[1].split()[0] == "backend"


def test_tap_prints_requests_as_they_come_until_its_max(
    admin: AdminInThread, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    result: list[int] = []
    tapping = threading.Thread(
        target=lambda: result.append(main(["tap", str(tmp_path), "--path", "/x", "--max", "1"]))
    )
    tapping.start()
    wait_until(lambda: admin.control_plane.tap.subscribers, 10, "the tap to subscribe")
    admin.ingest([record(path="/y"), record(path="/x/1", code=503, flags=("NR",))])
    tapping.join(timeout=10)
    assert result == [0]
    (line,) = capsys.readouterr().out.splitlines()
    assert " GET /x/1 503 5.0ms NR=no route configured" in line


def test_a_tap_the_mesh_ends_says_so(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    admin = AdminInThread(tmp_path)
    result: list[int] = []
    tapping = threading.Thread(target=lambda: result.append(main(["tap", str(tmp_path)])))
    tapping.start()
    try:
        wait_until(lambda: admin.control_plane.tap.subscribers, 10, "the tap to subscribe")
        admin.ingest([record(path="/seen")])
    finally:
        admin.close()  # the mesh stops while the tap runs
    tapping.join(timeout=20)
    assert result == [1]
    captured = capsys.readouterr()
    assert " GET /seen 200 " in captured.out
    assert "the tap ended: the admin API closed it (has the mesh stopped?)" in captured.err


def test_logs_print_a_proxys_lines_and_refuse_an_unknown_one(
    admin: AdminInThread, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    admin.ingest([record(proxy="backend-0", path="/one"), record(proxy="other-0")])
    assert main(["logs", str(tmp_path), "backend-0"]) == 0
    (line,) = capsys.readouterr().out.splitlines()
    assert '"GET /one HTTP/1.1" 200 - via_upstream' in line
    assert main(["logs", str(tmp_path), "--json", "--limit", "1"]) == 0
    assert '"proxy":"other-0"' in capsys.readouterr().out
    assert main(["logs", str(tmp_path), "nobody"]) == 2
    assert "no proxy 'nobody'; the proxies are: backend-0, other-0" in capsys.readouterr().err
