"""The cost of transparent interception: the same HTTP load via HTTP_PROXY and via iptables.

Two ``pilotfish up`` meshes run at once, alike but for ``spec.interception``: a client Workload
(which only idles, so that it has a sidecar and, in transparent mode, a namespace) and an nginx
backend. Per repetition, interleaved, one bounded load of ``--count`` requests on
``--connections`` keep-alive connections goes:

  explicit     loader -> client sidecar as its HTTP proxy (``GET http://backend:8080/``, the
               form an HTTP_PROXY client sends) -> backend sidecar -> nginx, all over loopback
  transparent  loader in the client's namespace -> ``backend:8080`` (its /etc/hosts names the
               service's address) -> iptables REDIRECT -> client sidecar (original-destination
               listener) -> veth, bridge -> backend's namespace, REDIRECT -> backend sidecar
               -> nginx

The loader (below, standard library) times each request; p50/p99 and req/s are the medians of
the repetitions, and each row's ratio is to explicit. The Envoys are pinned to CPU 0, nginx
and the loader to CPU 1 (a 2-core machine: absolute numbers are noise, ratios are not).

Run as root: ``.venv/bin/python benchmarks/interception.py`` (about a minute).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bench_report import (
    UpProcess,
    command_line,
    descendant_pids,
    format_table,
    install_missing_tools,
    machine_facts,
    median,
    pin_to_cpu,
    terminate_on_sigterm,
    write_results,
)

from pilotfish.agent.ports import free_port

PROXY_CPU = 0
LOAD_CPU = 1
BACKEND = "backend"
PORT = 8080

LOADER = r'''
"""Send COUNT requests on CONNECTIONS keep-alive connections; print latencies as JSON."""
import json, socket, sys, threading, time

host, port, target = sys.argv[1], int(sys.argv[2]), sys.argv[3]
count, connections = int(sys.argv[4]), int(sys.argv[5])
request = f"GET {target} HTTP/1.1\r\nHost: backend:8080\r\n\r\n".encode()
latencies, errors, lock = [], [0], threading.Lock()

def read_response(stream):
    status = stream.readline()
    length = 0
    while True:
        line = stream.readline()
        if line in (b"\r\n", b""):
            break
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    stream.read(length)
    return status

def worker(n):
    sock = socket.create_connection((host, port))
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    stream = sock.makefile("rb")
    mine = []
    for _ in range(n):
        start = time.perf_counter()
        sock.sendall(request)
        status = read_response(stream)
        mine.append(time.perf_counter() - start)
        if b" 200 " not in status:
            with lock:
                errors[0] += 1
    with lock:
        latencies.extend(mine)
    sock.close()

started = time.perf_counter()
share = count // connections
threads = [threading.Thread(target=worker, args=(share,)) for _ in range(connections)]
for t in threads: t.start()
for t in threads: t.join()
elapsed = time.perf_counter() - started
latencies.sort()
def pct(q): return latencies[min(len(latencies) - 1, int(q * len(latencies)))] * 1e6
print(json.dumps({"requests": len(latencies), "errors": errors[0], "seconds": elapsed,
                  "p50_us": pct(0.50), "p99_us": pct(0.99)}))
'''

NGINX = r"""
# Started by `pilotfish up` as the backend Workload: nginx on 127.0.0.1:$PORT.
import os, pathlib
here = pathlib.Path(__file__).parent
work = here / ("nginx-" + os.environ["PILOTFISH_REPLICA"])
work.mkdir(exist_ok=True)
conf = work / "nginx.conf"
conf.write_text('''
worker_processes 1;
pid %(work)s/nginx.pid;
error_log stderr warn;
events { worker_connections 1024; }
http {
  access_log off;
  client_body_temp_path %(work)s/body;
  proxy_temp_path %(work)s/proxy;
  fastcgi_temp_path %(work)s/fastcgi;
  uwsgi_temp_path %(work)s/uwsgi;
  scgi_temp_path %(work)s/scgi;
  keepalive_requests 1000000;
  server {
    listen 127.0.0.1:%(port)s;
    location / { default_type text/plain; return 200 "hello from nginx\n"; }
  }
}
''' % {"work": work, "port": os.environ["PORT"]})
os.execvp("nginx", ["nginx", "-c", str(conf), "-g", "daemon off;"])
"""

CLIENT = r"""
# The client Workload: it idles, so that it gets a sidecar (and, transparent, a namespace).
import os, pathlib, socket, time
here = pathlib.Path(__file__).parent
(here / "client.proxy").write_text(os.environ.get("HTTP_PROXY", ""))
server = socket.socket()
server.bind(("127.0.0.1", int(os.environ["PORT"])))
server.listen(16)
while True:
    time.sleep(3600)
"""


def write_mesh(directory: Path, interception: str) -> None:
    apps = directory / "apps"
    apps.mkdir(parents=True)
    (apps / "nginx_app.py").write_text(NGINX)
    (apps / "client_app.py").write_text(CLIENT)
    python = sys.executable
    (directory / "mesh.yaml").write_text(
        textwrap.dedent(
            f"""\
            apiVersion: pilotfish.io/v1alpha1
            kind: MeshConfig
            metadata: {{name: mesh}}
            spec:
              interception: {interception}
              enableTracing: false
            ---
            apiVersion: pilotfish.io/v1alpha1
            kind: Workload
            metadata: {{name: backend}}
            spec:
              service: {BACKEND}
              port: {PORT}
              command: [{python}, {apps / "nginx_app.py"}]
            ---
            apiVersion: pilotfish.io/v1alpha1
            kind: Workload
            metadata: {{name: client}}
            spec:
              service: client
              port: {PORT}
              command: [{python}, {apps / "client_app.py"}]
            """
        )
    )


class Mesh(UpProcess):
    def __init__(self, work: Path, interception: str) -> None:
        self.interception = interception
        self.directory = work / interception
        write_mesh(self.directory, interception)
        super().__init__(self.directory, work / f"up-{interception}.log", free_port())

    def loader_argv(self, loader: Path, count: int, connections: int) -> list[str]:
        """The loader's command line: to the sidecar as a proxy, or inside the namespace."""
        base = [sys.executable, str(loader)]
        if self.interception == "explicit":
            proxy = (self.directory / "apps" / "client.proxy").read_text().strip()
            host, port = proxy.removeprefix("http://").rsplit(":", 1)
            target = f"http://{BACKEND}:{PORT}/"
            argv = [*base, host, port, target, str(count), str(connections)]
        else:
            namespace = self.client_namespace()
            argv = ["ip", "netns", "exec", namespace, *base, BACKEND, str(PORT), "/"]
            argv += [str(count), str(connections)]
        if shutil.which("taskset") and LOAD_CPU in os.sched_getaffinity(0):
            argv = ["taskset", "-c", str(LOAD_CPU), *argv]
        return argv

    def client_namespace(self) -> str:
        for pid in descendant_pids(self.process.pid):
            if any("client_app.py" in part for part in command_line(pid)):
                found = subprocess.run(
                    ["ip", "netns", "identify", str(pid)], capture_output=True, text=True
                ).stdout.strip()
                if found:
                    return found
        raise RuntimeError("no client replica in a namespace yet")

    def pin(self) -> None:
        """Envoys on CPU 0; nginx (and the loader) on CPU 1, as the other benchmarks do."""
        for pid in descendant_pids(self.process.pid):
            argv = command_line(pid)
            if argv and Path(argv[0]).name.startswith("envoy"):
                pin_to_cpu(pid, PROXY_CPU)
            elif argv and Path(argv[0]).name == "nginx":
                pin_to_cpu(pid, LOAD_CPU)


def run_loader(argv: Sequence[str], timeout: float = 120.0) -> dict[str, Any]:
    done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"loader failed ({done.returncode}): {done.stderr[-2000:]}")
    result: dict[str, Any] = json.loads(done.stdout)
    return result


def wait_ready(mesh: Mesh, loader: Path, timeout: float = 90.0) -> None:
    deadline = time.monotonic() + timeout
    last = ""
    while time.monotonic() < deadline:
        if mesh.process.poll() is not None:
            raise RuntimeError(f"pilotfish up ({mesh.interception}) exited:\n{mesh.log()}")
        mesh.remember_processes()
        with contextlib.suppress(RuntimeError, OSError, subprocess.TimeoutExpired, ValueError):
            probe = run_loader(mesh.loader_argv(loader, 1, 1), timeout=10)
            if probe["errors"] == 0:
                mesh.remember_processes()
                return
            last = json.dumps(probe)
        time.sleep(0.5)
    raise RuntimeError(f"{mesh.interception} mesh did not serve ({last}):\n{mesh.log()}")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--count", type=int, default=10_000, help="requests per run")
    parser.add_argument("--connections", type=int, default=4)
    parser.add_argument("--repetitions", type=int, default=3)
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        print("transparent interception needs root: run this benchmark as root", file=sys.stderr)
        return 2
    install_missing_tools({"nginx": "nginx"})  # the backend both paths load
    work = Path(tempfile.mkdtemp(prefix="pilotfish-bench-interception-"))
    loader = work / "loader.py"
    loader.write_text(LOADER)
    meshes = [Mesh(work, "explicit"), Mesh(work, "transparent")]
    runs: dict[str, list[dict[str, Any]]] = {m.interception: [] for m in meshes}
    try:
        with terminate_on_sigterm():
            for mesh in meshes:
                wait_ready(mesh, loader)
                mesh.pin()
            for repetition in range(args.repetitions):
                for mesh in meshes if repetition % 2 == 0 else reversed(meshes):
                    result = run_loader(mesh.loader_argv(loader, args.count, args.connections))
                    runs[mesh.interception].append(result)
                    print(f"{mesh.interception:12} run {repetition + 1}: {json.dumps(result)}")
    finally:
        for mesh in meshes:
            mesh.stop()
        shutil.rmtree(work, ignore_errors=True)
    summary = {
        name: {
            "p50_us": median([r["p50_us"] for r in results]),
            "p99_us": median([r["p99_us"] for r in results]),
            "rps": median([r["requests"] / r["seconds"] for r in results]),
            "errors": sum(r["errors"] for r in results),
        }
        for name, results in runs.items()
    }
    base = summary["explicit"]
    rows = [
        [
            name,
            f"{s['p50_us']:.0f}",
            f"{s['p50_us'] / base['p50_us']:.2f}x",
            f"{s['p99_us']:.0f}",
            f"{s['p99_us'] / base['p99_us']:.2f}x",
            f"{s['rps']:.0f}",
            f"{s['rps'] / base['rps']:.2f}x",
            s["errors"],
        ]
        for name, s in summary.items()
    ]
    header = [
        "path",
        "p50 us",
        "p50 ratio",
        "p99 us",
        "p99 ratio",
        "req/s",
        "req/s ratio",
        "errors",
    ]
    table = format_table(header, rows)
    note = (
        f"{args.count} requests x {args.repetitions} repetitions on {args.connections} "
        "connections, medians; ratios to explicit (HTTP_PROXY)"
    )
    print(f"\n{note}\n{table}")
    facts = {**machine_facts(), "note": note}
    path = write_results("interception", facts, {"runs": runs, "summary": summary}, table)
    print(f"results: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
