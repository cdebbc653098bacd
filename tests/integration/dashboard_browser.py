"""Headless Chromium (Debian's /usr/bin/chromium) driven by Playwright, for the dashboard tests.

Playwright's own browser downloads are never used: the machine may be offline, and the browser
under test is the one users have.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from playwright.sync_api import Browser, ConsoleMessage, Page, Response, sync_playwright

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
    "--disable-sync",
)

NO_CHROMIUM = (
    f"{CHROMIUM} is absent: install Debian's chromium (.ci/run does) to test the dashboard"
)
# Skips before the test's mesh starts, rather than after.
needs_chromium = pytest.mark.skipif(not CHROMIUM.exists(), reason=NO_CHROMIUM)


def artifacts_folder() -> Path:
    """Where screenshots go: $PILOTFISH_TEST_ARTIFACTS, or a fresh temporary folder."""
    configured = os.environ.get("PILOTFISH_TEST_ARTIFACTS")
    folder = Path(configured) if configured else Path(tempfile.mkdtemp(prefix="pilotfish-dash-"))
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def take_screenshot(
    page: WatchedPage, folder: Path, name: str, capsys: pytest.CaptureFixture[str]
) -> Path:
    """The whole page as a PNG test artefact; its path is printed past pytest's capture."""
    path = folder / f"dashboard-{name}.png"
    page.page.screenshot(path=str(path), full_page=True)
    with capsys.disabled():
        print(f"\nscreenshot written: {path}")
    return path


@dataclass
class WatchedPage:
    """A page and everything that went wrong on it: console errors and warnings, uncaught
    exceptions, requests that failed or answered an error status."""

    page: Page
    problems: list[str] = field(default_factory=list)

    def assert_clean(self) -> None:
        assert not self.problems, "the page had problems:\n" + "\n".join(self.problems)


def launch_browser() -> Iterator[Browser]:
    if not CHROMIUM.exists():
        pytest.skip(NO_CHROMIUM)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=str(CHROMIUM), headless=True, args=list(CHROMIUM_FLAGS)
        )
        try:
            yield browser
        finally:
            browser.close()


def watched_page(browser: Browser) -> Iterator[WatchedPage]:
    context = browser.new_context(viewport={"width": 1280, "height": 860})
    page = context.new_page()
    watched = WatchedPage(page)
    problems = watched.problems

    def console(message: ConsoleMessage) -> None:
        if message.type in ("error", "warning"):
            problems.append(f"console {message.type}: {message.text}")

    def response(reply: Response) -> None:
        if reply.status >= 400:
            problems.append(f"HTTP {reply.status} from {reply.url}")

    page.on("console", console)
    page.on("pageerror", lambda error: problems.append(f"uncaught: {error}"))
    page.on("requestfailed", lambda r: problems.append(f"request failed: {r.url} ({r.failure})"))
    page.on("response", response)
    try:
        yield watched
    finally:
        context.close()
