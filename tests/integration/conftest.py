from __future__ import annotations

import os

import pytest

# As the CLI does: these tests fork Envoy and workloads while gRPC threads run in this process.
# The children exec at once and need no gRPC fork handlers; under load, those handlers abort the
# child before it execs ("epoll_wait error: Bad file descriptor", SIGABRT). Set before any test
# module imports grpc.
os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "false")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        item.add_marker(pytest.mark.integration)
