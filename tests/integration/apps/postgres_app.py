"""A real PostgreSQL 15 as a `pilotfish up` Workload: a fresh cluster in a temporary folder
(trust authentication, user ``postgres``), listening on ``PORT`` on loopback, removed on exit.

PostgreSQL refuses to run as root: as root, it runs as the ``postgres`` user, in a folder that
user owns (pytest's own folders are closed to it).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import types

BIN = "/usr/lib/postgresql/15/bin"


def main() -> int:
    folder = tempfile.mkdtemp(prefix="pilotfish-pg-", dir="/tmp")
    as_user: list[str] = []
    if os.geteuid() == 0:
        shutil.chown(folder, "postgres", "postgres")
        as_user = ["setpriv", "--reuid=postgres", "--regid=postgres", "--clear-groups"]
    data = os.path.join(folder, "data")
    try:
        subprocess.run(
            [*as_user, f"{BIN}/initdb", "-D", data, "-U", "postgres", "--auth=trust", "--no-sync"],
            check=True,
            stdout=subprocess.DEVNULL,
        )
        server = subprocess.Popen(
            [
                *as_user,
                f"{BIN}/postgres",
                "-D",
                data,
                "-p",
                os.environ["PORT"],
                "-k",
                folder,
                "-c",
                "listen_addresses=127.0.0.1",
                "-c",
                "fsync=off",
            ]
        )

        def fast_shutdown(signum: int, frame: types.FrameType | None) -> None:
            server.send_signal(signal.SIGINT)

        signal.signal(signal.SIGTERM, fast_shutdown)
        signal.signal(signal.SIGINT, fast_shutdown)
        return server.wait()
    finally:
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
