"""Tie a child process's life to ours, so nothing we start outlives us."""

from __future__ import annotations

import ctypes
import os
import signal
import sys
from collections.abc import Callable

_PR_SET_PDEATHSIG = 1


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
