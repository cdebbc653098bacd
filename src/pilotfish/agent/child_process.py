"""One run of a child process that cannot outlive us: Envoy, or a workload that `up` starts.

The child gets its own process group, so that stopping it also stops whatever it spawned and a
terminal's Ctrl-C reaches us first (we drain before anything dies). The kernel kills it if we
die, however we die. Its output (stdout and stderr, in the order written) goes line by line to
a callback, and the last lines are kept so that a failure can quote what the child said.

A ``ChildProcess`` is one lifetime: restarting means a new one (see ``Supervisor``).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import ctypes
import logging
import os
import signal
import sys
from collections.abc import Callable, Mapping, Sequence

from pilotfish.errors import PilotfishError

log = logging.getLogger(__name__)

LineSink = Callable[[str], None]

_PR_SET_PDEATHSIG = 1
_RECENT_LINES = 40
_LINE_LIMIT = 1 << 20
_OUTPUT_DRAIN_SECONDS = 2.0


class ProcessStartError(PilotfishError):
    """A child could not be started (or, for Envoy, did not become ready)."""


class ChildProcess:
    def __init__(
        self,
        argv: Sequence[str],
        *,
        name: str,
        cwd: str | None = None,
        env: Mapping[str, str] | None = None,
        on_line: LineSink | None = None,
        stop_timeout: float = 5.0,
    ) -> None:
        self.name = name
        self.argv = tuple(argv)
        self.cwd = cwd
        self.env = dict(env) if env is not None else None
        self.stop_timeout = stop_timeout
        self._on_line = on_line
        self._recent: collections.deque[str] = collections.deque(maxlen=_RECENT_LINES)
        self._proc: asyncio.subprocess.Process | None = None
        self._exited: asyncio.Future[int] | None = None
        self._pump: asyncio.Task[None] | None = None

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    @property
    def returncode(self) -> int | None:
        return self._proc.returncode if self._proc else None

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.returncode is None

    @property
    def exited(self) -> asyncio.Future[int]:
        """Resolves with the exit code, once the process has exited and its output pipe is
        closed (by asyncio's design); for ``asyncio.wait`` next to other things."""
        if self._exited is None:
            raise RuntimeError(f"{self.name} was never started")
        return self._exited

    @property
    def recent_output(self) -> tuple[str, ...]:
        return tuple(self._recent)

    async def start(self) -> None:
        """Spawn the process; ``ProcessStartError`` if it cannot be run at all."""
        if self._proc is not None:
            raise RuntimeError(f"{self.name}: a ChildProcess runs once; make a new one")
        where = f" in {self.cwd}" if self.cwd is not None else ""
        try:
            self._proc = await asyncio.create_subprocess_exec(
                *self.argv,
                cwd=self.cwd,
                env=self.env,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=die_with_parent_hook(os.getpid()),
                limit=_LINE_LIMIT,
            )
        except OSError as exc:
            raise ProcessStartError(
                f"{self.name}: cannot run {self.argv[0]}{where}: {exc}"
            ) from exc
        self._exited = asyncio.ensure_future(self._proc.wait())
        assert self._proc.stdout is not None
        self._pump = asyncio.create_task(self._pump_lines(self._proc.stdout))

    async def wait(self) -> int:
        """Wait for the process to exit and its output to be read; its exit code (negative:
        killed by that signal)."""
        code = await asyncio.shield(self.exited)
        # The pipe reaches EOF when the process exits; the timeout guards against a grandchild
        # that left our process group with the pipe still open.
        if self._pump is not None:
            _, pending = await asyncio.wait({self._pump}, timeout=_OUTPUT_DRAIN_SECONDS)
            for task in pending:
                task.cancel()
        return code

    async def stop(self, timeout: float | None = None) -> int | None:
        """SIGTERM the group, SIGKILL it after ``timeout`` (default ``stop_timeout``)."""
        if self._proc is None:
            return None
        if self._proc.returncode is None:
            self._signal_group(signal.SIGTERM)
            grace = self.stop_timeout if timeout is None else timeout
            try:
                await asyncio.wait_for(asyncio.shield(self.exited), grace)
            except TimeoutError:
                log.warning("%s ignored SIGTERM for %.1fs; killing it", self.name, grace)
                self._signal_group(signal.SIGKILL)
        else:
            # The leader is gone, but children it spawned may still hold the group.
            self._signal_group(signal.SIGKILL)
        return await self.wait()

    def _signal_group(self, signum: signal.Signals) -> None:
        assert self._proc is not None
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self._proc.pid, signum)

    async def _pump_lines(self, stream: asyncio.StreamReader) -> None:
        while True:
            try:
                raw = await stream.readline()
            except ValueError:  # a line longer than the limit: skip it, keep reading
                continue
            if not raw:
                return
            line = raw.decode("utf-8", "replace").rstrip("\r\n")
            self._recent.append(line)
            if self._on_line is not None:
                try:
                    self._on_line(line)
                except Exception:
                    # A broken sink must not stop the reading, or the child blocks on a full pipe.
                    log.exception(
                        "%s: output callback failed; output is no longer forwarded", self.name
                    )
                    self._on_line = None


def describe_exit(code: int | None) -> str:
    if code is None:
        return "no exit code"
    if code < 0:
        try:
            return f"signal {signal.Signals(-code).name}"
        except ValueError:
            return f"signal {-code}"
    return f"exit code {code}"


def die_with_parent_hook(parent_pid: int) -> Callable[[], None] | None:
    """A preexec_fn making the kernel SIGKILL the child when we die, however we die.

    The kernel ties this to the thread that forked, so the child must be started from a
    thread that lives as long as the process (the event loop's thread does).
    """
    if not sys.platform.startswith("linux"):
        return None
    # Resolve libc before fork: loading libraries in the child of a threaded parent is unsafe.
    prctl = ctypes.CDLL(None, use_errno=True).prctl

    def die_with_parent() -> None:
        prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
        if os.getppid() != parent_pid:
            os._exit(1)  # the parent died before prctl took effect

    return die_with_parent
