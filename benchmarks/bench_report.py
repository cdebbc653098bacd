"""What both benchmarks share: machine facts, percentiles, tables, results files, child cleanup.

Kept apart from the two scripts so that each stays about what it measures.
"""

from __future__ import annotations

import contextlib
import ctypes
import datetime
import json
import math
import os
import platform
import shlex
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
# This checkout's own code, before anything imports pilotfish: run from a second checkout (a
# before/after comparison) with one shared venv, it must not measure the venv's checkout.
sys.path.insert(0, str(REPO / "src"))
# The process-tree helper the integration tests use is the one benchmarks use too.
sys.path.insert(0, str(REPO))
from tests.integration.mesh_harness import descendant_pids as descendant_pids  # noqa: E402
from tests.integration.mesh_harness import spawn_up  # noqa: E402

RESULTS_DIR = REPO / "benchmarks" / "results"
VENV_BIN = Path(sys.executable).parent
CLOCK_TICKS_PER_SECOND = os.sysconf("SC_CLK_TCK")


def percentile(samples: Sequence[float], fraction: float) -> float:
    """Nearest-rank percentile: always a value that was actually measured."""
    if not samples:
        return math.nan
    ordered = sorted(samples)
    rank = max(1, math.ceil(fraction * len(ordered)))
    return ordered[rank - 1]


def median(samples: Sequence[float]) -> float:
    if not samples:
        return math.nan
    ordered = sorted(samples)
    middle = len(ordered) // 2
    if len(ordered) % 2:
        return ordered[middle]
    return (ordered[middle - 1] + ordered[middle]) / 2


def envoy_version() -> str:
    envoy = VENV_BIN / "envoy"
    try:
        out = subprocess.run(
            [str(envoy), "--version"], capture_output=True, text=True, timeout=30, check=False
        ).stdout
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"unknown ({exc})"
    lines = [line for line in out.splitlines() if "version" in line]
    return lines[-1].split("version:", 1)[-1].strip() if lines else "unknown"


def git_revision() -> str:
    """The commit measured, marked dirty when src/ has uncommitted changes."""

    def git(*args: str) -> str:
        try:
            return subprocess.run(
                ["git", "-C", str(REPO), *args], capture_output=True, text=True, timeout=10
            ).stdout.strip()
        except (OSError, subprocess.TimeoutExpired):
            return ""

    commit = git("rev-parse", "--short", "HEAD") or "unknown"
    return commit + (" (src/ modified)" if git("status", "--porcelain", "--", "src") else "")


def machine_facts() -> dict[str, object]:
    return {
        "git": git_revision(),
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "nproc": os.cpu_count(),
        "cpus_allowed": sorted(os.sched_getaffinity(0)),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "envoy": envoy_version(),
        "command": shlex.join([sys.executable, *sys.argv]),
        "loadavg_at_start": os.getloadavg(),
    }


def format_table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    cells = [[str(c) for c in header]] + [[_cell(c) for c in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    lines = [" | ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) for row in cells]
    lines.insert(1, "-+-".join("-" * w for w in widths))
    return "\n".join(lines)


def _cell(value: object) -> str:
    if isinstance(value, float):
        if math.isnan(value):
            return "n/a"
        return f"{value:.3g}" if abs(value) < 100 else f"{value:.0f}"
    return str(value)


def write_results(name: str, facts: dict[str, object], data: object, table: str) -> Path:
    """Write ``<name>-<timestamp>.json`` and ``.txt`` (the printed table) under results/."""
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    base = RESULTS_DIR / f"{name}-{stamp}"
    payload = {"machine": facts, "results": data, "table": table}
    base.with_suffix(".json").write_text(json.dumps(payload, indent=2, default=str) + "\n")
    header = "\n".join(f"# {key}: {value}" for key, value in facts.items())
    base.with_suffix(".txt").write_text(f"{header}\n\n{table}\n")
    return base.with_suffix(".json")


def cpu_seconds(pid: int) -> float:
    """utime + stime of a whole process (all its threads), in seconds."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    # After the ")" the fields start at "state" (field 3): utime (14) and stime (15) sit at 11, 12.
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS_PER_SECOND


def peak_rss_mb(pid: int) -> float:
    return _status_mb(pid, "VmHWM:")


def rss_mb(pid: int) -> float:
    """Resident memory now (``peak_rss_mb`` includes transient peaks, e.g. of an initial sync)."""
    return _status_mb(pid, "VmRSS:")


def _status_mb(pid: int, field: str) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field):
            return int(line.split()[1]) / 1024
    return math.nan


def command_line(pid: int) -> list[str]:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return []
    return [part.decode(errors="replace") for part in raw.split(b"\0") if part]


def kill_leftovers(pids: dict[int, list[str]]) -> list[int]:
    """SIGKILL each pid still running the command it ran when we recorded it (no pid reuse)."""
    killed = []
    for pid, argv in pids.items():
        if argv and command_line(pid) == argv:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
                killed.append(pid)
    return killed


def install_missing_tools(tools: Mapping[str, str]) -> list[str]:
    """Install with apt-get the Debian package of each tool (name -> package) not on PATH;
    returns the packages installed, and stops the benchmark naming any it could not get."""
    missing = sorted({package for tool, package in tools.items() if shutil.which(tool) is None})
    if not missing:
        return []
    print(f"installing {', '.join(missing)} with apt-get ...", flush=True)
    install = ["apt-get", "install", "-y", "--no-install-recommends", *missing]
    if subprocess.run(install, capture_output=True, check=False).returncode != 0:
        subprocess.run(["apt-get", "update"], capture_output=True, check=False)
        subprocess.run(install, capture_output=True, check=True)
    still_missing = [tool for tool in tools if shutil.which(tool) is None]
    if still_missing:
        raise SystemExit(f"cannot install {', '.join(still_missing)}")
    print(f"installed: {', '.join(missing)}", flush=True)
    return missing


class UpProcess:
    """A ``pilotfish up DIR`` child running this checkout's code, its log, and every process
    seen below it, so that none can outlive the benchmark (``stop`` kills what is left)."""

    def __init__(self, directory: Path, log_path: Path, admin_port: int) -> None:
        self.directory = directory
        self.admin_port = admin_port
        self.log_path = log_path
        self._log = log_path.open("wb")
        self.process = spawn_up(
            directory,
            admin_port,
            self._log,
            env={**os.environ, "PYTHONPATH": str(REPO / "src")},
            preexec_fn=die_with_parent,  # a SIGKILLed benchmark must not leave a mesh running
        )
        self.seen: dict[int, list[str]] = {}

    def remember_processes(self) -> None:
        """Note every process below ``up`` now, with its command line."""
        for pid in descendant_pids(self.process.pid) | {self.process.pid}:
            argv = command_line(pid)
            if argv:
                self.seen.setdefault(pid, argv)

    def log(self) -> str:
        """The end of ``up``'s output so far."""
        self._log.flush()
        return self.log_path.read_text(errors="replace")[-4000:]

    def stop(self) -> list[int]:
        """SIGTERM ``up`` (SIGKILL its group after 30 s); the pids left over that were killed."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
        self._log.close()
        return kill_leftovers(self.seen)


@contextlib.contextmanager
def terminate_on_sigterm() -> Iterator[None]:
    """Turn SIGTERM into KeyboardInterrupt so the same ``finally`` blocks clean up for both."""

    def interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def die_with_parent() -> None:
    """Ask the kernel to SIGTERM the calling process when its parent dies (PR_SET_PDEATHSIG),
    so that nothing we start outlives a benchmark killed with SIGKILL."""
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGTERM)


def pin_to_cpu(pid: int, cpu: int) -> bool:
    """Pin every thread of ``pid``; False when the machine has no such CPU."""
    if cpu not in os.sched_getaffinity(0):
        return False
    result = subprocess.run(
        ["taskset", "-a", "-cp", str(cpu), str(pid)], capture_output=True, check=False
    )
    return result.returncode == 0


def start_control_plane(folder: Path) -> tuple[subprocess.Popen[bytes], int]:
    """`pilotfish control-plane FOLDER`, a child that dies with us, and its xDS port."""
    ports_file = folder / "ports.json"
    child = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "pilotfish.cli.main",
            "--log-level",
            "error",
            "control-plane",
            str(folder),
            "--ports-file",
            str(ports_file),
        ],
        stdout=subprocess.DEVNULL,
        preexec_fn=die_with_parent,
    )
    deadline = time.monotonic() + 60
    while not ports_file.exists() or not ports_file.read_text():
        if child.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError("the control plane did not start")
        time.sleep(0.05)
    return child, int(json.loads(ports_file.read_text())["xds"])
