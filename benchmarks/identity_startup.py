"""How long `pilotfish up` takes until every replica holds its certificate, beside how long
it takes until every replica's sidecar is connected over xDS (the baseline, same run).

One Workload with N replicas (default 100, the most a Workload may have) of a tiny HTTP app.
Polled from the admin API every 100 ms: a proxy counts as connected when it appears in
``/api/proxies``, as certified when its entry carries ``cert_not_after``.

Run: ``.venv/bin/python benchmarks/identity_startup.py [--replicas N]`` (about a minute at 100).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
import urllib.request
from collections.abc import Sequence
from pathlib import Path

from bench_report import (
    REPO,
    command_line,
    descendant_pids,
    die_with_parent,
    format_table,
    kill_leftovers,
    machine_facts,
    write_results,
)

from pilotfish.agent.ports import free_port

APP = """\
import os
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
class H(BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200); self.send_header("content-length", "2"); self.end_headers()
        self.wfile.write(b"ok")
    def log_message(self, *args):
        pass
ThreadingHTTPServer(("127.0.0.1", int(os.environ["PORT"])), H).serve_forever()
"""
_direct = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def write_mesh(directory: Path, replicas: int) -> None:
    (directory / "app.py").write_text(APP)
    (directory / "mesh.yaml").write_text(
        textwrap.dedent(
            f"""\
            apiVersion: pilotfish.io/v1alpha1
            kind: Workload
            metadata: {{name: many}}
            spec:
              service: many
              port: 8080
              replicas: {replicas}
              serviceAccount: many
              command: [{sys.executable}, app.py]
            """
        )
    )


def proxies(admin: str) -> list[dict[str, object]]:
    try:
        with _direct.open(admin + "/api/proxies", timeout=2) as response:
            body = json.load(response)
    except OSError:
        return []
    found = body.get("proxies", [])
    return found if isinstance(found, list) else []


def run(replicas: int, timeout: float) -> dict[str, float | int | None]:
    with tempfile.TemporaryDirectory(prefix="pilotfish-identity-") as work:
        directory = Path(work) / "mesh"
        directory.mkdir()
        write_mesh(directory, replicas)
        admin_port = free_port()
        admin = f"http://127.0.0.1:{admin_port}"
        started = time.monotonic()
        process = subprocess.Popen(
            [
                *(sys.executable, "-m", "pilotfish.cli.main", "--log-level", "warning"),
                *("up", str(directory), "--admin-port", str(admin_port)),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
            env={**os.environ, "PYTHONPATH": str(REPO / "src")},
            preexec_fn=die_with_parent,
        )
        seen: dict[int, list[str]] = {}
        times: dict[str, float | int | None] = {
            "first_connected_s": None,
            "all_connected_s": None,
            "first_certified_s": None,
            "all_certified_s": None,
        }
        try:
            deadline = started + timeout
            while time.monotonic() < deadline and times["all_certified_s"] is None:
                now = time.monotonic() - started
                listed = proxies(admin)
                connected = len(listed)
                certified = sum(1 for p in listed if p.get("cert_not_after"))
                for key, count in (("connected", connected), ("certified", certified)):
                    if count and times[f"first_{key}_s"] is None:
                        times[f"first_{key}_s"] = now
                    if count >= replicas and times[f"all_{key}_s"] is None:
                        times[f"all_{key}_s"] = now
                for pid in descendant_pids(process.pid):
                    seen.setdefault(pid, command_line(pid))
                time.sleep(0.1)
            times["replicas"] = replicas
        finally:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(120)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
            kill_leftovers(seen)
        return times


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--replicas", type=int, default=100)
    parser.add_argument("--timeout", type=float, default=300.0)
    args = parser.parse_args(argv)
    times = run(args.replicas, args.timeout)

    def cell(key: str) -> str:
        value = times[key]
        return "-" if value is None else f"{value:.1f}"

    table = format_table(
        ["replicas", "first connected s", "all connected s", "first cert s", "all certs s"],
        [
            [
                args.replicas,
                cell("first_connected_s"),
                cell("all_connected_s"),
                cell("first_certified_s"),
                cell("all_certified_s"),
            ]
        ],
    )
    print(table)
    write_results("identity_startup", machine_facts(), times, table)
    return 0 if times["all_certified_s"] is not None else 1


if __name__ == "__main__":
    sys.exit(main())
