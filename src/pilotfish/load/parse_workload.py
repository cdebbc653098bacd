"""pilotfish.io/v1alpha1 Workload -> ``model.Workload``: a process ``pilotfish up`` starts.

Example::

    apiVersion: pilotfish.io/v1alpha1
    kind: Workload
    metadata: {name: reviews-v2}
    spec:
      service: reviews          # the service name callers use (a DNS label)
      port: 9080                # where the process listens (given to it as PORT)
      protocol: HTTP            # HTTP | HTTP2 | GRPC
      labels: {version: v2}     # matched by DestinationRule subsets
      replicas: 2               # default 1
      command: [python3, reviews.py]   # run from the folder holding this file
      env: {STARS: "red"}
      serviceAccount: reviews   # identity spiffe://<trustDomain>/ns/<namespace>/sa/reviews
                                # (default "default", as in Istio)
      locality: us-east/zone-a  # region/zone/subzone of every replica (locality failover)
"""

from __future__ import annotations

import re

from pilotfish.load.dns_names import DNS_LABEL, DNS_SUBDOMAIN
from pilotfish.load.fields import FieldReader, Fields, describe
from pilotfish.load.parse_locality import read_locality
from pilotfish.load.parse_protocols import read_protocol
from pilotfish.load.yaml_source import join_path
from pilotfish.model.identity import DEFAULT_SERVICE_ACCOUNT
from pilotfish.model.resources import Meta, Workload

SPEC_FIELDS = (
    "service",
    "port",
    "protocol",
    "labels",
    "replicas",
    "command",
    "env",
    "serviceAccount",
    "locality",
)

ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
# The runner sets these for every replica; a value in the YAML would be overwritten.
RUNNER_ENV = ("PORT", "HTTP_PROXY", "http_proxy", "HTTPS_PROXY", "https_proxy")
# Every replica is a process plus an Envoy (~70 MB) on this one machine; past a hundred the
# machine runs out long before the mesh is useful, so a larger number is surely a typo.
MAX_REPLICAS = 100


def parse_workload(
    reader: FieldReader, spec: Fields, meta: Meta, directory: str
) -> Workload | None:
    service = reader.string(spec, "service", "spec", required=True)
    if service is not None and DNS_LABEL.fullmatch(service) is None:
        reader.error(
            "spec.service",
            f'"{service}" is not a DNS label (lower-case letters, digits, "-", at most 63)',
        )
    port = reader.port(spec, "port", "spec", required=True)
    protocol = read_protocol(reader, spec, "protocol", "spec") or "HTTP"
    labels = reader.string_map(spec, "labels", "spec")
    replicas = reader.integer(spec, "replicas", "spec", minimum=1, maximum=MAX_REPLICAS)
    command = _command(reader, spec)
    env = reader.string_map(spec, "env", "spec")
    locality = read_locality(reader, spec, "locality", "spec")
    service_account = reader.string(spec, "serviceAccount", "spec")
    if service_account is not None and DNS_SUBDOMAIN.fullmatch(service_account) is None:
        reader.error(
            "spec.serviceAccount",
            f'"{service_account}" is not a service account name (lower-case DNS subdomain)',
        )
        service_account = None
    for name in env:
        env_path = join_path("spec.env", name)
        if ENV_NAME.fullmatch(name) is None:
            reader.error(env_path, "not a valid environment variable name")
        elif name in RUNNER_ENV:
            reader.warning(env_path, "set by pilotfish up for every replica; this value is ignored")
    if service is None or port is None or not command:
        return None
    return Workload(
        meta=meta,
        service=service,
        port=port,
        command=command,
        protocol=protocol,
        labels=labels,
        replicas=1 if replicas is None else replicas,
        env=env,
        directory=directory,
        service_account=service_account or DEFAULT_SERVICE_ACCOUNT,
        locality=locality,
    )


def _command(reader: FieldReader, spec: Fields) -> tuple[str, ...]:
    """An argv list; arguments may be empty strings, the program may not."""
    argv: list[str] = []
    for item, path in reader.items(spec, "command", "spec", required=True):
        if not isinstance(item, str):
            reader.error(path, f"expected a string, got {describe(item)} (quote it)")
            continue
        argv.append(item)
    if argv and not argv[0]:
        reader.error("spec.command[0]", "the program name must not be empty")
        return ()
    return tuple(argv)
