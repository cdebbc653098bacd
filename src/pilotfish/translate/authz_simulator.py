"""Istio's authorization semantics on one request, computed directly from the policies.

This is the specification the RBAC translation is tested against (``decide`` must agree
with Envoy's evaluation of the generated filters), and a way to answer "would this request
pass?" without running a proxy. It reads the policies as Istio documents them, not the
Envoy config: CUSTOM (unsupported), then DENY (any matching rule denies), then ALLOW (when
some ALLOW policy applies, a request that matches none of their rules is denied); AUDIT
never decides.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from pilotfish.model.authorization import (
    AuthorizationPolicy,
    Condition,
    Operation,
    Rule,
    Source,
    Values,
)
from pilotfish.model.identity import SPIFFE_SCHEME


@dataclass(frozen=True)
class Request:
    """What the receiving proxy knows about one request. ``port`` is the workload's port the
    request was addressed to; ``peer`` the URI SAN of the client certificate (None without
    mTLS); ``jwt`` the payload of a verified token (None without one)."""

    method: str = "GET"
    path: str = "/"
    host: str = "service"
    port: int = 8080
    headers: Mapping[str, str] = field(default_factory=dict)
    source_ip: str = "127.0.0.1"
    remote_ip: str = "127.0.0.1"
    destination_ip: str = "127.0.0.1"
    sni: str = ""
    peer: str | None = None
    jwt: Mapping[str, object] | None = None


@dataclass(frozen=True)
class Decision:
    allowed: bool
    rule: str | None = None
    """``ns/name:rules[i]`` of the rule that denied (DENY) or allowed (ALLOW); None when no
    policy decided (allowed) or no ALLOW rule matched (denied)."""


def decide(policies: Sequence[AuthorizationPolicy], request: Request) -> Decision:
    """The policies are those that apply to the receiving workload. Dry-run policies are
    only logged, so they take no part in the decision."""
    policies = [p for p in policies if not p.dry_run]
    denying = _matching(policies, "DENY", request)
    if denying:
        return Decision(False, denying[0])
    allowing = [p for p in policies if p.action == "ALLOW"]
    if not allowing:
        return Decision(True)
    matched = _matching(allowing, "ALLOW", request)
    return Decision(True, matched[0]) if matched else Decision(False)


def _matching(policies: Iterable[AuthorizationPolicy], action: str, request: Request) -> list[str]:
    # Sorted as Envoy reports the first of several matching policies (by name).
    return sorted(
        f"{p.ref}:rules[{index}]"
        for p in policies
        if p.action == action
        for index, rule in enumerate(p.rules)
        if rule_matches(rule, request)
    )


def rule_matches(rule: Rule, request: Request) -> bool:
    return (
        (not rule.sources or any(_source_matches(s, request) for s in rule.sources))
        and (not rule.operations or any(_operation_matches(o, request) for o in rule.operations))
        and all(_condition_matches(c, request) for c in rule.conditions)
    )


def _source_matches(source: Source, request: Request) -> bool:
    identity = _identity(request.peer)
    return (
        _check(source.principals, lambda p: identity is not None and istio_match(p, identity))
        and _check(source.request_principals, lambda p: _request_principal(p, request.jwt))
        and _check(source.namespaces, lambda p: _namespace_matches(p, request.peer))
        and _check(source.ip_blocks, lambda b: _in_block(request.source_ip, b))
        and _check(source.remote_ip_blocks, lambda b: _in_block(request.remote_ip, b))
        and _check(source.service_accounts, lambda a: _service_account_is(a, request.peer))
        and _check(source.trust_domains, lambda d: _trust_domain_matches(d, request.peer))
    )


def _operation_matches(operation: Operation, request: Request) -> bool:
    return (
        _check(operation.hosts, lambda h: istio_match(h, request.host, ignore_case=True))
        and _check(operation.ports, lambda p: int(p) == request.port)
        and _check(operation.methods, lambda m: istio_match(m, request.method))
        and _check(operation.paths, lambda p: istio_match(p, request.path))
    )


def _condition_matches(condition: Condition, request: Request) -> bool:
    kind = condition.kind
    identity = _identity(request.peer)
    if kind == "request.headers":
        value = request.headers.get(condition.name[0])
        return _check(
            condition.match, lambda v: value is not None and (v == "*" or istio_match(v, value))
        )
    if kind in ("source.ip", "remote.ip", "destination.ip"):
        address = {
            "source.ip": request.source_ip,
            "remote.ip": request.remote_ip,
            "destination.ip": request.destination_ip,
        }[kind]
        return _check(condition.match, lambda b: _in_block(address, b))
    if kind == "source.namespace":
        return _check(condition.match, lambda p: _namespace_matches(p, request.peer))
    if kind == "source.principal":
        return _check(condition.match, lambda p: identity is not None and istio_match(p, identity))
    if kind == "source.serviceAccount":
        return _check(condition.match, lambda a: _service_account_is(a, request.peer))
    if kind == "source.trustDomain":
        return _check(condition.match, lambda d: _trust_domain_matches(d, request.peer))
    if kind == "request.auth.principal":
        return _check(condition.match, lambda p: _request_principal(p, request.jwt))
    if kind == "destination.port":
        return _check(condition.match, lambda p: int(p) == request.port)
    if kind == "connection.sni":
        return _check(condition.match, lambda p: istio_match(p, request.sni))
    claim = {"request.auth.audiences": ("aud",), "request.auth.presenter": ("azp",)}.get(
        kind, condition.name
    )
    found = _claim(request.jwt, claim)
    return _check(condition.match, lambda p: _claim_matches(p, found))


def _check(values: Values, matches: Callable[[str], bool]) -> bool:
    if values.values and not any(matches(v) for v in values.values):
        return False
    return not any(matches(v) for v in values.not_values)


def istio_match(pattern: str, value: str, *, ignore_case: bool = False) -> bool:
    """``*`` any non-empty value, ``*abc`` a suffix, ``abc*`` a prefix, else exactly."""
    if ignore_case:
        pattern, value = pattern.lower(), value.lower()
    if pattern == "*":
        return value != ""
    if pattern.startswith("*"):
        return value.endswith(pattern[1:])
    if pattern.endswith("*"):
        return value.startswith(pattern[:-1])
    return value == pattern


def _identity(peer: str | None) -> str | None:
    """A peer's identity as policies write it: its SPIFFE id without ``spiffe://``."""
    if peer is None or not peer.startswith(SPIFFE_SCHEME):
        return None
    return peer[len(SPIFFE_SCHEME) :]


def _parts(peer: str | None) -> tuple[str, str, str] | None:
    """(trust domain, namespace, service account) of a SPIFFE id of Istio's form."""
    identity = _identity(peer)
    parts = identity.split("/") if identity is not None else []
    if len(parts) != 5 or parts[1] != "ns" or parts[3] != "sa":
        return None
    return parts[0], parts[2], parts[4]


def _namespace_matches(pattern: str, peer: str | None) -> bool:
    parts = _parts(peer)
    glob = ".*".join(re.escape(piece) for piece in pattern.split("*"))
    return parts is not None and re.fullmatch(glob, parts[1]) is not None


def _service_account_is(qualified: str, peer: str | None) -> bool:
    parts = _parts(peer)
    return parts is not None and f"{parts[1]}/{parts[2]}" == qualified


def _trust_domain_matches(pattern: str, peer: str | None) -> bool:
    parts = _parts(peer)
    return parts is not None and istio_match(pattern, parts[0])


def _request_principal(pattern: str, jwt: Mapping[str, object] | None) -> bool:
    """Istio reads a request principal pattern as ``<iss>/<sub>`` split at its last ``/``
    and matches each half on its own."""
    if jwt is None:
        return False
    issuer, subject = jwt.get("iss"), jwt.get("sub")
    if not isinstance(issuer, str) or not isinstance(subject, str):
        return False
    if pattern == "*":
        return issuer != "" and subject != ""
    issuer_pattern, found, subject_pattern = pattern.rpartition("/")
    if not found:
        # No "/": a lone wildcard form reads as the whole principal, Istio style.
        if pattern.startswith("*"):
            return issuer != "" and subject.endswith(pattern[1:])
        if pattern.endswith("*"):
            return issuer.startswith(pattern[:-1]) and subject != ""
        return issuer == pattern and subject == ""
    if pattern.startswith("*"):
        issuer_ok = issuer != "" if issuer_pattern == "*" else issuer.endswith(issuer_pattern[1:])
        return issuer_ok and subject == subject_pattern
    if pattern.endswith("*"):
        subject_ok = (
            subject != "" if subject_pattern == "*" else subject.startswith(subject_pattern[:-1])
        )
        return issuer == issuer_pattern and subject_ok
    return issuer == issuer_pattern and subject == subject_pattern


def _claim(jwt: Mapping[str, object] | None, path: Sequence[str]) -> object:
    value: object = jwt
    for key in path:
        if not isinstance(value, Mapping):
            return None
        value = value.get(key)
    return value


def _claim_matches(pattern: str, claim: object) -> bool:
    if isinstance(claim, str):
        return istio_match(pattern, claim)
    if isinstance(claim, list):
        return any(isinstance(item, str) and istio_match(pattern, item) for item in claim)
    return False


def _in_block(address: str, block: str) -> bool:
    try:
        return ipaddress.ip_address(address) in ipaddress.ip_network(block, strict=False)
    except ValueError:
        return False
