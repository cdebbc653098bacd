"""The process primitive and the supervision loop, with real child processes (Python scripts)."""

from __future__ import annotations

import asyncio
import signal
import sys
import textwrap
from pathlib import Path

import pytest
from tests.integration.mesh_harness import pid_alive
from tests.waiting import eventually

from pilotfish.agent.child_process import ChildProcess, ProcessStartError
from pilotfish.agent.supervisor import RestartPolicy, Supervisor


def python(name: str, script: str, **kwargs: object) -> ChildProcess:
    argv = [sys.executable, "-c", textwrap.dedent(script)]
    return ChildProcess(argv, name=name, **kwargs)  # type: ignore[arg-type]


# Starts a grandchild that outlives its parent unless someone stops the whole group. It does
# not hold our pipe: asyncio sees an exit only once the pipes are closed too.
SPAWNS_A_GRANDCHILD = """
    import subprocess, sys, time
    sleeper = [sys.executable, "-c", "import time; time.sleep(600)"]
    grandchild = subprocess.Popen(sleeper, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    print(grandchild.pid, flush=True)
    time.sleep({linger})
"""


async def first_line(lines: asyncio.Queue[str]) -> str:
    return await asyncio.wait_for(lines.get(), 10)


async def test_output_lines_of_stdout_and_stderr_reach_the_sink_in_order() -> None:
    lines: list[str] = []
    child = python(
        "talker",
        """
        import sys
        print("one", flush=True)
        print("two", file=sys.stderr, flush=True)
        print("three", flush=True)
        sys.exit(3)
        """,
        on_line=lines.append,
    )
    await child.start()
    assert await asyncio.wait_for(child.wait(), 10) == 3
    assert lines == ["one", "two", "three"]
    assert child.recent_output == ("one", "two", "three")
    assert not child.running


async def test_stop_ends_the_whole_process_group() -> None:
    lines: asyncio.Queue[str] = asyncio.Queue()
    child = python("parent", SPAWNS_A_GRANDCHILD.format(linger=600), on_line=lines.put_nowait)
    await child.start()
    grandchild = int(await first_line(lines))
    assert pid_alive(grandchild)
    assert await asyncio.wait_for(child.stop(), 10) == -signal.SIGTERM
    await eventually(lambda: not pid_alive(grandchild), "the grandchild to die", timeout=10)


async def test_stop_after_the_leader_exited_ends_what_it_left_behind() -> None:
    lines: asyncio.Queue[str] = asyncio.Queue()
    child = python("parent", SPAWNS_A_GRANDCHILD.format(linger=0), on_line=lines.put_nowait)
    await child.start()
    grandchild = int(await first_line(lines))
    await asyncio.wait_for(child.exited, 10)
    assert pid_alive(grandchild)
    await asyncio.wait_for(child.stop(), 10)
    await eventually(lambda: not pid_alive(grandchild), "the grandchild to die", timeout=10)


async def test_a_child_that_ignores_sigterm_is_killed_after_the_timeout() -> None:
    lines: asyncio.Queue[str] = asyncio.Queue()
    child = python(
        "stubborn",
        """
        import signal, time
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        print("ignoring SIGTERM", flush=True)
        time.sleep(600)
        """,
        on_line=lines.put_nowait,
    )
    await child.start()
    await first_line(lines)
    assert await asyncio.wait_for(child.stop(timeout=0.2), 10) == -signal.SIGKILL


async def test_an_overlong_line_is_skipped_and_reading_goes_on() -> None:
    lines: list[str] = []
    child = python(
        "verbose",
        """
        import sys
        sys.stdout.write("x" * (3 << 20) + "\\n")
        print("after", flush=True)
        """,
        on_line=lines.append,
    )
    await child.start()
    assert await asyncio.wait_for(child.wait(), 10) == 0
    assert lines[-1] == "after"
    assert all(len(line) <= 1 << 20 for line in lines)


async def test_a_failing_sink_does_not_block_the_child_on_a_full_pipe(
    caplog: pytest.LogCaptureFixture,
) -> None:
    def broken_sink(line: str) -> None:
        raise BrokenPipeError("the terminal went away")

    # Far more than a pipe holds: the child only finishes if we keep reading.
    child = python("chatty", "for i in range(100_000): print('line', i)", on_line=broken_sink)
    await child.start()
    assert await asyncio.wait_for(child.wait(), 20) == 0
    assert child.recent_output[-1] == "line 99999"
    assert "output callback failed" in caplog.text


async def test_a_command_that_cannot_run_is_a_start_error(tmp_path: Path) -> None:
    child = ChildProcess([str(tmp_path / "no-such-program")], name="ghost", cwd=str(tmp_path))
    with pytest.raises(ProcessStartError, match=r"ghost: cannot run .*no-such-program in "):
        await child.start()


async def test_a_supervised_process_that_exits_is_restarted_and_the_exit_reported() -> None:
    exits: list[int] = []
    started: asyncio.Queue[ChildProcess] = asyncio.Queue()

    async def on_started(process: ChildProcess) -> None:
        started.put_nowait(process)

    supervisor = Supervisor(
        "crasher",
        lambda: python("crasher", "import time; time.sleep(600)"),
        policy=RestartPolicy(first_delay=0.01),
        on_started=on_started,
        on_exit=lambda process, code: exits.append(code),
    )
    await supervisor.start()
    first = await asyncio.wait_for(started.get(), 10)
    assert first.pid is not None
    first_pid = first.pid
    await first.stop()  # from outside the supervisor: an exit nobody asked it for
    second = await asyncio.wait_for(started.get(), 10)
    assert second.pid != first_pid and second.running
    assert exits == [-signal.SIGTERM]
    assert supervisor.restarts == 1
    await asyncio.wait_for(supervisor.stop(), 10)
    assert not second.running
    assert exits == [-signal.SIGTERM]  # the asked-for stop is not reported as an exit
    assert started.empty()
