from __future__ import annotations

from pilotfish.admin.proxy_status import format_status

SYNCED = {"status": "SYNCED", "acked_version": "a1b2c3d4e5", "sent_version": "a1b2c3d4e5"}


def test_each_proxy_is_a_row_and_each_nack_is_spelled_out() -> None:
    proxies = [
        {
            "node_id": "web-0",
            "kind": "sidecar",
            "stream": "delta",
            "types": {"CDS": SYNCED, "EDS": SYNCED, "LDS": SYNCED, "RDS": SYNCED},
        },
        {
            "node_id": "api-0",
            "kind": "sidecar",
            "stream": "sotw",
            "types": {
                "CDS": {
                    "status": "NACKED",
                    "acked_version": "old00000",
                    "sent_version": "new00000",
                    "nack": "LB policy ROUND_ROBIN is not valid for Cluster type ORIGINAL_DST",
                },
                "LDS": SYNCED,
            },
        },
    ]
    table = format_status(proxies, {"generation": 7, "diagnostics": []})
    lines = table.splitlines()
    assert lines[0].split() == [
        *("NAME", "KIND", "STREAM", "IDENTITY", "CERT", "EXPIRES", "CDS", "EDS", "LDS", "RDS")
    ]
    assert lines[1].split()[:6] == ["api-0", "sidecar", "sotw", "-", "-", "NACKED"]  # by name
    # api-0 never asked for EDS nor RDS (as a gateway with only a TCP server needs no RDS).
    assert lines[1].split()[6:] == ["(old00000)", "-", "SYNCED", "(a1b2c3d4)", "-"]
    assert "(-: not asked for, e.g. RDS by a proxy with no HTTP listener)" in table
    assert lines[2].startswith("web-0") and lines[2].count("SYNCED (a1b2c3d4)") == 4
    assert "  api-0 CDS: LB policy ROUND_ROBIN is not valid" in table
    assert "config generation 7" in table


def test_a_rejected_edit_is_called_out_with_every_diagnostic() -> None:
    config = {
        "generation": 3,
        "applied_at": 100.0,
        "rejected_at": 200.0,
        "diagnostics": [
            {
                "file": "routing.yaml",
                "line": 12,
                "col": 7,
                "field": "spec.http[0].route",
                "message": "weights sum to 90, not 100",
                "severity": "error",
            }
        ],
    }
    table = format_status([], config)
    assert "(no proxy is connected)" in table
    assert "REJECTED" in table
    assert "routing.yaml:12:7: spec.http[0].route: weights sum to 90, not 100" in table


def test_an_applied_config_with_warnings_is_not_called_rejected() -> None:
    config = {
        "generation": 4,
        "applied_at": 300.0,
        "rejected_at": 200.0,
        "diagnostics": [
            {
                "file": "dr.yaml",
                "line": 5,
                "col": 3,
                "field": "spec.trafficPolicy.connectionPool",
                "message": "not implemented by Pilotfish; ignored",
                "severity": "warning",
            }
        ],
    }
    table = format_status([], config)
    assert "REJECTED" not in table
    assert "dr.yaml:5:3: warning: spec.trafficPolicy.connectionPool" in table


def test_a_type_beyond_the_usual_four_gets_its_column_in_push_order() -> None:
    proxies = [
        {
            "node_id": "web-0",
            "kind": "sidecar",
            "stream": "delta",
            "types": {
                "CDS": {"status": "SYNCED", "acked_version": "c1"},
                "SDS": {"status": "STALE", "sent_version": "s1"},
            },
        }
    ]
    header = format_status(proxies, {"generation": 1}).splitlines()[0].split()
    assert header[6:] == ["CDS", "EDS", "SDS", "LDS", "RDS"]


def test_a_proxy_with_a_certificate_shows_its_identity_and_when_the_cert_expires() -> None:
    proxies = [
        {
            "node_id": "web-0",
            "kind": "sidecar",
            "stream": "delta",
            "identity": "spiffe://cluster.local/ns/default/sa/web",
            "cert_not_after": "2026-12-02T10:15:42+00:00",
            "types": {"CDS": SYNCED},
        }
    ]
    row = format_status(proxies, {"generation": 1}).splitlines()[1].split()
    assert row[3:5] == ["spiffe://cluster.local/ns/default/sa/web", "2026-12-02T10:15Z"]


def test_the_ejected_column_counts_each_proxys_ejections_and_says_who_was_not_asked() -> None:
    proxies = [
        {"node_id": name, "kind": "sidecar", "stream": "delta", "types": {"CDS": SYNCED}}
        for name in ("frontend-0", "gateway", "late-0")
    ]
    ejections = [
        {"proxy": "frontend-0", "ejected": 1, "error": None},
        {"proxy": "gateway", "ejected": None, "error": "its Envoy admin did not answer"},
    ]
    lines = format_status(proxies, {"generation": 1}, ejections).splitlines()
    assert lines[0].split()[-1] == "EJECTED"
    assert [line.split()[-1] for line in lines[1:4]] == ["1", "?", "-"]
    assert "  gateway: its Envoy admin did not answer" in lines
    # Without the count (an older control plane), no column.
    assert "EJECTED" not in format_status(proxies, {"generation": 1})
