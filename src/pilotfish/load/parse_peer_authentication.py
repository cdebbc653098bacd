"""security.istio.io PeerAuthentication -> ``model.security.PeerAuthentication``.

Which connections a workload's sidecar accepts::

    apiVersion: security.istio.io/v1
    kind: PeerAuthentication
    metadata: {name: default, namespace: istio-system}   # the root namespace: mesh-wide
    spec:
      mtls: {mode: STRICT}                  # STRICT, PERMISSIVE (the default), DISABLE, UNSET
      # selector: {matchLabels: {app: reviews}}         # one workload's policy instead
      # portLevelMtls: {8080: {mode: DISABLE}}          # the workload's port; needs a selector
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import cast

from pilotfish.load.fields import PORT_MAX, PORT_MIN, FieldReader, Fields, describe
from pilotfish.load.yaml_source import join_path
from pilotfish.model.diagnostics import Diagnostic
from pilotfish.model.resources import MeshConfig, Meta, Workload, selector_matches
from pilotfish.model.security import ROOT_NAMESPACE, MtlsMode, PeerAuthentication

SPEC_FIELDS = ("selector", "mtls", "portLevelMtls")
SELECTOR_FIELDS = ("matchLabels",)
MTLS_FIELDS = ("mode",)
MODES = ("UNSET", "DISABLE", "PERMISSIVE", "STRICT")


def parse_peer_authentication(reader: FieldReader, spec: Fields, meta: Meta) -> PeerAuthentication:
    selector_fields = reader.child_mapping(spec, "selector", "spec", SELECTOR_FIELDS)
    selector = (
        reader.string_map(selector_fields, "matchLabels", "spec.selector")
        if selector_fields is not None
        else {}
    )
    mode = _mode(reader, spec, "mtls", "spec")
    port_mtls = _port_level_mtls(reader, spec)
    if port_mtls is not None and not selector:
        # Istio refuses it: a mesh or namespace policy has no workload whose ports it could name.
        reader.error(
            "spec.portLevelMtls",
            "needs a selector with matchLabels (a mesh or namespace policy cannot set port-level "
            "mTLS)",
        )
    if selector and meta.namespace == ROOT_NAMESPACE:
        reader.warning(
            "spec.selector",
            f"a policy with a selector in the root namespace {ROOT_NAMESPACE} applies to no "
            "workload (Istio ignores it too): put it in the workload's namespace",
        )
    return PeerAuthentication(meta=meta, mode=mode, selector=selector, port_mtls=port_mtls or {})


def _mode(reader: FieldReader, fields: Fields, key: str, path: str) -> MtlsMode:
    mtls = reader.child_mapping(fields, key, path, MTLS_FIELDS)
    if mtls is None:
        return "UNSET"
    chosen = reader.choice(mtls, "mode", join_path(path, key), MODES)
    return cast(MtlsMode, chosen) if chosen is not None else "UNSET"


def _port_level_mtls(reader: FieldReader, spec: Fields) -> dict[int, MtlsMode] | None:
    """None when the field is absent (an empty one is an error, as in Istio)."""
    value = spec.get("portLevelMtls")
    if value is None:
        return None
    path = "spec.portLevelMtls"
    if not isinstance(value, dict):
        reader.error(path, f"expected a mapping of port numbers, got {describe(value)}")
        return {}
    if not value:
        reader.error(path, "must have at least one port when set")
    found: dict[int, MtlsMode] = {}
    for key, item in value.items():
        # YAML reads `8080:` as a number and `"8080":` as a string; Istio takes both.
        number = int(key) if isinstance(key, str) and key.isdigit() else key
        if isinstance(number, bool) or not isinstance(number, int):
            reader.error(join_path(path, str(key)), f"expected a port number, got {describe(key)}")
            continue
        if not PORT_MIN <= number <= PORT_MAX:
            reader.error(join_path(path, str(key)), f"port must be in range {PORT_MIN}..{PORT_MAX}")
            continue
        found[number] = _mode(reader, {str(key): item}, str(key), path)
    return found


def peer_authentication_problems(config: MeshConfig) -> Iterator[Diagnostic]:
    """Checks that need the whole folder."""
    yield from _scope_conflicts(config.peer_authentications)
    yield from _ports_no_workload_declares(config.peer_authentications, config.workloads)


def _ports_no_workload_declares(
    policies: Iterable[PeerAuthentication], workloads: Iterable[Workload]
) -> Iterator[Diagnostic]:
    """A portLevelMtls port is the Workload's own ``port``; a service or sidecar port written
    there instead silently applies to nothing."""
    workloads = tuple(workloads)
    for policy in policies:
        if not policy.port_mtls:
            continue
        ports = sorted(
            {
                w.port
                for w in workloads
                if w.meta.namespace == policy.meta.namespace
                and selector_matches(policy.selector, w.labels)
            }
        )
        if not ports:
            continue  # it selects no Workload of this folder: nothing to compare with
        for port in policy.port_mtls:
            if port not in ports:
                yield policy.meta.source.diagnostic(
                    f"spec.portLevelMtls.{port}",
                    f"no Workload this policy selects declares port {port} (they declare "
                    f"{', '.join(map(str, ports))}): this setting applies to nothing",
                    "warning",
                )


def _scope_conflicts(policies: Iterable[PeerAuthentication]) -> Iterator[Diagnostic]:
    """A second mesh-wide or namespace-wide policy loses to the first (Istio: to the oldest),
    which istioctl analyze warns about; so do we, naming the one that counts."""
    first: dict[str, PeerAuthentication] = {}
    for policy in policies:
        if policy.selector:
            continue
        namespace = policy.meta.namespace
        earlier = first.setdefault(namespace, policy)
        if earlier is policy:
            continue
        scope = "mesh-wide" if policy.is_mesh_policy else f"namespace-wide ({namespace})"
        line, col = earlier.meta.source.locate("metadata.name")
        yield policy.meta.source.diagnostic(
            "metadata.name",
            f"a second {scope} PeerAuthentication is ignored: {earlier.meta.name!r} at "
            f"{earlier.meta.source.file}:{line}:{col} applies (the first in file order; Istio "
            "keeps the oldest)",
            "warning",
        )
