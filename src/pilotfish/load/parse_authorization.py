"""security.istio.io AuthorizationPolicy -> ``model.AuthorizationPolicy``, checked as Istio does.

Istio's own rules (its ``ValidateAuthorizationPolicy``) carry over: a ``from``, ``to`` or
``when`` that is present must not be empty, nor may a source or an operation; DENY needs
rules; ``provider`` is for CUSTOM only. What Istio accepts and Pilotfish does not enforce
(CUSTOM, ``targetRef``, service accounts, trust domains, path templates) is an error naming
the field: an authorization rule that silently matched less would let requests through.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable, Mapping
from dataclasses import replace
from typing import TypeVar, cast

from pilotfish.load.fields import FieldReader, Fields, describe
from pilotfish.load.yaml_source import join_path
from pilotfish.model.authorization import (
    ACTIONS,
    Action,
    AuthorizationPolicy,
    Condition,
    ConditionKind,
    Operation,
    Rule,
    Source,
    Values,
)
from pilotfish.model.resources import Meta

SPEC_FIELDS = ("selector", "targetRef", "targetRefs", "action", "provider", "rules")
RULE_FIELDS = ("from", "to", "when")
SOURCE_FIELDS = (
    "principals",
    "notPrincipals",
    "requestPrincipals",
    "notRequestPrincipals",
    "namespaces",
    "notNamespaces",
    "ipBlocks",
    "notIpBlocks",
    "remoteIpBlocks",
    "notRemoteIpBlocks",
    "serviceAccounts",
    "notServiceAccounts",
    "trustDomains",
    "notTrustDomains",
)
# Istio's own limits on service accounts.
MAX_SERVICE_ACCOUNTS = 16
MAX_SERVICE_ACCOUNT_LENGTH = 320
OPERATION_FIELDS = (
    "hosts",
    "notHosts",
    "ports",
    "notPorts",
    "methods",
    "notMethods",
    "paths",
    "notPaths",
)
CONDITION_FIELDS = ("key", "values", "notValues")
SELECTOR_FIELDS = ("matchLabels",)
NOT_SUPPORTED = "is not supported by Pilotfish yet"

# when keys with a value to compare directly; the bracketed ones are read apart.
_PLAIN_KEYS: Mapping[str, ConditionKind] = {
    "source.ip": "source.ip",
    "remote.ip": "remote.ip",
    "source.namespace": "source.namespace",
    "source.principal": "source.principal",
    "source.serviceAccount": "source.serviceAccount",
    "source.trustDomain": "source.trustDomain",
    "request.auth.principal": "request.auth.principal",
    "request.auth.audiences": "request.auth.audiences",
    "request.auth.presenter": "request.auth.presenter",
    "destination.ip": "destination.ip",
    "destination.port": "destination.port",
    "connection.sni": "connection.sni",
}
# Keys Istio itself refuses.
_KEYS_REFUSED = {
    "destination.namespace": "is replaced by the policy's metadata.namespace",
    "destination.name": "is deprecated (only supported in v1alpha1)",
    "destination.user": "is deprecated (only supported in v1alpha1)",
}
_BRACKETS = re.compile(r"\[([^\[\]]+)\]")
_T = TypeVar("_T")
DRY_RUN_ANNOTATION = "istio.io/dry-run"
# What Go's strconv.ParseBool accepts, as Istio reads the annotation with it.
_GO_BOOLEANS = {
    **dict.fromkeys(("1", "t", "T", "TRUE", "true", "True"), True),
    **dict.fromkeys(("0", "f", "F", "FALSE", "false", "False"), False),
}
_Part = TypeVar("_Part", Source, Operation)


def parse_authorization_policy(
    reader: FieldReader, spec: Fields, meta: Meta
) -> AuthorizationPolicy | None:
    errors_before = reader.error_count
    selector = read_selector(reader, spec)
    action = reader.choice(spec, "action", "spec", ACTIONS, not_supported=("CUSTOM",))
    if "provider" in spec:
        reader.error(
            "spec.provider",
            "is only for the CUSTOM action, which is not supported by Pilotfish yet"
            if spec.get("action") == "CUSTOM"
            else f"must not be set with action {spec.get('action') or 'ALLOW'} (CUSTOM only)",
        )
    rules = tuple(
        rule
        for item, path in reader.items(spec, "rules", "spec")
        if (rule := _rule(reader, item, path, meta.namespace)) is not None
    )
    if action == "DENY" and not spec.get("rules"):
        reader.error(
            "spec.rules",
            "a DENY policy without rules never matches; add a rule {} to deny every request",
        )
    if reader.error_count > errors_before:
        return None
    return AuthorizationPolicy(
        meta=meta, action=cast(Action, action or "ALLOW"), rules=rules, selector=selector
    )


def read_dry_run(
    reader: FieldReader, policy: AuthorizationPolicy, metadata: Fields
) -> AuthorizationPolicy:
    """Istio's ``istio.io/dry-run`` annotation: the policy is evaluated and its result
    recorded (Envoy's shadow rules), never enforced. ALLOW and DENY only."""
    annotations = metadata.get("annotations")
    if not isinstance(annotations, dict) or DRY_RUN_ANNOTATION not in annotations:
        return policy
    path = f"metadata.annotations.{DRY_RUN_ANNOTATION}"
    value = annotations[DRY_RUN_ANNOTATION]
    if policy.action not in ("ALLOW", "DENY"):
        reader.error(path, f"is for ALLOW and DENY policies only, not {policy.action}")
        return policy
    dry_run = _GO_BOOLEANS.get(value) if isinstance(value, str) else None
    if dry_run is None:
        reader.error(path, f"{describe(value)} is not true or false")
        return policy
    return replace(policy, dry_run=dry_run)


def read_selector(reader: FieldReader, spec: Fields) -> Mapping[str, str] | None:
    """``spec.selector.matchLabels`` (None: no selector); ``targetRef(s)`` are refused."""
    for key in ("targetRef", "targetRefs"):
        if key in spec:
            reader.error(
                join_path("spec", key),
                f"{NOT_SUPPORTED}: use spec.selector to choose the workloads",
            )
    fields = reader.child_mapping(spec, "selector", "spec", SELECTOR_FIELDS)
    if fields is None:
        return None
    labels = reader.string_map(fields, "matchLabels", "spec.selector")
    for key, value in labels.items():
        if "*" in key or "*" in value:
            reader.error(
                join_path("spec.selector.matchLabels", key),
                f"wildcards are not allowed in a selector: {key}={value}",
            )
    if not labels:
        reader.warning(
            "spec.selector", "a selector without labels selects every workload in its scope"
        )
    return labels


def _rule(reader: FieldReader, value: object, path: str, namespace: str) -> Rule | None:
    if value is None:
        reader.error(path, "a rule must not be null (use {} to match every request)")
        return None
    fields = reader.mapping(value, path, RULE_FIELDS)
    if fields is None:
        return None
    for key in RULE_FIELDS:
        if fields.get(key) == []:
            reader.error(join_path(path, key), "must not be empty (leave it out to match all)")
    sources = tuple(
        source
        for item, item_path in reader.items(fields, "from", path)
        if (
            source := _wrapped(
                reader, item, item_path, "source", lambda r, v, p: _source(r, v, p, namespace)
            )
        )
        is not None
    )
    operations = tuple(
        operation
        for item, item_path in reader.items(fields, "to", path)
        if (operation := _wrapped(reader, item, item_path, "operation", _operation)) is not None
    )
    conditions = tuple(
        condition
        for item, item_path in reader.items(fields, "when", path)
        if (condition := _condition(reader, item, item_path, namespace)) is not None
    )
    return Rule(sources=sources, operations=operations, conditions=conditions)


def _wrapped(
    reader: FieldReader,
    value: object,
    path: str,
    key: str,
    read: Callable[[FieldReader, object, str], _T | None],
) -> _T | None:
    """``from[i].source`` / ``to[i].operation``: a one-field mapping around the real one."""
    fields = reader.mapping(value, path, (key,))
    if fields is None:
        return None
    if fields.get(key) is None:
        reader.error(join_path(path, key), "required field is missing")
        return None
    return read(reader, fields[key], join_path(path, key))


def _source(reader: FieldReader, value: object, path: str, namespace: str) -> Source | None:
    fields = reader.mapping(value, path, SOURCE_FIELDS)
    if fields is None:
        return None
    source = Source(
        principals=_values(reader, fields, path, "principals"),
        request_principals=_values(reader, fields, path, "requestPrincipals"),
        namespaces=_values(reader, fields, path, "namespaces"),
        ip_blocks=_values(reader, fields, path, "ipBlocks", _check_ip),
        remote_ip_blocks=_values(reader, fields, path, "remoteIpBlocks", _check_ip),
        service_accounts=_service_accounts(reader, fields, path, namespace),
        trust_domains=_values(reader, fields, path, "trustDomains", _check_trust_domain),
    )
    if source.service_accounts and (source.principals or source.namespaces):
        reader.error(
            join_path(path, "serviceAccounts"),
            "cannot be set with namespaces or principals (one way to name the caller)",
        )
    return _not_empty(reader, source, path)


def _operation(reader: FieldReader, value: object, path: str) -> Operation | None:
    fields = reader.mapping(value, path, OPERATION_FIELDS)
    if fields is None:
        return None
    operation = Operation(
        hosts=_values(reader, fields, path, "hosts"),
        ports=_values(reader, fields, path, "ports", _check_port),
        methods=_values(reader, fields, path, "methods"),
        paths=_values(reader, fields, path, "paths", _check_path),
    )
    return _not_empty(reader, operation, path)


def _not_empty(reader: FieldReader, parsed: _Part, path: str) -> _Part | None:
    """Istio refuses a source or operation with nothing in it (``{}``, or only empty lists):
    read as "anything", it would match every request."""
    if any(vars(parsed).values()):
        return parsed
    reader.error(path, "must not be empty: set at least one field")
    return None


def _service_accounts(reader: FieldReader, fields: Fields, path: str, namespace: str) -> Values:
    """``<namespace>/<account>`` or ``<account>`` (in the policy's namespace), qualified."""
    found = _values(reader, fields, path, "serviceAccounts", _check_service_account)
    for key in ("serviceAccounts", "notServiceAccounts"):
        items = fields.get(key)
        if isinstance(items, list) and len(items) > MAX_SERVICE_ACCOUNTS:
            reader.error(join_path(path, key), f"at most {MAX_SERVICE_ACCOUNTS} values")
    return Values(
        qualify_service_accounts(found.values, namespace),
        qualify_service_accounts(found.not_values, namespace),
    )


def qualify_service_accounts(values: tuple[str, ...], namespace: str) -> tuple[str, ...]:
    return tuple(v if "/" in v else f"{namespace}/{v}" for v in values)


def _condition(reader: FieldReader, value: object, path: str, namespace: str) -> Condition | None:
    fields = reader.mapping(value, path, CONDITION_FIELDS)
    if fields is None:
        return None
    key = reader.string(fields, "key", path, required=True)
    match = _values(reader, fields, path, "values", key_name="notValues")
    if key is None:
        return None
    key_path = join_path(path, "key")
    if not match:
        reader.error(path, f"set values or notValues for key {key}")
        return None
    parsed = _condition_key(reader, key, key_path)
    if parsed is None:
        return None
    kind, name = parsed
    check = _VALUE_CHECKS.get(kind)
    if check is not None:
        for list_key, items in (("values", match.values), ("notValues", match.not_values)):
            for index, item in enumerate(items):
                problem = check(item)
                if problem is not None:
                    reader.error(f"{join_path(path, list_key)}[{index}]", problem)
    if kind == "source.serviceAccount":
        match = Values(
            qualify_service_accounts(match.values, namespace),
            qualify_service_accounts(match.not_values, namespace),
        )
    return Condition(key=key, kind=kind, match=match, name=name)


def _condition_key(
    reader: FieldReader, key: str, path: str
) -> tuple[ConditionKind, tuple[str, ...]] | None:
    if key in _PLAIN_KEYS:
        return _PLAIN_KEYS[key], ()
    for prefix, kind in (
        ("request.headers", "request.headers"),
        ("request.auth.claims", "request.auth.claims"),
    ):
        if key.startswith(prefix + "["):
            rest = key[len(prefix) :]
            names = _BRACKETS.findall(rest)
            nested = kind == "request.auth.claims"
            if (
                not names
                or "".join(f"[{n}]" for n in names) != rest
                or (len(names) > 1 and not nested)
            ):
                reader.error(path, f"bad key {key!r}: should have the form {prefix}[name]")
                return None
            if kind == "request.headers":
                return "request.headers", (names[0].lower(),)
            return "request.auth.claims", tuple(names)
    if key.startswith("experimental.envoy.filters."):
        reader.error(path, f"the attribute {key} {NOT_SUPPORTED}")
    elif key in _KEYS_REFUSED:
        reader.error(path, f"the attribute {key} {_KEYS_REFUSED[key]}")
    elif key.startswith("destination.labels"):
        reader.error(path, f"the attribute {key} is replaced by the workload selector")
    else:
        reader.error(
            path,
            f"unknown attribute {key!r} (Pilotfish knows request.headers[...], source.ip, "
            "remote.ip, source.namespace, source.principal, source.serviceAccount, "
            "source.trustDomain, request.auth.principal, "
            "request.auth.audiences, request.auth.presenter, request.auth.claims[...], "
            "destination.ip, destination.port, connection.sni)",
        )
    return None


def _values(
    reader: FieldReader,
    fields: Fields,
    path: str,
    key: str,
    check: Callable[[str], str | None] | None = None,
    *,
    key_name: str | None = None,
) -> Values:
    """``key`` and its ``not`` form (``ipBlocks`` / ``notIpBlocks``)."""
    negated = key_name or "not" + key[0].upper() + key[1:]
    found: list[tuple[str, ...]] = []
    for name in (key, negated):
        items: list[str] = []
        for item, item_path in reader.items(fields, name, path):
            # Istio's ports are strings; a YAML integer means the same port.
            text = str(item) if isinstance(item, int) and not isinstance(item, bool) else item
            if not isinstance(text, str) or not text:
                reader.error(item_path, f"expected a non-empty string, got {describe(item)}")
                continue
            problem = check(text) if check is not None else None
            if problem is not None:
                reader.error(item_path, problem)
                continue
            items.append(text)
        found.append(tuple(items))
    return Values(values=found[0], not_values=found[1])


def _check_ip(value: str) -> str | None:
    try:
        if "/" in value:
            ipaddress.ip_network(value, strict=False)
        else:
            ipaddress.ip_address(value)
    except ValueError:
        return f"{value!r} is not an IP address or CIDR range"
    return None


def _check_service_account(value: str) -> str | None:
    namespace, slash, account = value.rpartition("/")
    if "*" in value:
        return f"{value!r}: wildcards are not allowed in a service account"
    if len(value) > MAX_SERVICE_ACCOUNT_LENGTH:
        return f"{value!r} is longer than {MAX_SERVICE_ACCOUNT_LENGTH} characters"
    if value.count("/") > 1 or (slash and (not namespace or not account)):
        return f"{value!r} is not <account> or <namespace>/<account>"
    return None


def _check_trust_domain(value: str) -> str | None:
    if "/" in value:
        return f"{value!r}: a trust domain has no '/'"
    return _check_wildcard(value)


def _check_wildcard(value: str) -> str | None:
    count = value.count("*")
    if count > 1:
        return f"{value!r}: at most one wildcard"
    if count == 1 and not (value.startswith("*") or value.endswith("*")):
        return f"{value!r}: a wildcard only at the start or the end"
    return None


def _check_port(value: str) -> str | None:
    if not value.isdigit() or int(value) > 65535:
        return f"{value!r} is not a port (0..65535)"
    return None


_VALUE_CHECKS: Mapping[str, Callable[[str], str | None]] = {
    "source.ip": _check_ip,
    "remote.ip": _check_ip,
    "destination.ip": _check_ip,
    "destination.port": _check_port,
    "source.serviceAccount": _check_service_account,
    "source.trustDomain": _check_trust_domain,
}


def _check_path(value: str) -> str | None:
    if "{*}" in value or "{**}" in value:
        return f"path templates ({value!r}) {NOT_SUPPORTED}: use a prefix (/a/*) or suffix (*.js)"
    return None
