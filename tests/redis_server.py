"""A real Debian ``redis-server`` on a free loopback port, in a temporary folder, saving
nothing (``--save ''``): started, killed and started again on the same port by the tests
of the global rate limits."""

from __future__ import annotations

import signal
import socket
import subprocess
import time
from pathlib import Path

from pilotfish.agent.ports import free_port

REDIS_SERVER = Path("/usr/bin/redis-server")
START_TIMEOUT_SECONDS = 10.0


class RedisServer:
    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.port = free_port()
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> None:
        log = (self.directory / "redis.log").open("ab")
        listen = ("--port", str(self.port), "--bind", "127.0.0.1")
        keep_nothing = ("--save", "", "--appendonly", "no", "--dir", str(self.directory))
        self._process = subprocess.Popen(
            [str(REDIS_SERVER), *listen, *keep_nothing],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        log.close()
        deadline = time.monotonic() + START_TIMEOUT_SECONDS
        while not self.ping():
            if self._process.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(
                    f"redis-server on {self.address} did not start: "
                    + (self.directory / "redis.log").read_text()[-2000:]
                )
            time.sleep(0.02)

    def ping(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1) as conn:
                conn.sendall(b"PING\r\n")
                return conn.recv(16).startswith(b"+PONG")
        except OSError:
            return False

    def kill(self) -> None:
        """SIGKILL, as a crash: every counter is gone (nothing is saved)."""
        if self._process is not None:
            self._process.kill()
            self._process.wait(timeout=10)
            self._process = None

    def pause(self) -> None:
        """SIGSTOP: connections stay open and nothing answers, as a hung Redis."""
        assert self._process is not None
        self._process.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        assert self._process is not None
        self._process.send_signal(signal.SIGCONT)

    def stop(self) -> None:
        if self._process is not None:
            self._process.send_signal(signal.SIGCONT)
            self._process.terminate()
            try:
                self._process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait(timeout=10)
            self._process = None
