"""Start and stop one workload replica's process, so that it never outlives the runner."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
from collections.abc import Mapping, Sequence

from pilotfish.agent.process_lifetime import die_with_parent_hook
from pilotfish.errors import PilotfishError
from pilotfish.runner.output import LineSink, pump_lines

log = logging.getLogger("pilotfish.runner")


class WorkloadStartError(PilotfishError):
    pass


class WorkloadProcess:
    def __init__(
        self,
        name: str,
        command: Sequence[str],
        directory: str,
        env: Mapping[str, str],
        sink: LineSink,
    ) -> None:
        self.name = name
        self.command = tuple(command)
        self.directory = directory
        self.env = dict(env)
        self._sink = sink
        self._process: asyncio.subprocess.Process | None = None
        self._pump: asyncio.Task[None] | None = None

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process else None

    @property
    def returncode(self) -> int | None:
        return self._process.returncode if self._process else None

    async def start(self) -> None:
        try:
            # Its own session, so stopping it also stops whatever it spawned.
            self._process = await asyncio.create_subprocess_exec(
                *self.command,
                cwd=self.directory,
                env=self.env,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=die_with_parent_hook(os.getpid()),
            )
        except OSError as exc:
            raise WorkloadStartError(
                f"{self.name}: cannot run {list(self.command)} in {self.directory}: {exc}"
            ) from exc
        assert self._process.stdout is not None
        self._pump = asyncio.create_task(pump_lines(self._process.stdout, self._sink))

    async def wait(self) -> int:
        assert self._process is not None
        return await self._process.wait()

    async def stop(self, timeout: float = 5.0) -> None:
        process = self._process
        if process is None:
            return
        if process.returncode is None:
            self._signal_group(signal.SIGTERM)
            try:
                await asyncio.wait_for(process.wait(), timeout)
            except TimeoutError:
                log.warning("%s ignored SIGTERM for %.0fs; killing it", self.name, timeout)
                self._signal_group(signal.SIGKILL)
                await process.wait()
        else:
            # The leader is gone but children it spawned may still hold the group.
            self._signal_group(signal.SIGKILL)
        if self._pump is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self._pump

    def _signal_group(self, signum: int) -> None:
        assert self._process is not None
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self._process.pid, signum)
