from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from pilotfish.load import load_text
from pilotfish.model.proxy import ProxyUpstream
from pilotfish.model.resources import MeshConfig, Upstream, Workload
from pilotfish.runner.plan import (
    ReplicaPorts,
    ReplicaSpec,
    plan_replicas,
    replica_environment,
    replica_upstreams,
)

WORKLOADS = """
apiVersion: pilotfish.io/v1alpha1
kind: Workload
metadata: {name: api-v1}
spec:
  service: api
  port: 8080
  replicas: 2
  labels: {version: v1}
  command: [python3, app.py]
  env: {MODE: fast, PORT: "1"}
"""


def plan() -> dict[str, object]:
    result = load_text(WORKLOADS, "w.yaml", directory=Path("/srv/app"))
    assert result.config is not None
    return dict(plan_replicas(result.config))


def test_every_replica_gets_a_stable_name_and_its_service_hostname() -> None:
    replicas = plan()
    assert list(replicas) == ["api-v1-0", "api-v1-1"]
    first = replicas["api-v1-0"]
    assert first.hostname == "api.default.svc.cluster.local"  # type: ignore[attr-defined]
    assert first.directory == "/srv/app"  # type: ignore[attr-defined]


def test_the_mesh_variables_win_over_the_user_env_and_the_inherited_one() -> None:
    result = load_text(WORKLOADS, "w.yaml", directory=Path("/srv/app"))
    assert result.config is not None
    spec = plan_replicas(result.config)["api-v1-1"]
    env = replica_environment(
        spec,
        ReplicaPorts(app=41000, inbound=41001, outbound=41002),
        {"HTTP_PROXY": "http://corporate:3128", "HTTPS_PROXY": "http://corp:3128", "HOME": "/"},
    )
    assert env["PORT"] == "41000"
    assert env["HTTP_PROXY"] == env["http_proxy"] == "http://127.0.0.1:41002"
    assert env["HTTPS_PROXY"] == env["https_proxy"] == "http://127.0.0.1:41002"
    assert env["MODE"] == "fast"
    assert env["HOME"] == "/"
    assert env["PILOTFISH_REPLICA"] == "api-v1-1"
    assert env["NO_PROXY"] == "localhost,127.0.0.1"


def test_every_replica_carries_its_workloads_locality() -> None:
    text = WORKLOADS.replace("  replicas: 2\n", "  replicas: 2\n  locality: us-east/zone-a\n")
    result = load_text(text, "w.yaml", directory=Path("/srv/app"))
    assert result.config is not None
    assert {r.locality for r in plan_replicas(result.config).values()} == {"us-east/zone-a"}
    assert {r.locality for r in plan_replicas(load_config()).values()} == {None}


def load_config() -> MeshConfig:
    result = load_text(WORKLOADS, "w.yaml", directory=Path("/srv/app"))
    assert result.config is not None
    return result.config


def test_upstreams_are_qualified_in_the_workloads_namespace_and_get_a_port_each() -> None:
    result = load_text(WORKLOADS, "w.yaml", directory=Path("/srv/app"))
    assert result.config is not None
    (workload,) = result.config.workloads
    shop = replace(workload, meta=replace(workload.meta, namespace="shop"))
    upstreams = (Upstream("db", 5432), Upstream("cache.other.svc.cluster.local", 6379, 16379))
    spec = _replica_of(replace(shop, upstreams=upstreams))
    picked = iter([40001, 40002])
    resolved = replica_upstreams(spec, lambda: next(picked))
    assert [u.proxy for u in resolved] == [
        ProxyUpstream("db.shop.svc.cluster.local", 5432, 40001),
        ProxyUpstream("cache.other.svc.cluster.local", 6379, 16379),
    ]
    assert {u.environment_name: u.address for u in resolved} == {
        "PILOTFISH_UPSTREAM_DB_5432": "127.0.0.1:40001",
        "PILOTFISH_UPSTREAM_CACHE_OTHER_SVC_CLUSTER_LOCAL_6379": "127.0.0.1:16379",
    }


def _replica_of(workload: Workload) -> ReplicaSpec:
    return plan_replicas(MeshConfig(workloads=(workload,)))[f"{workload.meta.name}-0"]
