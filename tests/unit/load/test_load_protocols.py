"""Port protocols as Istio selects them (protocol, port name, appProtocol, detection), the
Workload's ``protocol``/``appProtocol``/``upstreams`` and MeshConfig's ``interception``."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st
from load_cases import assert_at, find, load

from pilotfish.discovery import services_from_config
from pilotfish.load import load_texts
from pilotfish.load.parse_protocols import (
    ISTIO_PROTOCOLS,
    carried_as,
    protocol_of_app_protocol,
    protocol_of_name,
    select_protocol,
)
from pilotfish.model.resources import ServicePort, Upstream
from pilotfish.model.services import Service

WORKLOAD = """\
apiVersion: pilotfish.io/v1alpha1
kind: Workload
metadata: {name: web}
spec:
  service: web
  port: PORT
  command: [python3, app.py]
"""


def web(extra: str = "", port: int = 8080) -> str:
    return WORKLOAD.replace("PORT", str(port)) + extra


DB = """\
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: db}
spec:
  hosts: [db]
  location: MESH_INTERNAL
  resolution: STATIC
  ports:
  - {number: 5432, name: tcp-postgres, protocol: TCP}
  - {number: 53, name: dns, protocol: UDP}
  endpoints: [{address: 127.0.0.1}]
"""


# --- the rules, pure --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "protocol"),
    [
        ("http", "HTTP"),
        ("HTTP-web", "HTTP"),
        ("http2-api", "HTTP2"),
        ("grpc", "GRPC"),
        ("grpc-web", "GRPC-WEB"),
        ("grpc-web-api", "GRPC-WEB"),
        ("grpc-api", "GRPC"),
        ("tcp-db", "TCP"),
        ("tls", "TLS"),
        ("https-admin", "HTTPS"),
        ("mongo", "MONGO"),
        ("mysql-main", "MYSQL"),
        ("redis-0", "REDIS"),
        ("udp-dns", "UDP"),
        ("web", None),
        ("httpx", None),
        ("", None),
    ],
)
def test_a_port_name_names_its_protocol_before_the_first_dash(
    name: str, protocol: str | None
) -> None:
    assert protocol_of_name(name) == protocol


@pytest.mark.parametrize(
    ("app_protocol", "protocol"),
    [
        ("kubernetes.io/h2c", "HTTP2"),
        ("kubernetes.io/ws", "HTTP"),
        ("kubernetes.io/wss", "HTTPS"),
        ("grpc", "GRPC"),
        ("http-web", "HTTP"),
        ("example.com/custom", None),
    ],
)
def test_app_protocol_has_kubernetes_names_and_else_reads_as_a_port_name(
    app_protocol: str, protocol: str | None
) -> None:
    assert protocol_of_app_protocol(app_protocol) == protocol


def test_selection_order_is_protocol_then_app_protocol_then_name_then_detection() -> None:
    assert select_protocol(protocol="TCP", app_protocol="grpc", port_name="http") == "TCP"
    # Istio reads appProtocol instead of the name: the name is never looked at then.
    assert select_protocol(app_protocol="grpc", port_name="http") == "GRPC"
    assert select_protocol(app_protocol="custom", port_name="http") == "AUTO"
    assert select_protocol(port_name="http") == "HTTP"
    assert select_protocol(port_name="web", port=8080) == "AUTO"
    assert select_protocol() == "AUTO"


@given(name=st.text(max_size=20), app_protocol=st.none() | st.text(max_size=20))
def test_any_name_selects_an_istio_protocol_or_detection(
    name: str, app_protocol: str | None
) -> None:
    chosen = select_protocol(app_protocol=app_protocol, port_name=name, port=8080)
    assert chosen == "AUTO" or chosen in ISTIO_PROTOCOLS


@pytest.mark.parametrize("port", [25, 53, 3306, 27017])
def test_a_server_first_port_nothing_names_is_tcp(port: int) -> None:
    assert select_protocol(port=port) == "TCP"
    assert select_protocol(app_protocol="custom", port=port) == "TCP"
    assert select_protocol(port_name="http", port=port) == "HTTP"


@pytest.mark.parametrize(
    ("protocol", "carried"),
    [
        ("HTTP", "HTTP"),
        ("HTTP2", "HTTP2"),
        ("GRPC", "GRPC"),
        ("GRPC-WEB", "HTTP"),
        ("TCP", "TCP"),
        ("MONGO", "TCP"),
        ("MYSQL", "TCP"),
        ("REDIS", "TCP"),
        ("TLS", "TLS"),
        ("HTTPS", "TLS"),
        ("AUTO", "AUTO"),
        ("UDP", None),
        ("HTTP_PROXY", None),
    ],
)
def test_how_each_istio_protocol_is_carried(protocol: str, carried: str | None) -> None:
    assert carried_as(protocol) == carried


# --- Workload protocol and appProtocol --------------------------------------------------------


@pytest.mark.parametrize(
    ("extra", "port", "protocol"),
    [
        ("", 8080, "AUTO"),
        ("", 3306, "TCP"),
        ("  protocol: tcp\n", 8080, "TCP"),
        ("  protocol: TLS\n", 8080, "TLS"),
        ("  protocol: HTTPS\n", 8443, "TLS"),
        ("  protocol: Mongo\n", 27017, "TCP"),
        ("  protocol: GRPC\n", 8080, "GRPC"),
        ("  appProtocol: grpc\n", 8080, "GRPC"),
        ("  appProtocol: kubernetes.io/h2c\n", 8080, "HTTP2"),
        ("  appProtocol: tcp-db\n", 8080, "TCP"),
        ("  protocol: HTTP\n  appProtocol: http-web\n", 8080, "HTTP"),
    ],
)
def test_workload_protocol(extra: str, port: int, protocol: str) -> None:
    _text, result = load(web(extra, port))
    assert result.diagnostics == ()
    assert result.config is not None
    (workload,) = result.config.workloads
    assert workload.protocol == protocol


def test_a_workload_service_port_is_named_after_its_protocol() -> None:
    _text, result = load(web("  appProtocol: grpc\n"))
    assert result.config is not None
    (service,) = services_from_config(result.config).values()
    assert service.ports == (ServicePort(8080, "grpc", "GRPC"),)


def test_an_app_protocol_that_names_nothing_is_detected_with_a_warning() -> None:
    text, result = load(web("  appProtocol: example.com/custom\n"))
    warning = assert_at(
        result, text, "spec.appProtocol", "appProtocol", "names no protocol", severity="warning"
    )
    assert "detected from the traffic" in warning.message
    assert result.config is not None
    assert result.config.workloads[0].protocol == "AUTO"


def test_protocol_wins_over_a_different_app_protocol_with_a_warning() -> None:
    text, result = load(web("  protocol: TCP\n  appProtocol: grpc\n"))
    warning = assert_at(
        result, text, "spec.appProtocol", "appProtocol", "protocol decides", severity="warning"
    )
    assert warning.message.startswith("says GRPC but protocol says TCP")
    assert result.config is not None
    assert result.config.workloads[0].protocol == "TCP"


def test_a_grpc_web_workload_is_http_with_a_warning() -> None:
    text, result = load(web("  appProtocol: grpc-web\n"))
    assert_at(result, text, "spec.appProtocol", "appProtocol", "plain HTTP", severity="warning")
    assert result.config is not None
    assert result.config.workloads[0].protocol == "HTTP"


@pytest.mark.parametrize(
    ("extra", "field", "message"),
    [
        ("  protocol: UDP\n", "spec.protocol", "UDP is not carried"),
        ("  appProtocol: udp\n", "spec.appProtocol", "UDP is not carried"),
        ("  protocol: SMTP\n", "spec.protocol", '"SMTP" is not a protocol Istio knows'),
        ("  protocol: 7\n", "spec.protocol", "expected a string"),
        ("  appProtocol: [grpc]\n", "spec.appProtocol", "expected a string"),
    ],
)
def test_workload_protocol_errors(extra: str, field: str, message: str) -> None:
    _text, result = load(web(extra))
    assert message in find(result, field).message
    assert result.config is None


# --- Workload upstreams -----------------------------------------------------------------------


def test_upstreams_are_read_in_order() -> None:
    _text, result = load(
        web(
            "  upstreams:\n"
            "  - {service: db, port: 5432, localPort: 15432}\n"
            "  - {service: db.other.svc.cluster.local, port: 5432}\n"
        ),
        DB,
        DB.replace("{name: db}", "{name: db, namespace: other}"),
    )
    assert result.errors == ()
    assert result.config is not None
    assert result.config.workloads[0].upstreams == (
        Upstream("db", 5432, 15432),
        Upstream("db.other.svc.cluster.local", 5432, None),
    )


@pytest.mark.parametrize(
    ("upstream", "field", "needle", "message"),
    [
        ("{port: 5432}", "spec.upstreams[0].service", "{port", "required"),
        ("{service: db}", "spec.upstreams[0].port", "{service", "required"),
        ("{service: db, port: 0}", "spec.upstreams[0].port", "port: 0", "out of range"),
        ("{service: db, port: 5432, localPort: 70000}", "spec.upstreams[0].localPort",
         "localPort", "out of range"),
        ("{service: Db_1, port: 5432}", "spec.upstreams[0].service", "service: Db_1",
         "not a service name"),
        ("{service: db, port: 5432, local: 1}", "spec.upstreams[0].local", "local:",
         "unknown field"),
        ("db:5432", "spec.upstreams[0]", "db:5432", "expected a mapping"),
    ],
)  # fmt: skip
def test_bad_upstreams_are_errors_at_their_line(
    upstream: str, field: str, needle: str, message: str
) -> None:
    text, result = load(web(f"  upstreams:\n  - {upstream}\n"), DB)
    assert_at(result, text, field, needle, message)
    assert result.config is None


@pytest.mark.parametrize(
    ("upstreams", "field", "message"),
    [
        ("[{service: cache, port: 6379}]", "spec.upstreams[0].service",
         'unknown service "cache"'),
        ("[{service: db, port: 5433}]", "spec.upstreams[0].port",
         'service "db" has no port 5433 (it has 5432)'),
        ("[{service: db, port: 53}]", "spec.upstreams[0].port",
         "port 53 (UDP) of db is not carried"),
        ("[{service: db, port: 5432, localPort: 1}, {service: web, port: 8080, localPort: 1}]",
         "spec.upstreams[1].localPort", "local port 1 is already taken by Workload default/web"),
        ("[{service: db, port: 5432}, {service: db.default.svc.cluster.local, port: 5432}]",
         "spec.upstreams[1]", "db.default.svc.cluster.local port 5432 is already upstream "
         "spec.upstreams[0]"),
    ],
)  # fmt: skip
def test_upstreams_are_checked_against_the_registry(
    upstreams: str, field: str, message: str
) -> None:
    _text, result = load(web(f"  upstreams: {upstreams}\n"), DB)
    assert message in find(result, field).message
    assert result.config is None


UPSTREAMS = "  upstreams: [{service: cache, port: 6379}, {service: db, port: 5433}]\n"


@pytest.mark.parametrize(
    ("workload", "field"),
    [
        (web("  protocol: TPC\n" + UPSTREAMS), "spec.protocol"),
        (web(UPSTREAMS).replace("  command: [python3, app.py]\n", ""), "spec.command"),
        (web(UPSTREAMS).replace("  service: web\n", ""), "spec.service"),
        (web(UPSTREAMS).replace("{name: web}", "{}"), "metadata.name"),
    ],
)
def test_upstreams_are_checked_even_when_the_workload_has_errors_of_its_own(
    workload: str, field: str
) -> None:
    _text, result = load(workload, DB)
    assert find(result, field).severity == "error"
    assert 'unknown service "cache"' in find(result, "spec.upstreams[0].service").message
    assert "has no port 5433" in find(result, "spec.upstreams[1].port").message


def test_an_upstream_may_name_a_workload_service_or_a_registry_service() -> None:
    _text, result = load(
        web("  upstreams: [{service: api, port: 8080}]\n"),
        web().replace("name: web", "name: api").replace("service: web", "service: api"),
    )
    assert result.errors == ()
    elsewhere = Service("cache.default.svc.cluster.local", (ServicePort(6379, "tcp", "TCP"),))
    text = web("  upstreams: [{service: cache, port: 6379}]\n")
    loaded = load_texts([("mesh.yaml", text)], known_services={elsewhere.hostname: elsewhere})
    assert loaded.errors == ()
    assert load_texts([("mesh.yaml", text)]).errors != ()


def test_replicas_on_one_loopback_cannot_share_a_local_port() -> None:
    text, result = load(
        web("  replicas: 2\n  upstreams: [{service: db, port: 5432, localPort: 15432}]\n"), DB
    )
    error = assert_at(result, text, "spec.upstreams[0].localPort", "localPort", "each of the 2")
    assert "leave localPort unset" in error.message


def test_two_workloads_on_one_loopback_cannot_share_a_local_port() -> None:
    other = web().replace("name: web", "name: api").replace("service: web", "service: api")
    upstream = "  upstreams: [{service: db, port: 5432, localPort: 15432}]\n"
    _text, result = load(web(upstream), other + upstream, DB)
    error = find(result, "spec.upstreams[0].localPort")
    assert error.message.startswith("local port 15432 is already taken by Workload default/web")
    assert error.line > 10  # the second Workload's, not the first's


def test_with_transparent_interception_each_replica_has_its_own_loopback() -> None:
    other = web().replace("name: web", "name: api").replace("service: web", "service: api")
    upstream = "  upstreams: [{service: db, port: 5432, localPort: 15432}]\n"
    mesh = (
        "apiVersion: pilotfish.io/v1alpha1\nkind: MeshConfig\nmetadata: {name: mesh}\n"
        "spec: {interception: transparent}\n"
    )
    _text, result = load(web("  replicas: 2\n" + upstream), other + upstream, DB, mesh)
    assert result.errors == ()
    # Still one loopback per replica: two upstreams of one Workload cannot share a port.
    twice = "  upstreams: [{service: db, port: 5432, localPort: 1}, {service: api, port: 8080, localPort: 1}]\n"  # noqa: E501
    _text, result = load(web(twice), other, DB, mesh)
    assert "local port 1 is already taken" in find(result, "spec.upstreams[1].localPort").message


# --- MeshConfig interception ------------------------------------------------------------------

MESH = "apiVersion: pilotfish.io/v1alpha1\nkind: MeshConfig\nmetadata: {name: mesh}\nspec:\n"


@pytest.mark.parametrize(
    ("spec", "interception"),
    [("  trustDomain: example.org\n", "explicit"), ("  interception: transparent\n", "transparent"),
     ("  interception: explicit\n", "explicit")],
)  # fmt: skip
def test_interception(spec: str, interception: str) -> None:
    _text, result = load(MESH + spec)
    assert result.diagnostics == ()
    assert result.config is not None
    assert result.config.mesh.interception == interception


@pytest.mark.parametrize("value", ["Transparent", "iptables", "'on'"])
def test_interception_must_be_explicit_or_transparent(value: str) -> None:
    text, result = load(MESH + f"  interception: {value}\n")
    assert_at(result, text, "spec.interception", "interception", "explicit, transparent")
    assert result.config is None
