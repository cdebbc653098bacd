"""Versioned per-proxy snapshots of xDS resources, and the consistency check before publishing.

Pure: no gRPC, no asyncio. The xDS server reaches snapshots only through these types.
"""

from __future__ import annotations

from pilotfish.snapshot import type_urls
from pilotfish.snapshot.consistency import check_consistency
from pilotfish.snapshot.snapshot import (
    DEFAULT_PACKING_CACHE,
    PackedLayer,
    Packer,
    PackingCache,
    ProxyResourcesLike,
    Resource,
    SharedMessagePacker,
    Snapshot,
    changed_names,
    changed_names_between,
    digest_version,
    layered_snapshot,
    make_snapshot,
    pack_own_layer,
    snapshot_from_resources,
    version_of_resources,
)

__all__ = [
    "DEFAULT_PACKING_CACHE",
    "PackedLayer",
    "Packer",
    "PackingCache",
    "ProxyResourcesLike",
    "Resource",
    "SharedMessagePacker",
    "Snapshot",
    "changed_names",
    "changed_names_between",
    "check_consistency",
    "digest_version",
    "layered_snapshot",
    "make_snapshot",
    "pack_own_layer",
    "snapshot_from_resources",
    "type_urls",
    "version_of_resources",
]
