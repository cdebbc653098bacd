"""TLS settings shared by DestinationRule (``trafficPolicy.tls``, the client's side) and Gateway
servers (``servers[].tls``, the server's side), with Istio's rules on which fields go together.

Certificate files are relative to the folder of the file that names them; whether they exist
is checked by the loader (``certificate_files``), which is the one module that reads files.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import cast

from pilotfish.load.fields import FieldReader, Fields
from pilotfish.load.yaml_source import join_path
from pilotfish.model.security import (
    ClientTlsMode,
    ClientTLSSettings,
    ServerTlsMode,
    ServerTLSSettings,
    TlsVersion,
)

CLIENT_FIELDS = (
    "mode",
    "clientCertificate",
    "privateKey",
    "caCertificates",
    "credentialName",
    "subjectAltNames",
    "sni",
    "insecureSkipVerify",
)
CLIENT_NOT_IMPLEMENTED = {"caCrl": "revoked server certificates are not refused"}
CLIENT_MODES = ("DISABLE", "SIMPLE", "MUTUAL", "ISTIO_MUTUAL")
CLIENT_FILES = {
    "caCertificates": "ca_certificates",
    "clientCertificate": "client_certificate",
    "privateKey": "private_key",
}

SERVER_FIELDS = (
    "mode",
    "serverCertificate",
    "privateKey",
    "caCertificates",
    "credentialName",
    "caCertCredentialName",
    "httpsRedirect",
    "minProtocolVersion",
    "maxProtocolVersion",
)
SERVER_NOT_IMPLEMENTED = {
    "insecureSkipVerify": "client certificates are verified all the same",
    "subjectAltNames": "client certificates are not checked for these names",
    "verifyCertificateSpki": "client certificates are not pinned",
    "verifyCertificateHash": "client certificates are not pinned",
    "cipherSuites": "Envoy's default cipher suites are offered",
    "caCrl": "revoked client certificates are not refused",
    "credentialNames": "only serverCertificate/privateKey files are served",
    "tlsCertificates": "only serverCertificate/privateKey files are served",
}
SERVER_MODES = ("SIMPLE", "MUTUAL")
SERVER_MODES_NOT_SUPPORTED = ("PASSTHROUGH", "AUTO_PASSTHROUGH", "ISTIO_MUTUAL", "OPTIONAL_MUTUAL")
SERVER_FILES = {
    "serverCertificate": "server_certificate",
    "privateKey": "private_key",
    "caCertificates": "ca_certificates",
}
TLS_VERSIONS = ("TLS_AUTO", "TLSV1_0", "TLSV1_1", "TLSV1_2", "TLSV1_3")
CREDENTIAL_NAME_MESSAGE = (
    "not supported yet: use {files} files (Pilotfish has no secret store to read it from)"
)


def _file(reader: FieldReader, fields: Fields, key: str, path: str, directory: str) -> str | None:
    name = reader.string(fields, key, path)
    return os.path.join(directory, name) if name else None


def read_client_tls(
    reader: FieldReader, fields: Fields, path: str, directory: str
) -> ClientTLSSettings | None:
    """``fields["tls"]`` of a traffic policy at ``path``."""
    tls = reader.child_mapping(fields, "tls", path, CLIENT_FIELDS, CLIENT_NOT_IMPLEMENTED)
    if tls is None:
        return None
    tls_path = join_path(path, "tls")
    mode = reader.choice(tls, "mode", tls_path, CLIENT_MODES) or "DISABLE"
    files = {key: _file(reader, tls, key, tls_path, directory) for key in CLIENT_FILES}
    if tls.get("credentialName") is not None:
        # Istio reads it at gateways only; its sidecars keep to the file fields, as ours do.
        reader.warning(
            join_path(tls_path, "credentialName"),
            "used by Istio at gateways only, and Pilotfish has no secret store: this "
            "sidecar's TLS uses the file fields"
            + (" (none are set, so it sends no client certificate)" if mode == "MUTUAL" else ""),
        )
    elif mode == "MUTUAL":
        for key in ("clientCertificate", "privateKey"):
            if files[key] is None:
                reader.error(join_path(tls_path, key), "required when mode is MUTUAL")
    if mode == "ISTIO_MUTUAL":
        # The mesh's own certificates are used: files here would be silently ignored.
        for key in CLIENT_FILES:
            if files[key] is not None:
                reader.error(
                    join_path(tls_path, key),
                    "must not be set with ISTIO_MUTUAL (the mesh's certificates are used)",
                )
        files = dict.fromkeys(CLIENT_FILES)
    names = tuple(n for n in reader.string_list(tls, "subjectAltNames", tls_path) if n)
    insecure = reader.boolean(tls, "insecureSkipVerify", tls_path) or False
    if insecure and (files["caCertificates"] is not None or names):
        # As Istio: nothing would be verified against them.
        reader.error(
            join_path(tls_path, "insecureSkipVerify"),
            "cannot be true together with caCertificates or subjectAltNames",
        )
    settings = ClientTLSSettings(
        mode=cast(ClientTlsMode, mode),
        ca_certificates=files["caCertificates"],
        client_certificate=files["clientCertificate"],
        private_key=files["privateKey"],
        sni=reader.string(tls, "sni", tls_path),
        subject_alt_names=names,
        insecure_skip_verify=insecure,
    )
    return reader.paths.remember(settings, tls_path)


def read_server_tls(
    reader: FieldReader, tls: Fields, tls_path: str, directory: str
) -> ServerTLSSettings | None:
    """An HTTPS server's ``tls`` (already a mapping); None after an error, or when the
    server is valid for Istio but cannot be served here (a warning says why)."""
    written = tls.get("mode")
    not_served = _not_served_because(tls, written)
    mode = (
        None if not_served else reader.choice(tls, "mode", tls_path, SERVER_MODES, not_supported=())
    )
    if not_served:
        field, why = not_served
        # Istio accepts this server: the rest of the Gateway (and of the folder) still applies.
        reader.warning(
            join_path(tls_path, field), f"{why}; this server is not served (the others are)"
        )
    versions = {
        key: version if version in TLS_VERSIONS[1:] else None
        for key in ("minProtocolVersion", "maxProtocolVersion")
        if (version := reader.choice(tls, key, tls_path, TLS_VERSIONS)) is not None
    }
    low, high = versions.get("minProtocolVersion"), versions.get("maxProtocolVersion")
    if low is not None and high is not None and TLS_VERSIONS.index(low) > TLS_VERSIONS.index(high):
        reader.error(join_path(tls_path, "minProtocolVersion"), "is above maxProtocolVersion")
    files = {key: _file(reader, tls, key, tls_path, directory) for key in SERVER_FILES}
    server_certificate, private_key = files["serverCertificate"], files["privateKey"]
    if mode is None or not_served:
        return None  # already reported; what the files would be for is unknown
    for key in ("serverCertificate", "privateKey"):
        if files[key] is None:
            reader.error(join_path(tls_path, key), f"required for a {mode} server")
    if mode == "MUTUAL" and files["caCertificates"] is None:
        reader.error(
            join_path(tls_path, "caCertificates"),
            "required when mode is MUTUAL (the CA that signs the clients' certificates)",
        )
    if server_certificate is None or private_key is None:
        return None
    settings = ServerTLSSettings(
        mode=cast(ServerTlsMode, mode),
        server_certificate=server_certificate,
        private_key=private_key,
        ca_certificates=files["caCertificates"],
        min_protocol_version=cast(TlsVersion | None, low),
        max_protocol_version=cast(TlsVersion | None, high),
    )
    return reader.paths.remember(settings, tls_path)


def _not_served_because(tls: Fields, mode: object) -> tuple[str, str] | None:
    """``(field, reason)`` when Istio would serve this TLS server and Pilotfish cannot yet."""
    for key, files in (
        ("credentialName", "serverCertificate/privateKey"),
        ("caCertCredentialName", "caCertificates"),
    ):
        if tls.get(key):
            return key, CREDENTIAL_NAME_MESSAGE.format(files=files)
    if mode is None:
        return "mode", "not set: Istio's default, PASSTHROUGH, is not supported yet"
    if mode in SERVER_MODES_NOT_SUPPORTED:
        return "mode", f"{mode} is not supported yet (SIMPLE and MUTUAL are)"
    return None


def certificate_files(
    settings: ClientTLSSettings | ServerTLSSettings,
) -> Iterator[tuple[str, str]]:
    """``(field, absolute file)`` for each certificate file the settings name."""
    names = CLIENT_FILES if isinstance(settings, ClientTLSSettings) else SERVER_FILES
    for key, attribute in names.items():
        value = getattr(settings, attribute)
        if value is not None:
            yield key, value
