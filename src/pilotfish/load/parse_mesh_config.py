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
"""

from __future__ import annotations

import os
import re

from pilotfish.load.fields import FieldReader, Fields
from pilotfish.load.yaml_source import join_path
from pilotfish.model.resources import (
    DEFAULT_ROOT_RENEW_GRACE_PERCENTAGE,
    DEFAULT_ROOT_TTL_SECONDS,
    DEFAULT_WORKLOAD_TTL_SECONDS,
    MIN_WORKLOAD_TTL_SECONDS,
    CertificateSettings,
    MeshSettings,
    Meta,
    PluggedCertificateAuthority,
)

# Later issues add their mesh-wide settings here (access logs, tracing, interception...).
SPEC_FIELDS = ("trustDomain", "certificates")
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
    )


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
