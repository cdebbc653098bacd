"""Reading an Envoy's /clusters and its outlier event log, with lines as Envoy 1.40 writes them."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from pilotfish.admin.endpoint_health import (
    ejected_count,
    host_health,
    latest_ejections,
    match_services,
    parse_outbound_cluster,
    parse_outlier_log,
    proxy_endpoints_json,
    seconds_between,
    service_clusters,
)
from pilotfish.translate.naming import outbound_cluster_name

HOST = "backend.default.svc.cluster.local"
CLUSTER = f"outbound|8080||{HOST}"

# As Envoy 1.40 wrote them (one line each), for a host ejected twice.
EJECT_GATEWAY = (
    '{"type":"CONSECUTIVE_GATEWAY_FAILURE","timestamp":"2026-12-01T16:10:18.389Z",'
    f'"cluster_name":"{CLUSTER}","upstream_url":"127.0.0.1:44379","action":"EJECT",'
    '"num_ejections":1,"enforced":true,"eject_consecutive_event":{}}'
)
UNEJECT = (
    '{"type":"CONSECUTIVE_5XX","timestamp":"2026-12-01T16:10:23.407Z",'
    f'"secs_since_last_action":"5","cluster_name":"{CLUSTER}",'
    '"upstream_url":"127.0.0.1:44379","action":"UNEJECT","num_ejections":1,"enforced":false}'
)
EJECT_5XX = (
    '{"type":"CONSECUTIVE_5XX","timestamp":"2026-12-01T16:10:28.911Z",'
    f'"secs_since_last_action":"5","cluster_name":"{CLUSTER}",'
    '"upstream_url":"127.0.0.1:44379","action":"EJECT","num_ejections":2,"enforced":true,'
    '"eject_consecutive_event":{}}'
)


def host_status(port: int, health: dict[str, Any], **stats: str) -> dict[str, Any]:
    return {
        "address": {"socket_address": {"address": "127.0.0.1", "port_value": port}},
        "stats": [
            {"name": "cx_connect_fail"},
            *({"name": k, "value": v} for k, v in stats.items()),
            {"type": "GAUGE", "name": "rq_pending_active"},
        ],
        "health_status": health,
        "weight": 1,
        "locality": {"region": "eu", "zone": "eu-1"},
    }


CLUSTERS: dict[str, Any] = {
    "cluster_statuses": [
        {
            "name": CLUSTER,
            "host_statuses": [
                host_status(51715, {"eds_health_status": "HEALTHY"}, rq_total="8", cx_active="2"),
                host_status(
                    44379,
                    {"failed_outlier_check": True, "eds_health_status": "HEALTHY"},
                    rq_total="4",
                    rq_error="4",
                ),
            ],
        },
        {"name": f"outbound|8080|v2|{HOST}", "host_statuses": []},
        {"name": "outbound|9090||other.default.svc.cluster.local", "host_statuses": []},
        {"name": "inbound|8080||", "host_statuses": []},
        {"name": "xds-grpc", "host_statuses": []},
    ]
}


def test_the_event_log_is_read_line_by_line_skipping_a_partial_first_line() -> None:
    text = EJECT_GATEWAY[40:] + "\n" + UNEJECT + "\n" + EJECT_5XX + "\n" + '{"type":"CONS'
    events = parse_outlier_log(text)
    assert [(e.action, e.reason, e.ejections) for e in events] == [
        ("UNEJECT", "CONSECUTIVE_5XX", 1),
        ("EJECT", "CONSECUTIVE_5XX", 2),
    ]
    assert events[1].upstream == "127.0.0.1:44379" and events[1].cluster == CLUSTER


def test_the_latest_ejection_wins_and_an_uneject_says_when_it_returned() -> None:
    log = parse_outlier_log("\n".join([EJECT_GATEWAY, UNEJECT]))
    (back,) = latest_ejections(log).values()
    assert (back.since, back.reason, back.returned_at) == (
        "2026-12-01T16:10:18.389Z",
        "CONSECUTIVE_GATEWAY_FAILURE",  # not the UNEJECT's meaningless type
        "2026-12-01T16:10:23.407Z",
    )
    again = latest_ejections(parse_outlier_log("\n".join([EJECT_GATEWAY, UNEJECT, EJECT_5XX])))
    ejection = again[(CLUSTER, "127.0.0.1:44379")]
    assert (ejection.reason, ejection.ejections, ejection.returned_at) == (
        "CONSECUTIVE_5XX",
        2,
        None,
    )


def test_an_ejection_detected_but_not_enforced_is_no_ejection() -> None:
    detected = EJECT_5XX.replace('"enforced":true', '"enforced":false')
    assert latest_ejections(parse_outlier_log(detected)) == {}


def test_only_the_services_outbound_clusters_are_read() -> None:
    clusters = service_clusters(CLUSTERS, HOST)
    assert [(c.port, c.subset) for c in clusters] == [(8080, None), (8080, "v2")]
    healthy, ejected = clusters[0].hosts
    assert (healthy.address, healthy.health, healthy.rq_total, healthy.cx_active) == (
        "127.0.0.1:51715",
        "HEALTHY",
        8,
        2,
    )
    assert (ejected.health, ejected.rq_error, ejected.rq_active) == ("EJECTED", 4, 0)
    assert ejected.locality == "eu/eu-1"
    assert service_clusters({"cluster_statuses": "nonsense"}, HOST) == []


@given(
    st.integers(min_value=1, max_value=65535),
    st.one_of(st.none(), st.from_regex(r"[a-z0-9-]{1,10}", fullmatch=True)),
    st.from_regex(r"[a-z0-9-]{1,10}(\.[a-z0-9-]{1,10}){0,4}", fullmatch=True),
)
def test_cluster_names_read_back_as_translation_writes_them(
    port: int, subset: str | None, hostname: str
) -> None:
    name = outbound_cluster_name(port, hostname, subset)
    assert parse_outbound_cluster(name) == (port, subset, hostname)


def test_health_is_the_worst_flag_and_every_flag_is_said() -> None:
    assert host_health({"eds_health_status": "HEALTHY"}) == ("HEALTHY", ())
    health, problems = host_health(
        {"failed_active_health_check": True, "failed_outlier_check": True}
    )
    assert health == "EJECTED"
    assert problems == ("ejected by outlier detection", "failed its active health check")
    assert host_health({"eds_health_status": "DRAINING"})[0] == "DRAINING"
    assert host_health({"pending_dynamic_removal": True})[0] == "PENDING_REMOVAL"


def test_an_ejected_host_says_since_when_and_why() -> None:
    clusters = service_clusters(CLUSTERS, HOST)[:1]
    ejections = latest_ejections(parse_outlier_log(EJECT_GATEWAY + "\n" + EJECT_5XX))
    (cluster,) = proxy_endpoints_json(clusters, ejections, {"127.0.0.1:44379": "backend-1"})
    healthy, ejected = cluster["endpoints"]  # type: ignore[misc]
    assert ejected["endpoint"] == "backend-1"
    assert ejected["ejection"] == {
        "since": "2026-12-01T16:10:28.911Z",
        "reason": "CONSECUTIVE_5XX",
        "ejections": 2,
    }
    assert healthy["endpoint"] is None and "ejection" not in healthy
    assert "last_ejection" not in healthy


def test_a_host_that_returned_shows_its_last_ejection() -> None:
    # The healthy host of CLUSTERS was ejected once and is back.
    log = EJECT_GATEWAY.replace("44379", "51715") + "\n" + UNEJECT.replace("44379", "51715")
    (cluster,) = proxy_endpoints_json(
        service_clusters(CLUSTERS, HOST)[:1], latest_ejections(parse_outlier_log(log)), {}
    )
    healthy = cluster["endpoints"][0]  # type: ignore[index]
    assert healthy["health"] == "HEALTHY" and "ejection" not in healthy
    assert healthy["last_ejection"]["returned_at"] == "2026-12-01T16:10:23.407Z"


def test_when_the_log_says_nothing_the_ejection_is_unknown_not_absent() -> None:
    clusters = service_clusters(CLUSTERS, HOST)[:1]
    for ejections, unknown in (
        (None, "its outlier event log is unreadable"),
        ({}, "not in its outlier event log yet"),
        # Its previous ejection ended; the current one's line is not written yet.
        (latest_ejections(parse_outlier_log(EJECT_GATEWAY + "\n" + UNEJECT)), "not in"),
    ):
        (cluster,) = proxy_endpoints_json(clusters, ejections, {})
        ejected = cluster["endpoints"][1]  # type: ignore[index]
        assert ejected["ejection"]["since"] is None
        assert ejected["ejection"]["unknown"].startswith(unknown)


def test_every_outbound_cluster_counts_for_the_ejected_count() -> None:
    every = service_clusters(CLUSTERS, None)
    assert [c.hostname for c in every] == [HOST, HOST, "other.default.svc.cluster.local"]
    assert ejected_count(every) == 1
    assert ejected_count(service_clusters(CLUSTERS, "other.default.svc.cluster.local")) == 0


def test_a_service_is_named_by_its_hostname_or_its_first_labels() -> None:
    known = [HOST, "backend.shop.svc.cluster.local", "api.example.com"]
    assert match_services(HOST, known) == [HOST]
    assert match_services("backend.default", known) == [HOST]
    assert match_services("backend", known) == ["backend.default.svc.cluster.local", known[1]]
    assert match_services("back", known) == []


def test_seconds_since_an_envoy_timestamp() -> None:
    now = datetime(2026, 12, 1, 16, 10, 30, 389000, tzinfo=UTC)
    assert seconds_between("2026-12-01T16:10:18.389Z", now) == 12.0
    assert seconds_between("yesterday", now) is None


def test_the_api_entry_is_plain_json() -> None:
    clusters = proxy_endpoints_json(service_clusters(CLUSTERS, HOST), None, {})
    assert json.loads(json.dumps(clusters)) == clusters


_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner),
    max_leaves=8,
)


@given(st.lists(_json | st.text(), max_size=5))
def test_no_line_makes_the_reader_fail(lines: list[object]) -> None:
    text = "\n".join(line if isinstance(line, str) else json.dumps(line) for line in lines)
    events = parse_outlier_log(text)
    latest_ejections(events)
    assert all(isinstance(e.ejections, int) for e in events)


@given(_json)
def test_no_clusters_answer_makes_the_reader_fail(answer: object) -> None:
    document = {"cluster_statuses": [{"name": CLUSTER, "host_statuses": [answer]}, answer]}
    for clusters in (service_clusters(document, HOST), service_clusters(document, None)):
        proxy_endpoints_json(clusters, {}, {})
