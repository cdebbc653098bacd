"""Tiny hand-made snapshots: resources are opaque, only names, versions and references count."""

from __future__ import annotations

from collections.abc import Mapping

from google.protobuf import any_pb2

from pilotfish.snapshot import Resource, Snapshot, snapshot_from_resources, type_urls

CDS = type_urls.CLUSTER
EDS = type_urls.ENDPOINT
LDS = type_urls.LISTENER
RDS = type_urls.ROUTE


def resource(type_url: str, name: str, version: str) -> Resource:
    references = ((EDS, name),) if type_url == CDS else ()
    return Resource(
        name, version, any_pb2.Any(type_url=type_url, value=version.encode()), references
    )


def snapshot(spec: Mapping[str, Mapping[str, str]]) -> Snapshot:
    """``{type_url: {name: version}}`` -> Snapshot."""
    return snapshot_from_resources(
        {
            type_url: {name: resource(type_url, name, version) for name, version in named.items()}
            for type_url, named in spec.items()
        }
    )
