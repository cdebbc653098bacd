"""Istio's AuthorizationPolicy and RequestAuthentication as typed, validated values.

Strings in policies keep Istio's own forms (``abc*`` prefix, ``*abc`` suffix, ``*`` any);
translation and the simulator each read them, so neither depends on the other.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Literal

from pilotfish.model.resources import Meta, selector_matches
from pilotfish.model.security import ROOT_NAMESPACE

# Istio's default root namespace: a policy there without a selector applies to the whole mesh.

Action = Literal["ALLOW", "DENY", "AUDIT"]
ACTIONS: tuple[Action, ...] = ("ALLOW", "DENY", "AUDIT")


@dataclass(frozen=True)
class Values:
    """One matched attribute: some value must match ``values`` (when given) and none may
    match ``not_values``. Both empty: the attribute is not looked at."""

    values: tuple[str, ...] = ()
    not_values: tuple[str, ...] = ()

    def __bool__(self) -> bool:
        return bool(self.values or self.not_values)


@dataclass(frozen=True)
class Source:
    principals: Values = field(default_factory=Values)
    request_principals: Values = field(default_factory=Values)
    namespaces: Values = field(default_factory=Values)
    ip_blocks: Values = field(default_factory=Values)
    remote_ip_blocks: Values = field(default_factory=Values)
    service_accounts: Values = field(default_factory=Values)
    """Always ``<namespace>/<account>``: a bare account is read in the policy's namespace."""
    trust_domains: Values = field(default_factory=Values)


@dataclass(frozen=True)
class Operation:
    hosts: Values = field(default_factory=Values)
    ports: Values = field(default_factory=Values)
    methods: Values = field(default_factory=Values)
    paths: Values = field(default_factory=Values)


# The ``when`` keys Pilotfish enforces (Istio's names). Claims carry their path:
# ``request.auth.claims[groups]`` -> ("groups",), ``[a][b]`` -> ("a", "b").
ConditionKind = Literal[
    "request.headers",
    "source.ip",
    "remote.ip",
    "source.namespace",
    "source.principal",
    "source.serviceAccount",
    "source.trustDomain",
    "request.auth.principal",
    "request.auth.audiences",
    "request.auth.presenter",
    "request.auth.claims",
    "destination.ip",
    "destination.port",
    "connection.sni",
]


@dataclass(frozen=True)
class Condition:
    key: str
    """As written, for messages (``request.headers[x-user]``)."""
    kind: ConditionKind
    match: Values
    name: tuple[str, ...] = ()
    """The bracketed part: a header name (lower-cased) or a claim path."""


@dataclass(frozen=True)
class Rule:
    """Matches when some ``sources`` entry, some ``operations`` entry and every condition
    match; an absent part matches everything (so ``{}`` matches every request)."""

    sources: tuple[Source, ...] = ()
    operations: tuple[Operation, ...] = ()
    conditions: tuple[Condition, ...] = ()


@dataclass(frozen=True)
class AuthorizationPolicy:
    meta: Meta
    action: Action = "ALLOW"
    rules: tuple[Rule, ...] = ()
    selector: Mapping[str, str] | None = None
    dry_run: bool = False
    """Istio's ``istio.io/dry-run``: evaluated and logged, never enforced."""

    @property
    def ref(self) -> str:
        return f"{self.meta.namespace}/{self.meta.name}"

    def applies_to(self, namespace: str, labels: Mapping[str, str]) -> bool:
        return applies_to(self.meta, self.selector, namespace, labels)


# --- RequestAuthentication ------------------------------------------------------------------


@dataclass(frozen=True)
class JwtHeader:
    name: str
    prefix: str = ""


@dataclass(frozen=True)
class ClaimToHeader:
    header: str
    claim: str


@dataclass(frozen=True)
class JwksUri:
    """Where keys are fetched from. ``scheme`` ``file`` reads a local file (a Pilotfish
    extension: ``jwksUri: file:///path/jwks.json``), the others go through a cluster."""

    uri: str
    scheme: Literal["http", "https", "file"]
    host: str = ""
    port: int = 0
    path: str = ""


@dataclass(frozen=True)
class JwtRule:
    issuer: str
    audiences: tuple[str, ...] = ()
    jwks: str | None = None
    jwks_uri: JwksUri | None = None
    from_headers: tuple[JwtHeader, ...] = ()
    from_params: tuple[str, ...] = ()
    from_cookies: tuple[str, ...] = ()
    forward_original_token: bool = False
    output_payload_to_header: str | None = None
    output_claim_to_headers: tuple[ClaimToHeader, ...] = ()
    timeout: float | None = None


@dataclass(frozen=True)
class RequestAuthentication:
    meta: Meta
    jwt_rules: tuple[JwtRule, ...] = ()
    selector: Mapping[str, str] | None = None

    @property
    def ref(self) -> str:
        return f"{self.meta.namespace}/{self.meta.name}"

    def applies_to(self, namespace: str, labels: Mapping[str, str]) -> bool:
        return applies_to(self.meta, self.selector, namespace, labels)


def applies_to(
    meta: Meta, selector: Mapping[str, str] | None, namespace: str, labels: Mapping[str, str]
) -> bool:
    """Istio's scope: the root namespace is the whole mesh, any other namespace its own
    workloads; a selector narrows either to the workloads whose labels it matches."""
    if meta.namespace != ROOT_NAMESPACE and meta.namespace != namespace:
        return False
    return selector is None or selector_matches(selector, labels)


def policies_for(
    policies: Iterable[AuthorizationPolicy], namespace: str, labels: Mapping[str, str]
) -> tuple[AuthorizationPolicy, ...]:
    """The policies that apply to one workload, in a stable order (namespace, name)."""
    chosen = (p for p in policies if p.applies_to(namespace, labels))
    return tuple(sorted(chosen, key=lambda p: (p.meta.namespace, p.meta.name)))


HTTP_CONDITION_KINDS: frozenset[ConditionKind] = frozenset(
    {
        "request.headers",
        "request.auth.principal",
        "request.auth.audiences",
        "request.auth.presenter",
        "request.auth.claims",
    }
)


def http_only_fields(rule: Rule) -> tuple[str, ...]:
    """What of ``rule`` only an HTTP request shows (Istio's names): a TCP connection cannot
    be judged on them."""
    found: list[str] = []
    if any(s.request_principals for s in rule.sources):
        found.append("requestPrincipals")
    for name in ("hosts", "methods", "paths"):
        if any(getattr(o, name) for o in rule.operations):
            found.append(name)
    found.extend(sorted({c.key for c in rule.conditions if c.kind in HTTP_CONDITION_KINDS}))
    return tuple(found)
