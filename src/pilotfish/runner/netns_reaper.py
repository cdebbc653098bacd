"""``python -m pilotfish.runner.netns_reaper PID``: clean up after ``up`` however it ends.

``up`` starts this with a pipe on its stdin and never writes to it. The pipe closes when ``up``
exits, also when it is SIGKILLed; then every namespace, link and hosts file named after PID is
removed. After a clean shutdown ``up`` has removed them already and this finds nothing.
"""

from __future__ import annotations

import signal
import sys

from pilotfish.runner.netns import clean_up_after


def main(argv: list[str]) -> int:
    # A terminal's Ctrl-C reaches the whole foreground group; the reaper must outlive `up`.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    pid = int(argv[1])
    while sys.stdin.buffer.read(65536):
        pass
    clean_up_after(pid)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
