"""The MeshConfig's telemetry fields (Istio's names): access logs, tracing, trace exporters."""

from __future__ import annotations

import pytest
from load_cases import assert_at, find, load

from pilotfish.model.telemetry import TelemetrySettings, TraceExporter

MESH = """\
apiVersion: pilotfish.io/v1alpha1
kind: MeshConfig
metadata:
  name: mesh
spec:
"""


def telemetry_of(spec: str) -> TelemetrySettings:
    _text, result = load(MESH + spec)
    assert [d for d in result.diagnostics if d.severity == "error"] == []
    assert result.config is not None
    return result.config.mesh.telemetry


def test_without_telemetry_fields_a_local_mesh_traces_everything_and_logs_to_no_file() -> None:
    telemetry = telemetry_of("  trustDomain: a.org\n")
    assert telemetry == TelemetrySettings()
    assert telemetry.tracing_sampling == 100.0
    assert telemetry.access_log_file is None


def test_access_log_fields() -> None:
    telemetry = telemetry_of(
        "  accessLogFile: /dev/stdout\n"
        "  accessLogEncoding: TEXT\n"
        '  accessLogFormat: "%RESPONSE_CODE% %RESPONSE_FLAGS%"\n'
    )
    assert telemetry.access_log_file == "/dev/stdout"
    assert telemetry.access_log_encoding == "TEXT"
    assert telemetry.access_log_format == "%RESPONSE_CODE% %RESPONSE_FLAGS%"
    assert telemetry_of("  accessLogEncoding: JSON\n").access_log_encoding == "JSON"


# Istio's documented default format (its proxyconfig's accessLogFormat), and the kind of
# formats Istio's docs show users writing.
ISTIO_FORMATS = [
    '[%START_TIME%] \\"%REQ(:METHOD)% %REQ(X-ENVOY-ORIGINAL-PATH?:PATH)% %PROTOCOL%\\" '
    "%RESPONSE_CODE% %RESPONSE_FLAGS% %RESPONSE_CODE_DETAILS% "
    '%CONNECTION_TERMINATION_DETAILS% \\"%UPSTREAM_TRANSPORT_FAILURE_REASON%\\" '
    "%BYTES_RECEIVED% %BYTES_SENT% %DURATION% %RESP(X-ENVOY-UPSTREAM-SERVICE-TIME)% "
    '\\"%REQ(X-FORWARDED-FOR)%\\" \\"%REQ(USER-AGENT)%\\" \\"%REQ(X-REQUEST-ID)%\\" '
    '\\"%REQ(:AUTHORITY)%\\" \\"%UPSTREAM_HOST%\\" %UPSTREAM_CLUSTER_RAW% '
    "%UPSTREAM_LOCAL_ADDRESS% %DOWNSTREAM_LOCAL_ADDRESS% %DOWNSTREAM_REMOTE_ADDRESS% "
    "%REQUESTED_SERVER_NAME% %ROUTE_NAME%\\n",
    "%START_TIME(%s.%3f)% %REQ(:PATH):64% 100%% %DYNAMIC_METADATA(istio.mixer:status)%",
]


@pytest.mark.parametrize("log_format", ISTIO_FORMATS)
def test_istio_access_log_formats_are_taken(log_format: str) -> None:
    telemetry = telemetry_of(f'  accessLogFormat: "{log_format}"\n')
    assert telemetry.access_log_format is not None
    assert "%RE" in telemetry.access_log_format


@pytest.mark.parametrize(
    ("log_format", "message"),
    [
        ("%FOO%", "FOO is not one of Envoy's access-log command operators"),
        ("%RESPONSE_CODDE%", "did you mean RESPONSE_CODE?"),
        ("%START_TIME", "the '%' at character 1 starts no %OPERATOR%"),
        ("done 100% %DURATION%", "the '%' at character 9 starts no %OPERATOR%"),
        ("%REQ%", "REQ needs an argument"),
        ("%DURATION(ms)%", "DURATION takes no (argument)"),
        ("%BYTES_SENT:4%", "BYTES_SENT takes no (argument) and no :length"),
        ("%req(:path)%", "starts no %OPERATOR% (an operator is upper case"),
    ],
)
def test_an_access_log_format_envoy_would_refuse_is_an_error_at_its_line(
    log_format: str, message: str
) -> None:
    text, result = load(
        MESH + "  accessLogEncoding: TEXT\n" + f"  accessLogFormat: '{log_format}'\n"
    )
    diagnostic = assert_at(result, text, "spec.accessLogFormat", "accessLogFormat", message)
    assert diagnostic.message.startswith("Envoy would refuse this format")


def test_tracing_and_request_records_have_switches_on_by_default() -> None:
    assert TelemetrySettings().enable_tracing and TelemetrySettings().request_telemetry
    telemetry = telemetry_of("  enableTracing: false\n  enableRequestTelemetry: false\n")
    assert not telemetry.enable_tracing
    assert not telemetry.request_telemetry
    assert telemetry_of("  enableTracing: true\n").enable_tracing


def test_a_switch_that_is_not_a_boolean_is_an_error_at_its_line() -> None:
    text, result = load(MESH + "  enableRequestTelemetry: sometimes\n")
    assert_at(result, text, "spec.enableRequestTelemetry", "enableRequestTelemetry", "")


def test_a_format_with_json_encoding_warns_that_it_is_not_used() -> None:
    text, result = load(
        MESH + "  accessLogEncoding: JSON\n" + '  accessLogFormat: "%RESPONSE_CODE%"\n'
    )
    diagnostic = assert_at(
        result, text, "spec.accessLogFormat", "accessLogFormat", "this format is not used",
        severity="warning",
    )  # fmt: skip
    assert "Istio's default keys" in diagnostic.message
    assert result.config is not None
    assert result.config.mesh.telemetry.access_log_format is None


def test_tracing_sampling_tags_and_zipkin_address() -> None:
    telemetry = telemetry_of(
        "  defaultConfig:\n"
        "    tracing:\n"
        "      sampling: 12.5\n"
        "      customTags: {team: {literal: {value: shop}}}\n"
        "      zipkin: {address: zipkin.local:9411}\n"
    )
    assert telemetry.tracing_sampling == 12.5
    assert dict(telemetry.tags) == {"team": "shop"}
    assert telemetry.trace_exporters == (
        TraceExporter("zipkin", "zipkin", "http://zipkin.local:9411/api/v2/spans"),
    )


def test_default_providers_choose_the_extension_providers_that_export_spans() -> None:
    telemetry = telemetry_of(
        "  extensionProviders:\n"
        "  - name: otel\n"
        "    opentelemetry: {service: otel.example, port: 4318, http: {path: /v1/traces}}\n"
        "  - name: zipkin\n"
        "    zipkin: {service: observability/zipkin.example, port: 9411}\n"
        "  - name: unused\n"
        "    zipkin: {service: other.example, port: 9411}\n"
        "  defaultProviders: {tracing: [otel, zipkin]}\n"
    )
    assert telemetry.trace_exporters == (
        TraceExporter("otel", "opentelemetry", "http://otel.example:4318/v1/traces"),
        TraceExporter("zipkin", "zipkin", "http://zipkin.example:9411/api/v2/spans"),
    )


def test_providers_without_default_providers_export_nothing() -> None:
    telemetry = telemetry_of(
        "  extensionProviders:\n  - name: zipkin\n    zipkin: {service: z.example, port: 9411}\n"
    )
    assert telemetry.trace_exporters == ()


@pytest.mark.parametrize(
    ("spec", "field", "needle", "message"),
    [
        ("  accessLogEncoding: XML\n", "spec.accessLogEncoding", "accessLogEncoding", "TEXT, JSON"),
        ("  accessLogFile: 7\n", "spec.accessLogFile", "accessLogFile", "expected a string"),
        (
            "  defaultConfig: {tracing: {sampling: 101}}\n",
            "spec.defaultConfig.tracing.sampling",
            "sampling",
            "must be 0..100",
        ),
        (
            "  defaultConfig: {tracing: {zipkin: {address: zipkin}}}\n",
            "spec.defaultConfig.tracing.zipkin.address",
            "address",
            "not HOST:PORT",
        ),
        (
            "  defaultConfig: {tracing: {samplng: 1}}\n",
            "spec.defaultConfig.tracing.samplng",
            "samplng",
            'did you mean "sampling"',
        ),
        (
            "  extensionProviders: [{name: z, zipkin: {service: z.example}}]\n",
            "spec.extensionProviders[0].zipkin.port",
            "zipkin",
            "required",
        ),
        (
            "  extensionProviders: [{name: z}]\n",
            "spec.extensionProviders[0]",
            "{name: z}",
            "zipkin or opentelemetry",
        ),
        (
            "  extensionProviders: [{name: z, zipkin: {service: a, port: 1}},"
            " {name: z, zipkin: {service: b, port: 2}}]\n",
            "spec.extensionProviders[1].name",
            "name: z, zipkin: {service: b",
            "defined twice",
        ),
        (
            "  extensionProviders: [{name: z, zipkin: {service: a, port: 1}}]\n"
            "  defaultProviders: {tracing: [jaeger]}\n",
            "spec.defaultProviders.tracing[0]",
            "jaeger",
            'no extensionProvider is named "jaeger" (defined: z)',
        ),
    ],
)
def test_telemetry_problems(spec: str, field: str, needle: str, message: str) -> None:
    text, result = load(MESH + spec)
    assert_at(result, text, field, needle, message)


@pytest.mark.parametrize(
    ("spec", "field", "needle", "message"),
    [
        (
            "  defaultConfig: {concurrency: 2}\n",
            "spec.defaultConfig.concurrency",
            "concurrency",
            "--concurrency",
        ),
        (
            "  defaultConfig: {tracing: {datadog: {address: a:1}}}\n",
            "spec.defaultConfig.tracing.datadog",
            "datadog",
            "no spans are sent to Datadog",
        ),
        (
            "  defaultConfig: {tracing: {customTags: {pod: {environment: {name: POD}}}}}\n",
            "spec.defaultConfig.tracing.customTags.pod.environment",
            "environment",
            "not added to spans",
        ),
        (
            "  extensionProviders: [{name: p, prometheus: {}}]\n",
            "spec.extensionProviders[0].prometheus",
            "prometheus",
            "never called",
        ),
        (
            "  extensionProviders: [{name: o, opentelemetry: {service: o, port: 4317}}]\n",
            "spec.extensionProviders[0].opentelemetry",
            "opentelemetry",
            'spans are not forwarded to "o"',
        ),
        (
            "  defaultProviders: {metrics: [prometheus]}\n",
            "spec.defaultProviders.metrics",
            "metrics",
            "/metrics only",
        ),
    ],
)
def test_istio_fields_not_carried_warn_what_will_not_happen(
    spec: str, field: str, needle: str, message: str
) -> None:
    text, result = load(MESH + spec)
    assert_at(result, text, field, needle, message, severity="warning")
    assert result.config is not None
    assert result.config.mesh.telemetry.trace_exporters == ()


def test_a_grpc_opentelemetry_provider_is_not_an_exporter() -> None:
    _text, result = load(
        MESH
        + "  extensionProviders: [{name: o, opentelemetry: {service: o, port: 4317, grpc: {}}}]\n"
        + "  defaultProviders: {tracing: [o]}\n"
    )
    warning = find(result, "spec.extensionProviders[0].opentelemetry.grpc")
    assert "OTLP/gRPC" in warning.message and warning.severity == "warning"
    assert result.config is not None
    assert result.config.mesh.telemetry.trace_exporters == ()
