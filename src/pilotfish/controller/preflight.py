"""Translate a config for stand-in proxies before accepting it.

The loader catches what it can, with file and line. This is the second line of defence:
a config that would make translation fail, or yield a snapshot with dangling references,
is rejected as a whole, so it never reaches (and breaks) every sidecar at once.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from pilotfish.discovery import Registry, build_view
from pilotfish.model.diagnostics import Diagnostic
from pilotfish.model.proxy import ProxyNode
from pilotfish.model.resources import MeshConfig
from pilotfish.snapshot import check_consistency, make_snapshot
from pilotfish.translate import MeshTranslator

_STAND_IN_SIDECAR = ProxyNode(
    id="preflight-sidecar",
    service="preflight",
    outbound_port=15001,
    inbound_port=15006,
    app_port=8080,
)


def stand_in_proxies(config: MeshConfig) -> list[ProxyNode]:
    """One sidecar, and one gateway per Gateway selector so every Gateway is translated."""
    gateways = [
        ProxyNode(id=f"preflight-gateway-{g.meta.name}", kind="gateway", labels=dict(g.selector))
        for g in config.gateways
    ]
    return [_STAND_IN_SIDECAR, *gateways]


def preflight(
    config: MeshConfig, config_dir: Path, registries: Sequence[Registry] = ()
) -> tuple[Diagnostic, ...]:
    """Problems translation would hit, as errors pinned to the folder (no line is known)."""
    translator = MeshTranslator(build_view(config, registries=registries))
    problems: list[Diagnostic] = []
    where = str(config_dir)
    for node in stand_in_proxies(config):
        try:
            snapshot = make_snapshot(translator.resources_for(node))
        except Exception as exc:  # a bug or an unvalidated corner: report it, never crash
            problems.append(
                Diagnostic(where, 1, 1, "", f"translation failed for a {node.kind}: {exc!r}")
            )
            continue
        problems.extend(
            Diagnostic(where, 1, 1, "", f"inconsistent {node.kind} config: {problem}")
            for problem in check_consistency(snapshot)
        )
    return tuple(problems)
