from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:  # playwright is imported only by the tests that open a browser
    from playwright.sync_api import Browser
    from tests.integration.dashboard_browser import WatchedPage

# As the CLI does: these tests fork Envoy and workloads while gRPC threads run in this process.
# The children exec at once and need no gRPC fork handlers; under load, those handlers abort the
# child before it execs ("epoll_wait error: Bad file descriptor", SIGABRT). Set before any test
# module imports grpc.
os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "false")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        item.add_marker(pytest.mark.integration)


# The dashboard's browser tests: one Chromium per module, a fresh watched page per test.
@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    from tests.integration.dashboard_browser import launch_browser

    yield from launch_browser()


@pytest.fixture
def page(browser: Browser) -> Iterator[WatchedPage]:
    from tests.integration.dashboard_browser import watched_page

    yield from watched_page(browser)


@pytest.fixture(scope="module")
def artifacts() -> Path:
    from tests.integration.dashboard_browser import artifacts_folder

    return artifacts_folder()
