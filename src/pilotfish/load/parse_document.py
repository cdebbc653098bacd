"""One YAML document -> one typed resource: apiVersion/kind dispatch and metadata."""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass

from pilotfish.load import (
    parse_authorization,
    parse_destination_rule,
    parse_gateway,
    parse_mesh_config,
    parse_peer_authentication,
    parse_rate_limit_policy,
    parse_request_authentication,
    parse_service_entry,
    parse_virtual_service,
    parse_workload,
)
from pilotfish.load.dns_names import DNS_LABEL, DNS_SUBDOMAIN, DNS_SUBDOMAIN_MAX
from pilotfish.load.fields import FieldReader, Fields, ObjectPaths
from pilotfish.load.parse_workload import RejectedWorkload
from pilotfish.load.yaml_source import YamlDocument
from pilotfish.model.authorization import AuthorizationPolicy, RequestAuthentication
from pilotfish.model.diagnostics import Diagnostic
from pilotfish.model.rate_limits import RateLimitPolicy
from pilotfish.model.resources import (
    DEFAULT_NAMESPACE,
    DestinationRule,
    Gateway,
    MeshSettings,
    Meta,
    ServiceEntry,
    VirtualService,
    Workload,
    WorkloadEntry,
)
from pilotfish.model.security import PeerAuthentication

Resource = (
    VirtualService
    | DestinationRule
    | Gateway
    | ServiceEntry
    | WorkloadEntry
    | Workload
    | MeshSettings
    | AuthorizationPolicy
    | RequestAuthentication
    | PeerAuthentication
    | RateLimitPolicy
    | RejectedWorkload
)

ISTIO_NETWORKING = "networking.istio.io"
ISTIO_NETWORKING_VERSIONS = ("v1", "v1beta1", "v1alpha3")
PILOTFISH = "pilotfish.io"
PILOTFISH_VERSIONS = ("v1alpha1",)
ISTIO_SECURITY = "security.istio.io"
ISTIO_SECURITY_VERSIONS = ("v1", "v1beta1")
# Whole API groups we mean to support later: every kind in them gets "not supported yet".
GROUPS_NOT_SUPPORTED_YET = ("gateway.networking.k8s.io",)
ISTIO_NETWORKING_NOT_SUPPORTED_YET = ("Sidecar", "EnvoyFilter", "WorkloadGroup", "ProxyConfig")
# Each leaves this list when its parser joins _SECURITY_KINDS.
ISTIO_SECURITY_NOT_SUPPORTED_YET: tuple[str, ...] = ()

TOP_LEVEL_FIELDS = ("apiVersion", "kind", "metadata", "spec")
METADATA_FIELDS = ("name", "namespace", "labels", "annotations")
# Fields the Kubernetes API server fills in; they show up in YAML exported with kubectl.
METADATA_NOT_IMPLEMENTED = (
    "uid",
    "resourceVersion",
    "generation",
    "creationTimestamp",
    "deletionTimestamp",
    "deletionGracePeriodSeconds",
    "managedFields",
    "ownerReferences",
    "finalizers",
    "generateName",
    "selfLink",
)


@dataclass(frozen=True)
class _Kind:
    spec_fields: tuple[str, ...]
    spec_not_implemented: Collection[str] | Mapping[str, str]
    parse: Callable[[FieldReader, Fields, Meta, str], Resource | None]


_ISTIO_KINDS: dict[str, _Kind] = {
    "VirtualService": _Kind(
        parse_virtual_service.SPEC_FIELDS,
        parse_virtual_service.SPEC_NOT_IMPLEMENTED,
        lambda r, s, m, _d: parse_virtual_service.parse_virtual_service(r, s, m),
    ),
    "DestinationRule": _Kind(
        parse_destination_rule.SPEC_FIELDS,
        parse_destination_rule.SPEC_NOT_IMPLEMENTED,
        parse_destination_rule.parse_destination_rule,
    ),
    "Gateway": _Kind(
        parse_gateway.SPEC_FIELDS,
        (),
        parse_gateway.parse_gateway,
    ),
    "ServiceEntry": _Kind(
        parse_service_entry.SERVICE_ENTRY_FIELDS,
        parse_service_entry.SERVICE_ENTRY_NOT_IMPLEMENTED,
        lambda r, s, m, _d: parse_service_entry.parse_service_entry(r, s, m),
    ),
    "WorkloadEntry": _Kind(
        parse_service_entry.WORKLOAD_ENTRY_FIELDS,
        parse_service_entry.WORKLOAD_ENTRY_NOT_IMPLEMENTED,
        lambda r, s, m, _d: parse_service_entry.parse_workload_entry(r, s, m),
    ),
}
# PeerAuthentication, AuthorizationPolicy, RequestAuthentication: one entry each.
_SECURITY_KINDS: dict[str, _Kind] = {
    "PeerAuthentication": _Kind(
        parse_peer_authentication.SPEC_FIELDS,
        (),
        lambda r, s, m, _d: parse_peer_authentication.parse_peer_authentication(r, s, m),
    ),
    "AuthorizationPolicy": _Kind(
        parse_authorization.SPEC_FIELDS,
        (),
        lambda r, s, m, _d: parse_authorization.parse_authorization_policy(r, s, m),
    ),
    "RequestAuthentication": _Kind(
        parse_request_authentication.SPEC_FIELDS,
        (),
        lambda r, s, m, _d: parse_request_authentication.parse_request_authentication(r, s, m),
    ),
}
_PILOTFISH_KINDS: dict[str, _Kind] = {
    "Workload": _Kind(parse_workload.SPEC_FIELDS, (), parse_workload.parse_workload),
    "MeshConfig": _Kind(
        parse_mesh_config.SPEC_FIELDS,
        parse_mesh_config.SPEC_NOT_IMPLEMENTED,
        parse_mesh_config.parse_mesh_config,
    ),
    "RateLimitPolicy": _Kind(
        parse_rate_limit_policy.SPEC_FIELDS,
        (),
        lambda r, s, m, _d: parse_rate_limit_policy.parse_rate_limit_policy(r, s, m),
    ),
}


def parse_document(
    document: YamlDocument, directory: str, paths: ObjectPaths
) -> tuple[Resource | None, list[Diagnostic]]:
    """The resource in ``document`` (best effort even when it has errors) and its diagnostics.

    ``directory`` is the absolute folder of the file, recorded on Workloads so the runner
    can start their commands from there.
    """
    reader = FieldReader(document.source, paths=paths)
    body = reader.mapping(document.body, "", TOP_LEVEL_FIELDS, ("status",))
    if body is None:
        return None, reader.diagnostics
    kind = _resolve_kind(reader, body)
    meta_fields = reader.child_mapping(
        body, "metadata", "", METADATA_FIELDS, METADATA_NOT_IMPLEMENTED, required=True
    )
    if kind is None:
        return None, reader.diagnostics
    kind_name, schema = kind
    meta = _meta(reader, meta_fields, kind_name, document)
    spec = reader.child_mapping(
        body, "spec", "", schema.spec_fields, schema.spec_not_implemented, required=True
    )
    if spec is None:
        return None, reader.diagnostics
    # Without a name the resource cannot be kept, but its spec is still read for its own
    # problems, so that one missing field does not hide the rest of the document.
    parsed = schema.parse(reader, spec, meta or _unnamed(kind_name, document), directory)
    if isinstance(parsed, AuthorizationPolicy) and meta_fields is not None:
        parsed = parse_authorization.read_dry_run(reader, parsed, meta_fields)
    if meta is None and isinstance(parsed, Workload):
        parsed = RejectedWorkload(parsed.meta, parsed.replicas, parsed.upstreams)
    keep = meta is not None or isinstance(parsed, RejectedWorkload)
    return (parsed if keep else None), reader.diagnostics


def _resolve_kind(reader: FieldReader, body: Fields) -> tuple[str, _Kind] | None:
    api_version = reader.string(body, "apiVersion", "", required=True)
    kind = reader.string(body, "kind", "", required=True)
    if api_version is None or kind is None:
        return None
    group, _, version = api_version.rpartition("/")
    if group == ISTIO_NETWORKING:
        return _versioned_kind(
            reader,
            kind,
            version,
            _ISTIO_KINDS,
            ISTIO_NETWORKING_VERSIONS,
            api_version,
            ISTIO_NETWORKING_NOT_SUPPORTED_YET,
        )
    if group == ISTIO_SECURITY:
        return _versioned_kind(
            reader,
            kind,
            version,
            _SECURITY_KINDS,
            ISTIO_SECURITY_VERSIONS,
            api_version,
            ISTIO_SECURITY_NOT_SUPPORTED_YET,
        )
    if group == PILOTFISH:
        return _versioned_kind(
            reader, kind, version, _PILOTFISH_KINDS, PILOTFISH_VERSIONS, api_version
        )
    if group in GROUPS_NOT_SUPPORTED_YET:
        reader.error("kind", f"{api_version} {kind} is not supported yet")
        return None
    reader.error("kind", f"unknown apiVersion/kind {api_version}/{kind}")
    return None


def _versioned_kind(
    reader: FieldReader,
    kind: str,
    version: str,
    kinds: dict[str, _Kind],
    versions: tuple[str, ...],
    api_version: str,
    not_supported_yet: tuple[str, ...] = (),
) -> tuple[str, _Kind] | None:
    if kind in not_supported_yet:
        reader.error("kind", f"{api_version} {kind} is not supported yet")
        return None
    schema = kinds.get(kind)
    if schema is None:
        reader.error("kind", f"unknown apiVersion/kind {api_version}/{kind}")
        return None
    if version not in versions:
        reader.error(
            "apiVersion",
            f"unsupported version {api_version} for {kind} (use {', '.join(versions)})",
        )
        return None
    return kind, schema


def _unnamed(kind: str, document: YamlDocument) -> Meta:
    return Meta(kind=kind, name="", namespace=DEFAULT_NAMESPACE, source=document.source)


def _meta(
    reader: FieldReader, fields: Fields | None, kind: str, document: YamlDocument
) -> Meta | None:
    if fields is None:
        return None
    name = reader.string(fields, "name", "metadata", required=True)
    namespace = reader.string(fields, "namespace", "metadata")
    reader.string_map(fields, "labels", "metadata")
    reader.string_map(fields, "annotations", "metadata")
    if name is not None and (
        len(name) > DNS_SUBDOMAIN_MAX or DNS_SUBDOMAIN.fullmatch(name) is None
    ):
        reader.error("metadata.name", f'"{name}" is not a valid name (lower-case DNS subdomain)')
    if namespace is not None and DNS_LABEL.fullmatch(namespace) is None:
        reader.error("metadata.namespace", f'"{namespace}" is not a valid namespace (DNS label)')
    if name is None:
        return None
    return Meta(
        kind=kind,
        name=name,
        namespace=namespace or DEFAULT_NAMESPACE,
        source=document.source,
    )
