"""Versioned per-proxy snapshots of xDS resources, the cache that builds them from generators,
and the consistency check before publishing.

Pure: no gRPC, no asyncio. The xDS server reaches snapshots only through these types.
"""

from __future__ import annotations

from pilotfish.snapshot import type_urls
from pilotfish.snapshot.cache import CacheStats, GeneratorStats, SnapshotCache
from pilotfish.snapshot.consistency import check_consistency
from pilotfish.snapshot.generators import (
    Generator,
    Input,
    MeshGenerator,
    NodeGenerator,
    ServiceGenerator,
)
from pilotfish.snapshot.snapshot import (
    ChangeMemo,
    Layer,
    PackingCache,
    Resource,
    Selection,
    Snapshot,
    changed_names,
    digest_version,
    layered_snapshot,
    make_layer,
    make_snapshot,
    pack_messages,
    snapshot_from_resources,
    version_of_resources,
)

__all__ = [
    "CacheStats",
    "ChangeMemo",
    "Generator",
    "GeneratorStats",
    "Input",
    "Layer",
    "MeshGenerator",
    "NodeGenerator",
    "PackingCache",
    "Resource",
    "Selection",
    "ServiceGenerator",
    "Snapshot",
    "SnapshotCache",
    "changed_names",
    "check_consistency",
    "digest_version",
    "layered_snapshot",
    "make_layer",
    "make_snapshot",
    "pack_messages",
    "snapshot_from_resources",
    "type_urls",
    "version_of_resources",
]
