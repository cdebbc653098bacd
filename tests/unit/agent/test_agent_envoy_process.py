from __future__ import annotations

import itertools
import signal
from pathlib import Path

import pytest

from pilotfish.agent.admin_client import _dechunk
from pilotfish.agent.child_process import describe_exit
from pilotfish.agent.envoy_process import (
    EnvoyOptions,
    active_downstream_connections,
    envoy_argv,
    find_envoy_binary,
)

STATS = """\
http.admin.downstream_cx_active: 1
http.inbound.downstream_cx_active: 2
listener.127.0.0.1_15006.downstream_cx_active: 2
listener.127.0.0.1_15001.downstream_cx_active: 3
listener.admin.downstream_cx_active: 1
listener.admin.main_thread.downstream_cx_active: 1
"""


def test_active_connections_count_data_plane_listeners_only() -> None:
    assert active_downstream_connections(STATS) == 5


def test_no_listeners_means_no_connections() -> None:
    assert active_downstream_connections("") == 0
    assert active_downstream_connections("listener.admin.downstream_cx_active: 4\n") == 0


def test_exit_descriptions_name_signals() -> None:
    assert describe_exit(-signal.SIGKILL) == "signal SIGKILL"
    assert describe_exit(1) == "exit code 1"
    assert describe_exit(None) == "no exit code"


def test_argv_runs_without_hot_restart_and_reports_the_admin_address(tmp_path: Path) -> None:
    options = EnvoyOptions(concurrency=2, log_level="debug", drain_time_s=7, extra_args=("-x",))
    argv = envoy_argv(Path("/bin/envoy"), tmp_path / "b.json", tmp_path / "admin", options)
    assert argv[0] == "/bin/envoy"
    assert "--disable-hot-restart" in argv
    pairs = dict(itertools.pairwise(argv))
    assert pairs["-c"] == str(tmp_path / "b.json")
    assert pairs["--concurrency"] == "2"
    assert pairs["--log-level"] == "debug"
    assert pairs["--drain-time-s"] == "7"
    # Access-log files (accessLogFile) are written out every second, as Istio's are.
    assert pairs["--file-flush-interval-msec"] == "1000"
    assert pairs["--admin-address-path"] == str(tmp_path / "admin")
    assert argv[-1] == "-x"


def test_the_bundled_envoy_binary_is_found() -> None:
    binary = find_envoy_binary()
    assert binary.name == "envoy"
    assert binary.is_file()


@pytest.mark.parametrize(
    ("chunked", "plain"),
    [
        (b"5\r\nhello\r\n0\r\n\r\n", b"hello"),
        (b"3\r\nabc\r\n4;ext=1\r\ndefg\r\n0\r\n\r\n", b"abcdefg"),
        (b"0\r\n\r\n", b""),
    ],
)
def test_chunked_admin_bodies_are_decoded(chunked: bytes, plain: bytes) -> None:
    assert _dechunk(chunked) == plain
