"""The dashboard's traffic views in real headless Chromium, while real requests cross a real mesh:
the graph, a service's golden metrics and a trace's waterfall. Numbers are read, traffic is
sent, and the same numbers are read again from the open page, which must have moved by itself.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Locator, expect
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
    running_mesh,
    write_yaml,
)
from tests.waiting import wait_until

pytestmark = needs_chromium

FRONTEND = "frontend.default.svc.cluster.local"
BACKEND = "backend.default.svc.cluster.local"
FRONTEND_WORKLOAD = "workload:default/frontend"
BACKEND_SERVICE = f"service:{BACKEND}"
THROUGH_BOTH = "/call?url=http://backend:8080/"

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


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningMesh]:
    directory = tmp_path_factory.mktemp("dashboard-traffic")
    gateway_port = free_port()
    write_yaml(
        directory / "mesh.yaml",
        gateway(gateway_port)
        + echo_workload("frontend", "frontend", 8080, version="f1")
        + echo_workload("backend-v1", "backend", 8080, version="v1", replicas=2)
        + ROUTES,
    )
    with running_mesh(directory, gateway_port) as running:
        running.wait_serving("/")
        running.wait_endpoints(BACKEND, 2)
        running.wait_synced()
        yield running


def send(mesh: RunningMesh, count: int) -> None:
    """``count`` requests gateway -> frontend -> backend, each answered 200."""
    for _ in range(count):
        reply = mesh.get(THROUGH_BOTH)
        assert reply.status == 200, reply


def number(locator: Locator) -> float:
    """The number a cell or tile shows, units aside: "1,204" -> 1204, "3.20 req/s" -> 3.2."""
    text = locator.text_content() or ""
    found = re.search(r"\d[\d,]*(\.\d+)?", text)
    assert found, f"no number in {text!r}"
    return float(found.group(0).replace(",", ""))


def grows(locator: Locator, above: float, what: str) -> None:
    """Wait until the open page shows more than ``above`` (it redraws every 2 s; the proxies
    report their requests about 1 s late)."""

    def moved() -> bool:
        return locator.count() == 1 and number(locator) > above

    wait_until(moved, 20, f"{what} to move past {above}")


def open_view(page: WatchedPage, mesh: RunningMesh, route: str) -> None:
    page.page.goto(f"{mesh.admin_url}/#/{route}")
    expect(page.page.locator("#status")).to_have_class(re.compile(r"\blive\b"))


def test_graph_shows_the_services_and_its_numbers_move_with_traffic(
    mesh: RunningMesh, page: WatchedPage, artifacts: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    send(mesh, 10)
    open_view(page, mesh, "graph")
    graph = page.page.locator("svg.graph")
    for name in ("frontend", "backend"):
        expect(graph.locator(f'.node.service[data-name="{name}"]')).to_be_visible(timeout=15_000)
    expect(graph.locator('.node.workload[data-name="pilotfish-ingressgateway"]')).to_be_visible()
    edge = graph.locator(
        f'.edge[data-source="{FRONTEND_WORKLOAD}"][data-target="{BACKEND_SERVICE}"]'
    )
    expect(edge.locator(".edge-rps")).to_have_text(re.compile(r"^\d+\.\d+ req/s$"))
    expect(edge.locator(".edge-success")).to_have_text("100.0%")
    expect(edge.locator(".edge-success")).to_have_class(re.compile(r"\bgood\b"))
    expect(edge.locator(".edge-p99")).to_have_text(re.compile(r"^\d+(\.\d+)? (ms|s)$"))

    row = page.page.locator(
        f'table.edges tr[data-source="{FRONTEND_WORKLOAD}"][data-target="{BACKEND_SERVICE}"]'
    )
    requests = row.locator("td").nth(5)
    grows(requests, 9, "the frontend -> backend requests in the edges table")
    first = number(requests)
    send(mesh, 15)
    grows(requests, first + 14, "the frontend -> backend requests after 15 more")
    take_screenshot(page, artifacts, "graph", capsys)
    page.assert_clean()


def test_service_page_golden_numbers_and_charts_move_with_traffic(
    mesh: RunningMesh, page: WatchedPage, artifacts: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    send(mesh, 5)
    open_view(page, mesh, f"service/{BACKEND}")
    requests = page.page.locator('.tile[data-metric="requests"] .tile-value')
    grows(requests, 4, "the backend's requests in the last minute")
    first = number(requests)
    send(mesh, 20)
    grows(requests, first + 19, "the backend's requests after 20 more")
    expect(page.page.locator('.tile[data-metric="success_rate"]')).to_have_class(
        re.compile(r"\bgood\b")
    )
    expect(page.page.locator('.tile[data-metric="success_rate"] .tile-value')).to_have_text(
        "100.0%"
    )
    expect(page.page.locator('.tile[data-metric="rps"] .tile-value')).to_have_text(
        re.compile(r"^\d+\.\d+ req/s$")
    )
    expect(page.page.locator('.tile[data-metric="p99_ms"] .tile-value')).to_have_text(
        re.compile(r"^\d+(\.\d+)? (ms|s)$")
    )
    for chart in ("rps", "success_rate", "p99_ms"):
        drawn = page.page.locator(f'[data-chart="{chart}"] svg').locator("polyline, circle")
        expect(drawn.first).to_be_attached()
        expect(page.page.locator(f'[data-chart="{chart}"] .empty')).to_have_count(0)
    expect(page.page.locator(".callers tr[data-source]")).to_have_count(1)
    expect(page.page.locator(".callers")).to_contain_text("frontend")
    expect(page.page.locator("table.endpoints tbody tr")).to_have_count(2)
    take_screenshot(page, artifacts, "service", capsys)
    page.assert_clean()


def test_services_page_shows_each_services_traffic(mesh: RunningMesh, page: WatchedPage) -> None:
    send(mesh, 5)
    open_view(page, mesh, "services")
    backend = page.page.locator(f'table.services tr[data-service="{BACKEND}"]')
    expect(backend.locator("td.success")).to_have_text("100.0%", timeout=15_000)
    expect(backend.locator("td").nth(3)).to_have_text(re.compile(r"^\d+\.\d+ req/s$"))
    page.assert_clean()


def test_a_trace_opens_as_a_waterfall(
    mesh: RunningMesh, page: WatchedPage, artifacts: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    send(mesh, 3)
    open_view(page, mesh, "traces")
    # A trace through the gateway into the frontend, once both proxies have posted their spans
    # (each flushes every second). The list redraws every 2 s: rows are found again by id.
    found: list[str] = []

    def traced_into_frontend() -> bool:
        for row in page.page.locator("table.traces tr.trace").all():
            cells = row.locator("td")
            if number(cells.nth(3)) >= 2 and "frontend" in (cells.nth(4).text_content() or ""):
                found.append(str(row.get_attribute("data-trace")))
                return True
        return False

    wait_until(traced_into_frontend, 20, "a trace of the gateway and the frontend in the list")
    page.page.locator(f'tr.trace[data-trace="{found[0]}"] a').click()
    expect(page.page.locator(".heading h1")).to_have_text("Trace")
    expect(page.page.locator(".heading .subtitle")).to_have_text(found[0])
    rows = page.page.locator(".waterfall .span-row")
    expect(rows.first).to_be_visible()
    assert rows.count() >= 2
    services = rows.locator(".span-service").all_text_contents()
    assert any("frontend" in s for s in services), services
    bar = rows.first.locator(".span-bar rect")
    assert float(bar.get_attribute("width") or 0) > 0
    rows.first.locator("summary").click()
    expect(rows.first.locator(".tags")).to_be_visible()
    take_screenshot(page, artifacts, "trace", capsys)
    page.assert_clean()
