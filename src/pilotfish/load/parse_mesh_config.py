"""pilotfish.io/v1alpha1 MeshConfig -> ``model.MeshSettings``: the mesh-wide settings.

At most one per folder. Field names follow Istio's MeshConfig where it has them::

    apiVersion: pilotfish.io/v1alpha1
    kind: MeshConfig
    metadata: {name: mesh}
    spec:
      trustDomain: cluster.local        # identities are spiffe://<trustDomain>/ns/<ns>/sa/<sa>
      certificates:
        workloadTTL: 24h                # at least 1m; the agent rotates at half of it
        rootTTL: 87600h                 # the self-signed root made on first start
        rootRenewGracePeriodPercentage: 20  # rotate the root when less than 20% of it is left
        pluggedCA:                      # sign with your own CA instead (Istio's "cacerts")
          certChain: ca/cert-chain.pem
          privateKey: ca/ca-key.pem
          rootCert: ca/root-cert.pem
      accessLogFile: /dev/stdout        # each proxy also logs there (up shows it per proxy)
      accessLogEncoding: TEXT           # or JSON (Istio's keys)
      accessLogFormat: "..."            # TEXT only; default Istio's format
      defaultConfig:
        tracing:
          sampling: 100                 # percent of requests traced (default 100 here)
          customTags: {team: {literal: {value: shop}}}
          zipkin: {address: 127.0.0.1:9411}   # also forward spans to this Zipkin
      extensionProviders:               # where else the control plane forwards spans
      - name: otel
        opentelemetry: {service: 127.0.0.1, port: 4318, http: {path: /v1/traces}}
      - name: zipkin
        zipkin: {service: 127.0.0.1, port: 9411}
      defaultProviders: {tracing: [otel]}
      localityLbSetting:                # Istio's default for every DestinationRule that
        failover: [{from: us-east, to: us-west}]   # sets none (default: enabled)
      rateLimit:                        # global rate limits (parse_rate_limit_settings)
        redis: {address: 127.0.0.1:6379}  # counters in Redis; default the control plane's memory
        failureMode: allow              # or deny: when the service or its Redis fails
        timeout: 20ms                   # how long a proxy waits for a decision
      interception: explicit            # or transparent: each replica in its own network
                                        # namespace, its TCP redirected by iptables (root)
"""

from __future__ import annotations

import os
import re
from typing import cast, get_args

from pilotfish.load.access_log_operators import access_log_format_problems
from pilotfish.load.fields import NOT_IMPLEMENTED_PREFIX, PORT_MAX, FieldReader, Fields
from pilotfish.load.parse_locality import read_locality_lb_setting
from pilotfish.load.parse_rate_limit_settings import parse_rate_limit_settings
from pilotfish.load.yaml_source import index_path, join_path
from pilotfish.model.resources import (
    DEFAULT_ROOT_RENEW_GRACE_PERCENTAGE,
    DEFAULT_ROOT_TTL_SECONDS,
    DEFAULT_WORKLOAD_TTL_SECONDS,
    MIN_WORKLOAD_TTL_SECONDS,
    CertificateSettings,
    Interception,
    MeshSettings,
    Meta,
    PluggedCertificateAuthority,
)
from pilotfish.model.telemetry import (
    ZIPKIN_SPANS_PATH,
    AccessLogEncoding,
    TelemetrySettings,
    TraceExporter,
    TraceExporterKind,
)

SPEC_FIELDS = (
    "trustDomain",
    "certificates",
    "accessLogFile",
    "accessLogEncoding",
    "accessLogFormat",
    "defaultConfig",
    "extensionProviders",
    "defaultProviders",
    "enableTracing",
    "enableRequestTelemetry",
    "localityLbSetting",
    "rateLimit",
    "interception",
)
INTERCEPTIONS: tuple[Interception, ...] = get_args(Interception)
# Istio's MeshConfig fields that a folder may carry over from Istio, and what they would do.
SPEC_NOT_IMPLEMENTED = {
    "enableEnvoyAccessLogService": "proxies stream their access logs to the control plane "
    "only; no other access-log service is called",
    "disableEnvoyListenerLog": "there are no listener-level access logs to disable",
    "enablePrometheusMerge": "the control plane serves the metrics at /metrics; proxies' "
    "own stats are not merged in",
    "connectTimeout": "clusters keep Pilotfish's connect timeout",
    "outboundTrafficPolicy": "calls to hosts outside the mesh are refused (REGISTRY_ONLY)",
    "enableAutoMtls": "mTLS follows PeerAuthentication and DestinationRules as Pilotfish "
    "reads them; this switch changes nothing",
    "rootNamespace": "the root namespace stays istio-system",
    "h2UpgradePolicy": "HTTP/1.1 connections are not upgraded to HTTP/2",
    "ingressClass": "Kubernetes Ingress resources are not read",
    "ingressService": "Kubernetes Ingress resources are not read",
    "ingressControllerMode": "Kubernetes Ingress resources are not read",
    "discoverySelectors": "every namespace of the folder is read",
    "defaultHttpRetryPolicy": "routes without retries keep Pilotfish's default retries",
    "protocolDetectionTimeout": "protocols are declared (port names, appProtocol), never sniffed",
}
ACCESS_LOG_ENCODINGS: tuple[AccessLogEncoding, ...] = ("TEXT", "JSON")
DEFAULT_CONFIG_FIELDS = ("tracing",)
DEFAULT_CONFIG_NOT_IMPLEMENTED = {
    "concurrency": "Envoy runs with the agent's --concurrency",
    "drainDuration": "proxies drain as the agent's --drain-seconds says",
    "terminationDrainDuration": "proxies drain as the agent's --drain-seconds says",
    "proxyMetadata": "no environment is passed to the agents",
    "holdApplicationUntilProxyStarts": "pilotfish up always starts the sidecar with the app",
    "proxyStatsMatcher": "no extra Envoy stats are kept",
    "extraStatTags": "no extra metric labels",
}
TRACING_FIELDS = ("sampling", "zipkin", "customTags")
TRACING_NOT_IMPLEMENTED = {
    "maxPathTagLength": "span path tags keep Envoy's length limit (256)",
    "tlsSettings": "spans go to the control plane in plain HTTP on this machine",
    "enableIstioTags": "spans carry Envoy's own tags only",
    "lightstep": "no spans are sent to Lightstep",
    "datadog": "no spans are sent to Datadog",
    "stackdriver": "no spans are sent to Stackdriver",
    "openCensusAgent": "no spans are sent to an OpenCensus agent",
}
CUSTOM_TAG_FIELDS = ("literal",)
CUSTOM_TAG_NOT_IMPLEMENTED = {
    "environment": "this tag is not added to spans",
    "header": "this tag is not added to spans",
}
PROVIDER_FIELDS = ("name", "zipkin", "opentelemetry")
PROVIDER_NOT_IMPLEMENTED = {
    kind: "this provider is never called"
    for kind in (
        "envoyExtAuthzHttp",
        "envoyExtAuthzGrpc",
        "lightstep",
        "datadog",
        "stackdriver",
        "opencensus",
        "skywalking",
        "prometheus",
        "envoyFileAccessLog",
        "envoyHttpAls",
        "envoyTcpAls",
        "envoyOtelAls",
        "sds",
    )
}
ZIPKIN_FIELDS = ("service", "port", "path")
ZIPKIN_NOT_IMPLEMENTED = {
    "maxTagLength": "tags are forwarded as the proxies made them",
    "enable64bitTraceId": "trace ids stay 128-bit",
    "traceContextOption": "proxies always propagate both B3 and W3C trace context",
    "timeout": "each forward of spans times out after Pilotfish's own limit",
    "headers": "spans are forwarded without extra headers",
}
OPENTELEMETRY_FIELDS = ("service", "port", "http")
OPENTELEMETRY_NOT_IMPLEMENTED = {
    "maxTagLength": "tags are forwarded as the proxies made them",
    "grpc": "spans are not forwarded over OTLP/gRPC; set http: {path: /v1/traces} to "
    "forward them over OTLP/HTTP",
    "resourceDetectors": "spans carry the proxies' service names only",
    "dynatraceSampler": "sampling follows defaultConfig.tracing.sampling",
}
OTLP_HTTP_FIELDS = ("path",)
OTLP_HTTP_NOT_IMPLEMENTED = {
    "timeout": "each forward of spans times out after Pilotfish's own limit",
    "headers": "spans are forwarded without extra headers",
}
DEFAULT_PROVIDER_FIELDS = ("tracing",)
DEFAULT_PROVIDER_NOT_IMPLEMENTED = {
    "metrics": "metrics are served at the admin port's /metrics only",
    "accessLogging": "access logs go to the control plane and accessLogFile only",
}
# A host:port of Zipkin's address; the host may be a name (resolved by the control plane).
HOST_PORT = re.compile(r"(?P<host>[A-Za-z0-9.-]+|\[[0-9A-Fa-f:]+\]):(?P<port>[0-9]{1,5})")
CERTIFICATE_FIELDS = ("workloadTTL", "rootTTL", "rootRenewGracePeriodPercentage", "pluggedCA")
PLUGGED_CA_FIELDS = ("certChain", "privateKey", "rootCert")
# A trust domain is the host part of a SPIFFE id: lower-case letters, digits, ".", "-", "_".
TRUST_DOMAIN = re.compile(r"[a-z0-9._-]{1,255}")
# A root must outlive the workload certificates it signs by a wide margin.
MIN_ROOT_TTL_SECONDS = 24 * 3600.0


def parse_mesh_config(
    reader: FieldReader, spec: Fields, meta: Meta, directory: str
) -> MeshSettings:
    trust_domain = reader.string(spec, "trustDomain", "spec")
    if trust_domain is not None and TRUST_DOMAIN.fullmatch(trust_domain) is None:
        reader.error(
            "spec.trustDomain",
            f'"{trust_domain}" is not a trust domain (lower-case letters, digits, ".", "-", "_")',
        )
        trust_domain = None
    certificates = reader.child_mapping(spec, "certificates", "spec", CERTIFICATE_FIELDS)
    return MeshSettings(
        meta=meta,
        trust_domain=trust_domain or MeshSettings().trust_domain,
        certificates=_certificates(reader, certificates, directory)
        if certificates is not None
        else CertificateSettings(),
        telemetry=_telemetry(reader, spec),
        # Istio checks the mesh's setting as if outlier detection were set: no warning.
        locality_lb_setting=read_locality_lb_setting(reader, spec, "spec"),
        rate_limit=parse_rate_limit_settings(reader, spec),
        interception=_interception(reader, spec),
    )


def _interception(reader: FieldReader, spec: Fields) -> Interception:
    chosen = reader.choice(spec, "interception", "spec", INTERCEPTIONS)
    return cast(Interception, chosen or "explicit")


def _telemetry(reader: FieldReader, spec: Fields) -> TelemetrySettings:
    defaults = TelemetrySettings()
    log_file = reader.string(spec, "accessLogFile", "spec")
    encoding = reader.choice(spec, "accessLogEncoding", "spec", ACCESS_LOG_ENCODINGS)
    log_format = reader.string(spec, "accessLogFormat", "spec")
    if log_format is not None and encoding == "JSON":
        reader.warning(
            "spec.accessLogFormat",
            "not implemented by Pilotfish with accessLogEncoding JSON: the JSON log keeps "
            "Istio's default keys and this format is not used",
        )
        log_format = None
    problems = access_log_format_problems(log_format) if log_format else []
    if problems:
        # Envoy would refuse every listener with this format: every proxy would NACK.
        reader.error(
            "spec.accessLogFormat", "Envoy would refuse this format: " + "; ".join(problems)
        )
    sampling, tags, exporters = defaults.tracing_sampling, dict(defaults.tags), []
    default_config = reader.child_mapping(
        spec, "defaultConfig", "spec", DEFAULT_CONFIG_FIELDS, DEFAULT_CONFIG_NOT_IMPLEMENTED
    )
    if default_config is not None:
        path = "spec.defaultConfig"
        tracing = reader.child_mapping(
            default_config, "tracing", path, TRACING_FIELDS, TRACING_NOT_IMPLEMENTED
        )
        if tracing is not None:
            path = join_path(path, "tracing")
            number = reader.number(tracing, "sampling", path, minimum=0, maximum=100)
            sampling = number if number is not None else sampling
            tags.update(_custom_tags(reader, tracing, path))
            zipkin = _zipkin_address(reader, tracing, path)
            if zipkin is not None:
                exporters.append(zipkin)
    exporters.extend(_default_tracing_providers(reader, spec))
    enable_tracing = reader.boolean(spec, "enableTracing", "spec")
    request_telemetry = reader.boolean(spec, "enableRequestTelemetry", "spec")
    return TelemetrySettings(
        access_log_file=log_file or None,
        access_log_encoding="JSON" if encoding == "JSON" else "TEXT",
        access_log_format=log_format or None,
        tracing_sampling=sampling,
        trace_exporters=tuple(exporters),
        tags=tags,
        enable_tracing=defaults.enable_tracing if enable_tracing is None else enable_tracing,
        request_telemetry=(
            defaults.request_telemetry if request_telemetry is None else request_telemetry
        ),
    )


def _custom_tags(reader: FieldReader, tracing: Fields, path: str) -> dict[str, str]:
    """Istio's ``customTags``: each tag's ``literal`` value goes on every span."""
    value = tracing.get("customTags")
    if value is None:
        return {}
    tags_path = join_path(path, "customTags")
    if not isinstance(value, dict):
        reader.error(tags_path, "expected a mapping of tag names")
        return {}
    found: dict[str, str] = {}
    for name, tag in value.items():
        tag_path = join_path(tags_path, str(name))
        fields = reader.mapping(tag, tag_path, CUSTOM_TAG_FIELDS, CUSTOM_TAG_NOT_IMPLEMENTED)
        literal = reader.child_mapping(fields, "literal", tag_path, ("value",)) if fields else None
        if literal is None:
            continue
        text = reader.string(literal, "value", join_path(tag_path, "literal"), required=True)
        if text is not None:
            found[str(name)] = text
    return found


def _zipkin_address(reader: FieldReader, tracing: Fields, path: str) -> TraceExporter | None:
    zipkin = reader.child_mapping(tracing, "zipkin", path, ("address",))
    if zipkin is None:
        return None
    zipkin_path = join_path(path, "zipkin")
    address = reader.string(zipkin, "address", zipkin_path, required=True)
    if address is None:
        return None
    match = HOST_PORT.fullmatch(address)
    if match is None or not 1 <= int(match["port"]) <= PORT_MAX:
        reader.error(join_path(zipkin_path, "address"), f'"{address}" is not HOST:PORT')
        return None
    return TraceExporter("zipkin", "zipkin", f"http://{address}{ZIPKIN_SPANS_PATH}")


def _default_tracing_providers(reader: FieldReader, spec: Fields) -> list[TraceExporter]:
    """The ``extensionProviders`` that ``defaultProviders.tracing`` names, in its order."""
    providers: dict[str, TraceExporter | None] = {}
    for item, item_path in reader.items(spec, "extensionProviders", "spec"):
        fields = reader.mapping(item, item_path, PROVIDER_FIELDS, PROVIDER_NOT_IMPLEMENTED)
        if fields is None:
            continue
        name = reader.string(fields, "name", item_path, required=True)
        if name is None:
            continue
        if name in providers:
            reader.error(join_path(item_path, "name"), f'provider "{name}" is defined twice')
            continue
        other_kind = isinstance(item, dict) and any(k in item for k in PROVIDER_NOT_IMPLEMENTED)
        providers[name] = None if other_kind else _provider(reader, fields, item_path, name)
    defaults = reader.child_mapping(
        spec, "defaultProviders", "spec", DEFAULT_PROVIDER_FIELDS, DEFAULT_PROVIDER_NOT_IMPLEMENTED
    )
    if defaults is None:
        return []
    chosen: list[TraceExporter] = []
    path = "spec.defaultProviders"
    for index, name in enumerate(reader.string_list(defaults, "tracing", path)):
        name_path = index_path(join_path(path, "tracing"), index)
        if name and name not in providers:
            known = ", ".join(sorted(providers)) or "none"
            reader.error(name_path, f'no extensionProvider is named "{name}" (defined: {known})')
            continue
        exporter = providers.get(name)
        if exporter is not None and exporter not in chosen:
            chosen.append(exporter)
    return chosen


def _provider(reader: FieldReader, fields: Fields, path: str, name: str) -> TraceExporter | None:
    """The exporter a tracing provider describes; None for a provider of another kind (it
    warned) or with errors."""
    kinds = [kind for kind in ("zipkin", "opentelemetry") if kind in fields]
    if len(kinds) > 1:
        reader.error(
            join_path(path, kinds[1]), f"a provider has one kind, and this one is {kinds[0]}"
        )
        return None
    if not kinds:
        reader.error(path, "needs a provider: zipkin or opentelemetry")
        return None
    kind: TraceExporterKind = "zipkin" if kinds[0] == "zipkin" else "opentelemetry"
    if kind == "zipkin":
        body = reader.child_mapping(fields, "zipkin", path, ZIPKIN_FIELDS, ZIPKIN_NOT_IMPLEMENTED)
        default_path = ZIPKIN_SPANS_PATH
    else:
        body = reader.child_mapping(
            fields, "opentelemetry", path, OPENTELEMETRY_FIELDS, OPENTELEMETRY_NOT_IMPLEMENTED
        )
        default_path = None
    if body is None:
        return None
    body_path = join_path(path, kinds[0])
    service = reader.string(body, "service", body_path, required=True)
    port = reader.port(body, "port", body_path, required=True)
    if kind == "zipkin":
        url_path = reader.string(body, "path", body_path) or default_path
    else:
        http = reader.child_mapping(
            body, "http", body_path, OTLP_HTTP_FIELDS, OTLP_HTTP_NOT_IMPLEMENTED
        )
        if http is None:
            if "http" not in body and "grpc" not in body:
                reader.warning(
                    body_path,
                    f"{NOT_IMPLEMENTED_PREFIX}: OTLP over gRPC (Istio's default without "
                    f'"http"); spans are not forwarded to "{name}": set http: {{path: '
                    "/v1/traces}} for OTLP/HTTP",
                )
            return None
        url_path = reader.string(http, "path", join_path(body_path, "http")) or "/v1/traces"
    if service is None or port is None or url_path is None:
        return None
    if not url_path.startswith("/"):
        url_path = "/" + url_path
    host = service.split("/", 1)[-1]  # Istio's "namespace/host" form names the host after it
    return TraceExporter(name, kind, f"http://{host}:{port}{url_path}")


def _certificates(reader: FieldReader, fields: Fields, directory: str) -> CertificateSettings:
    path = "spec.certificates"
    workload_ttl = reader.duration(fields, "workloadTTL", path)
    if workload_ttl is not None and workload_ttl < MIN_WORKLOAD_TTL_SECONDS:
        reader.error(join_path(path, "workloadTTL"), "must be at least 1m")
        workload_ttl = None
    root_ttl = reader.duration(fields, "rootTTL", path)
    if root_ttl is not None and root_ttl < MIN_ROOT_TTL_SECONDS:
        reader.error(join_path(path, "rootTTL"), "must be at least 24h")
        root_ttl = None
    if workload_ttl is not None and root_ttl is not None and workload_ttl >= root_ttl:
        reader.error(
            join_path(path, "workloadTTL"), "must be shorter than rootTTL (the root signs it)"
        )
    grace = reader.number(fields, "rootRenewGracePeriodPercentage", path, minimum=1, maximum=90)
    plugged_fields = reader.child_mapping(fields, "pluggedCA", path, PLUGGED_CA_FIELDS)
    plugged = None
    if plugged_fields is not None:
        plugged = _plugged(reader, plugged_fields, join_path(path, "pluggedCA"), directory)
    return CertificateSettings(
        workload_ttl=workload_ttl or DEFAULT_WORKLOAD_TTL_SECONDS,
        root_ttl=root_ttl or DEFAULT_ROOT_TTL_SECONDS,
        root_renew_grace_percentage=grace or DEFAULT_ROOT_RENEW_GRACE_PERCENTAGE,
        plugged=plugged,
    )


def _plugged(
    reader: FieldReader, fields: Fields, path: str, directory: str
) -> PluggedCertificateAuthority | None:
    files: dict[str, str] = {}
    for key in PLUGGED_CA_FIELDS:
        name = reader.string(fields, key, path, required=True)
        if name is None:
            continue
        # Relative to the file's folder, as Workload commands are: the folder can move.
        files[key] = os.path.join(directory, name)
    if len(files) != len(PLUGGED_CA_FIELDS):
        return None
    return PluggedCertificateAuthority(
        cert_chain=files["certChain"], private_key=files["privateKey"], root_cert=files["rootCert"]
    )
