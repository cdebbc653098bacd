"""The dashboard in real headless Chromium against a real `pilotfish up` mesh.

Every view is opened on a live mesh; a view passes only if the page logged no console error or
warning (a Content-Security-Policy violation is one), raised nothing, and no request failed.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import expect
from tests.integration.dashboard_browser import (
    WatchedPage,
    needs_chromium,
    take_screenshot,
)
from tests.integration.mesh_harness import (
    RunningMesh,
    echo_workload,
    free_port,
    gateway,
    http_get,
    running_mesh,
    write_yaml,
)
from tests.waiting import wait_until

FRONTEND = "frontend.default.svc.cluster.local"
BACKEND = "backend.default.svc.cluster.local"

ROUTES = """
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: edge}
spec:
  hosts: ["*"]
  gateways: [gw]
  http:
  - route: [{destination: {host: frontend}}]
---
"""

BROKEN = """
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: broken}
spec:
  hosts: [backend]
  http:
  - route: [{destination: {host: nowhere}}]
"""


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningMesh]:
    directory = tmp_path_factory.mktemp("dashboard")
    gateway_port = free_port()
    write_yaml(
        directory / "mesh.yaml",
        gateway(gateway_port)
        + echo_workload("frontend", "frontend", 8080, version="f1")
        + echo_workload("backend-v1", "backend", 8080, version="v1", replicas=2)
        + ROUTES,
    )
    with running_mesh(directory, gateway_port) as running:
        # No request goes through the mesh in this module: the traffic views must be empty.
        running.wait_endpoints(FRONTEND, 1)
        running.wait_endpoints(BACKEND, 2)
        wait_until(lambda: len(proxies(running)) == 4, 30, "the gateway and 3 sidecars")
        running.wait_synced()
        yield running


def proxies(mesh: RunningMesh) -> list[dict[str, object]]:
    listed = mesh.admin("/api/proxies").get("proxies", [])
    assert isinstance(listed, list)
    return listed


def open_view(page: WatchedPage, mesh: RunningMesh, route: str) -> None:
    page.page.goto(f"{mesh.admin_url}/#/{route}")
    expect(page.page.locator("#status")).to_have_class(re.compile(r"\blive\b"))


def test_assets_are_served_with_a_strict_content_security_policy(mesh: RunningMesh) -> None:
    index = http_get(mesh.admin_url + "/")
    assert index.status == 200
    assert index.headers["Content-Type"].startswith("text/html")
    policy = index.headers["Content-Security-Policy"]
    assert "default-src 'none'" in policy
    assert "script-src 'self'" in policy
    assert "unsafe" not in policy
    html = str(index.body["text"])
    # Every script is a file of ours: no inline code, nothing from another origin.
    scripts = re.findall(r"<script\b([^>]*)>(.*?)</script>", html, re.S)
    assert scripts
    assert all('src="/dashboard/' in attrs and not body.strip() for attrs, body in scripts)
    script = http_get(mesh.admin_url + "/dashboard/app.js")
    assert script.status == 200
    assert script.headers["Content-Type"].startswith("text/javascript")
    assert script.headers["X-Content-Type-Options"] == "nosniff"
    for missing in ("/dashboard/nothing.js", "/dashboard/..%2Fdashboard.py", "/dashboard/"):
        assert http_get(mesh.admin_url + missing).status == 404, missing


@needs_chromium
def test_proxies_page_lists_every_sidecar_synced_with_its_identity(
    mesh: RunningMesh, page: WatchedPage, artifacts: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    node_ids = sorted(str(p["node_id"]) for p in proxies(mesh))
    assert len(node_ids) == 4  # gateway, frontend, two backend replicas
    open_view(page, mesh, "proxies")
    rows = page.page.locator("table.proxies tr.proxy")
    expect(rows).to_have_count(len(node_ids))
    assert sorted(rows.evaluate_all("rows => rows.map(r => r.dataset.node)")) == node_ids
    for node_id in node_ids:
        row = page.page.locator(f'tr.proxy[data-node="{node_id}"]')
        expect(row.locator("td.sync")).to_have_text("SYNCED")
        expect(row.locator("td.identity")).to_contain_text("spiffe://cluster.local/ns/default/sa/")
        expect(row.locator("td.expiry")).to_have_text(re.compile(r"^in \d+ (h|min)$"))
    take_screenshot(page, artifacts, "proxies", capsys)
    page.assert_clean()


@needs_chromium
def test_services_page_lists_the_registry_and_links_to_each_service(
    mesh: RunningMesh, page: WatchedPage
) -> None:
    open_view(page, mesh, "services")
    backend = page.page.locator(f'table.services tr[data-service="{BACKEND}"]')
    expect(backend.locator("td").nth(2)).to_have_text("2")
    expect(page.page.locator(f'tr[data-service="{FRONTEND}"]')).to_be_visible()
    backend.get_by_role("link", name="backend").click()
    expect(page.page.locator(".heading h1")).to_have_text("backend")
    rows = page.page.locator("table.endpoints tbody tr")
    expect(rows).to_have_count(2)
    expect(rows.first).to_contain_text("backend-v1-")
    expect(rows.first).to_contain_text("version=v1")
    page.assert_clean()


@needs_chromium
def test_traffic_views_say_there_is_no_traffic_yet(mesh: RunningMesh, page: WatchedPage) -> None:
    open_view(page, mesh, "graph")
    expect(page.page.locator("main .notice.info")).to_contain_text("No traffic in the last minute")
    open_view(page, mesh, f"service/{BACKEND}")
    expect(page.page.locator('.tile[data-metric="requests"] .tile-value')).to_have_text("0")
    expect(page.page.locator('.tile[data-metric="p99_ms"] .tile-value')).to_have_text("\u2013")
    expect(page.page.locator('[data-chart="rps"] .empty')).to_have_text(
        "no requests in this period"
    )
    expect(page.page.locator(".callers")).to_have_count(0)
    expect(page.page.locator("main")).to_contain_text("Nobody called this service")
    page.assert_clean()


@needs_chromium
def test_config_page_shows_a_rejected_edit_and_its_recovery_live(
    mesh: RunningMesh, page: WatchedPage
) -> None:
    open_view(page, mesh, "config")
    clean = "No problems: the config applied cleanly."
    expect(page.page.locator(".notice.good")).to_have_text(clean)
    broken = mesh.directory / "broken.yaml"
    write_yaml(broken, BROKEN)
    try:
        # Live: the open page learns of the rejection by itself.
        banner = page.page.locator(".notice.bad")
        expect(banner).to_contain_text("The last edit was rejected", timeout=15_000)
        diagnostic = page.page.locator("table.diagnostics tr.diagnostic").first
        expect(diagnostic).to_contain_text("broken.yaml:")
        expect(diagnostic).to_contain_text("nowhere")
    finally:
        broken.unlink()
    expect(page.page.locator(".notice.good")).to_be_visible(timeout=15_000)
    expect(page.page.locator("table.diagnostics")).to_have_count(0)
    page.assert_clean()


@needs_chromium
def test_a_string_from_the_api_is_shown_as_text_never_as_markup(
    mesh: RunningMesh, page: WatchedPage
) -> None:
    # The diagnostic's message quotes the YAML's host, which here is markup.
    markup = '<img src=x onerror="document.title=1">'
    hostile = mesh.directory / "hostile.yaml"
    write_yaml(hostile, BROKEN.replace("host: nowhere", f"host: '{markup}'"))
    try:
        open_view(page, mesh, "config")
        diagnostic = page.page.locator("table.diagnostics tr.diagnostic").first
        expect(diagnostic).to_contain_text(markup, timeout=15_000)
        assert page.page.locator("main img").count() == 0
    finally:
        hostile.unlink()
    expect(page.page.locator(".notice.good")).to_be_visible(timeout=15_000)
    page.assert_clean()


HIDE = """hidden => {
    Object.defineProperty(document, "visibilityState", {
        configurable: true, get: () => (hidden ? "hidden" : "visible"),
    });
    document.dispatchEvent(new Event("visibilitychange"));
}"""


@needs_chromium
def test_polling_pauses_while_the_tab_is_hidden_and_resumes_when_shown(
    mesh: RunningMesh, page: WatchedPage
) -> None:
    open_view(page, mesh, "proxies")
    with page.page.expect_request(lambda r: "/api/proxies" in r.url):
        pass  # polling: the next read comes by itself
    page.page.evaluate(HIDE, True)
    expect(page.page.locator("#status")).to_have_text("paused while the tab is hidden")
    reads: list[str] = []
    page.page.on("request", lambda r: reads.append(r.url))
    page.page.wait_for_timeout(5000)  # more than two polling periods
    assert reads == []
    with page.page.expect_request(lambda r: "/api/proxies" in r.url):
        page.page.evaluate(HIDE, False)
    expect(page.page.locator("#status")).to_have_class(re.compile(r"\blive\b"))
    page.assert_clean()


@needs_chromium
def test_zz_the_page_says_so_when_the_control_plane_goes_away(
    mesh: RunningMesh, page: WatchedPage
) -> None:
    """Runs last in this module: it stops the mesh."""
    open_view(page, mesh, "proxies")
    expect(page.page.locator("tr.proxy").first).to_be_visible()
    mesh.stop()
    status = page.page.locator("#status")
    expect(status).to_have_text("control plane not answering", timeout=10_000)
    expect(page.page.locator("main .notice.warn")).to_contain_text(
        "The control plane is not answering"
    )
    # The refused connections themselves are the only problems: the page did not break.
    assert page.problems
    assert all("ERR_CONNECTION_REFUSED" in p for p in page.problems), page.problems
    wait_until(lambda: mesh.process.poll() is not None, 5, "pilotfish up to exit")
