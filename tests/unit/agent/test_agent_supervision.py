from __future__ import annotations

import asyncio
import itertools
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from tests.in_process_ca import InProcessCA

from pilotfish.agent.envoy_process import EnvoyStartError
from pilotfish.agent.supervisor import (
    OUTLIER_LOG_NAME,
    RestartPolicy,
    Sidecar,
    SupervisedEnvoy,
    Supervisor,
)
from pilotfish.agent.workload_certificate import WorkloadCertificates
from pilotfish.model.identity import SDS_CLUSTER_NAME
from pilotfish.model.proxy import ProxyNode

NODE = ProxyNode(id="web-0", service="web")
_pids = itertools.count(1000)


class FakeEnvoy:
    def __init__(self, fleet: Fleet, fails_to_start: bool) -> None:
        self.fleet = fleet
        self.fails_to_start = fails_to_start
        self.pid = next(_pids)
        self.exit_code: int | None = None
        self.exited = asyncio.Event()
        self.drained_for: float | None = None

    @property
    def running(self) -> bool:
        return not self.exited.is_set()

    @property
    def admin_url(self) -> str | None:
        return f"http://127.0.0.1:{self.pid}"

    @property
    def recent_output(self) -> tuple[str, ...]:
        return ("[warning] something went wrong",)

    async def start(self) -> None:
        if self.fails_to_start:
            self.crash(1)
            raise EnvoyStartError("envoy exited with exit code 1: unknown field 'nope'")
        await self.fleet.started.put(self)

    async def wait(self) -> int:
        await self.exited.wait()
        assert self.exit_code is not None
        return self.exit_code

    async def drain(self, grace_seconds: float) -> int | None:
        self.drained_for = grace_seconds
        return await self.stop()

    async def stop(self, timeout: float | None = None) -> int | None:
        if self.running:
            self.crash(0)
        return self.exit_code

    def crash(self, code: int) -> None:
        self.exit_code = code
        self.exited.set()


class Fleet:
    """Hands out fake Envoys; ``start_failures`` says which launches (0-based) fail."""

    def __init__(self, start_failures: set[int] | None = None) -> None:
        self.start_failures = start_failures or set()
        self.launched: list[FakeEnvoy] = []
        self.started: asyncio.Queue[FakeEnvoy] = asyncio.Queue()

    def __call__(self) -> SupervisedEnvoy:
        envoy = FakeEnvoy(self, fails_to_start=len(self.launched) in self.start_failures)
        self.launched.append(envoy)
        return envoy


def make_sidecar(fleet: Fleet, tmp_path: Path, policy: RestartPolicy | None = None) -> Sidecar:
    return Sidecar(
        NODE,
        xds_address=("127.0.0.1", 1),
        work_dir=tmp_path,
        restart_policy=policy or RestartPolicy(first_delay=0.0),
        process_factory=fleet,
    )


async def test_start_returns_when_ready_and_exposes_the_admin_url(tmp_path: Path) -> None:
    fleet = Fleet()
    sidecar = make_sidecar(fleet, tmp_path)
    await sidecar.start()
    assert sidecar.ready.is_set()
    assert sidecar.admin_url == fleet.launched[0].admin_url
    assert sidecar.pid == fleet.launched[0].pid
    await sidecar.shutdown(drain_seconds=3)
    assert fleet.launched[0].drained_for == 3
    assert not sidecar.ready.is_set()
    assert sidecar.pid is None


async def test_a_failed_first_start_is_raised_not_retried(tmp_path: Path) -> None:
    fleet = Fleet(start_failures={0})
    sidecar = make_sidecar(fleet, tmp_path)
    with pytest.raises(EnvoyStartError, match="unknown field"):
        await sidecar.start()
    assert len(fleet.launched) == 1


async def test_an_envoy_that_dies_is_restarted(tmp_path: Path) -> None:
    fleet = Fleet()
    sidecar = make_sidecar(fleet, tmp_path)
    await sidecar.start()
    first = await fleet.started.get()
    first.crash(-9)
    second = await asyncio.wait_for(fleet.started.get(), 5)
    assert second is not first
    assert sidecar.restarts == 1
    assert sidecar.pid == second.pid
    await sidecar.shutdown(drain_seconds=1)
    assert len(fleet.launched) == 2


async def test_failed_restarts_are_retried_until_one_succeeds(tmp_path: Path) -> None:
    fleet = Fleet(start_failures={1, 2})
    sidecar = make_sidecar(fleet, tmp_path)
    await sidecar.start()
    (await fleet.started.get()).crash(134)
    fourth = await asyncio.wait_for(fleet.started.get(), 5)
    assert fleet.launched.index(fourth) == 3
    await sidecar.shutdown(drain_seconds=1)


async def test_shutdown_interrupts_the_backoff_and_nothing_restarts(tmp_path: Path) -> None:
    fleet = Fleet()
    sidecar = make_sidecar(fleet, tmp_path, RestartPolicy(first_delay=3600.0))
    running = asyncio.create_task(sidecar.run())
    (await fleet.started.get()).crash(1)
    # run() now waits an hour before restarting; shutdown must not.
    await asyncio.wait_for(sidecar.shutdown(drain_seconds=1), 5)
    await asyncio.wait_for(running, 5)
    assert len(fleet.launched) == 1


async def test_shutdown_before_run_starts_nothing(tmp_path: Path) -> None:
    fleet = Fleet()
    sidecar = make_sidecar(fleet, tmp_path)
    await sidecar.shutdown(drain_seconds=1)
    await sidecar.run()
    assert fleet.launched == []


async def test_cancelling_run_stops_envoy(tmp_path: Path) -> None:
    fleet = Fleet()
    sidecar = make_sidecar(fleet, tmp_path)
    running = asyncio.create_task(sidecar.run())
    envoy = await fleet.started.get()
    running.cancel()
    with pytest.raises(asyncio.CancelledError):
        await running
    assert not envoy.running


async def test_ready_waits_for_the_started_hook() -> None:
    fleet = Fleet()
    hook_may_finish = asyncio.Event()
    hooked: list[SupervisedEnvoy] = []

    async def on_started(process: SupervisedEnvoy) -> None:
        hooked.append(process)
        await hook_may_finish.wait()

    supervisor = Supervisor("app", fleet, on_started=on_started)
    starting = asyncio.create_task(supervisor.start())
    await fleet.started.get()
    await asyncio.sleep(0)
    assert hooked == fleet.launched
    assert not supervisor.ready.is_set() and not starting.done()
    hook_may_finish.set()
    await asyncio.wait_for(starting, 5)
    assert supervisor.ready.is_set()
    await supervisor.stop()


async def test_stop_abandons_a_pending_started_hook_and_stops_the_process() -> None:
    fleet = Fleet()
    cancelled = asyncio.Event()

    async def never_done(process: SupervisedEnvoy) -> None:
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            cancelled.set()
            raise

    supervisor = Supervisor("app", fleet, on_started=never_done)
    running = asyncio.create_task(supervisor.run())
    envoy = await fleet.started.get()
    await asyncio.wait_for(supervisor.stop(), 5)
    assert cancelled.is_set()
    assert not envoy.running
    await asyncio.wait_for(running, 5)
    assert len(fleet.launched) == 1


async def test_after_stop_restarting_the_process_runs_on_and_its_exit_is_final() -> None:
    fleet = Fleet()
    exits: list[int] = []
    supervisor = Supervisor("app", fleet, on_exit=lambda process, code: exits.append(code))
    await supervisor.start()
    envoy = await fleet.started.get()
    supervisor.stop_restarting()
    assert not supervisor.ready.is_set()
    await asyncio.sleep(0)
    assert envoy.running  # e.g. while its endpoint is withdrawn and its sidecar drains
    envoy.crash(1)
    await asyncio.wait_for(supervisor.stop(), 5)
    assert exits == []
    assert len(fleet.launched) == 1


async def test_a_failing_started_hook_is_logged_and_supervision_goes_on(
    caplog: pytest.LogCaptureFixture,
) -> None:
    fleet = Fleet()

    async def broken(process: SupervisedEnvoy) -> None:
        raise RuntimeError("hook bug")

    supervisor = Supervisor("app", fleet, on_started=broken, policy=RestartPolicy(first_delay=0))
    await asyncio.wait_for(supervisor.start(), 5)
    assert supervisor.ready.is_set()
    assert "after-start hook failed" in caplog.text
    (await fleet.started.get()).crash(1)
    await asyncio.wait_for(fleet.started.get(), 5)  # still restarted
    await supervisor.stop()


def test_sidecar_builds_its_bootstrap_from_the_node(tmp_path: Path) -> None:
    sidecar = Sidecar(
        NODE, xds_address=("127.0.0.1", 7000), work_dir=tmp_path, admin_port=7001, delta=False
    )
    assert sidecar.bootstrap["node"]["id"] == "web-0"
    assert sidecar.bootstrap["dynamic_resources"]["ads_config"]["api_type"] == "GRPC"
    assert sidecar.name == "web-0"
    # Where the control plane finds what this proxy sees of its endpoints.
    metadata = sidecar.bootstrap["node"]["metadata"]
    assert metadata["PILOTFISH_ADMIN_ADDRESS"] == "127.0.0.1:7001"
    log_path = str(tmp_path.resolve() / OUTLIER_LOG_NAME)
    assert metadata["PILOTFISH_OUTLIER_LOG"] == log_path
    assert sidecar.bootstrap["cluster_manager"]["outlier_detection"] == {"event_log_path": log_path}


def test_a_sidecar_with_certificates_points_envoy_at_its_sds_socket(tmp_path: Path) -> None:
    plain = Sidecar(NODE, xds_address=("127.0.0.1", 7000), work_dir=tmp_path)
    assert plain.sds_socket is None
    assert [c["name"] for c in plain.bootstrap["static_resources"]["clusters"]] == ["xds-grpc"]
    certificates = WorkloadCertificates(NODE.identity("cluster.local"), InProcessCA(), 60)
    sidecar = Sidecar(
        NODE, xds_address=("127.0.0.1", 7000), work_dir=tmp_path, certificates=certificates
    )
    assert sidecar.sds_socket == tmp_path / "sds" / "socket"
    sds = sidecar.bootstrap["static_resources"]["clusters"][1]
    assert sds["name"] == SDS_CLUSTER_NAME
    endpoint = sds["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]
    assert endpoint["address"]["pipe"]["path"] == str(tmp_path / "sds" / "socket")


@given(st.integers(min_value=0, max_value=100_000))
def test_restart_delay_grows_and_is_capped(failures: int) -> None:
    policy = RestartPolicy(first_delay=0.2, max_delay=10.0)
    assert policy.delay(failures) <= policy.delay(failures + 1) <= policy.max_delay
    assert policy.delay(1) == policy.first_delay
    assert policy.delay(0) == 0.0


@given(st.integers(min_value=0, max_value=50), st.floats(min_value=0, max_value=1e6))
def test_a_long_enough_run_resets_the_failure_count(failures: int, uptime: float) -> None:
    policy = RestartPolicy(stable_after=30.0)
    after = policy.failures_after_exit(failures, uptime)
    assert after == (1 if uptime >= 30.0 else failures + 1)
