"""Read a folder (or one text) of YAML into a validated ``MeshConfig`` plus every diagnostic.

This is the only module of the package that touches the file system; everything it calls
works on text and plain values.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from pilotfish.load.fields import ObjectPaths
from pilotfish.load.parse_document import Resource, parse_document
from pilotfish.load.parse_tls import certificate_files
from pilotfish.load.parse_workload import RejectedWorkload
from pilotfish.load.validate import validate_mesh
from pilotfish.load.yaml_source import ParsedYaml, join_path, parse_yaml
from pilotfish.model.authorization import AuthorizationPolicy, RequestAuthentication
from pilotfish.model.diagnostics import Diagnostic, has_errors
from pilotfish.model.rate_limits import RateLimitPolicy
from pilotfish.model.resources import (
    DestinationRule,
    Gateway,
    MeshConfig,
    MeshSettings,
    Meta,
    ServiceEntry,
    TrafficPolicy,
    VirtualService,
    Workload,
    WorkloadEntry,
)
from pilotfish.model.security import ClientTLSSettings, PeerAuthentication, ServerTLSSettings
from pilotfish.model.services import Service

YAML_SUFFIXES = (".yaml", ".yml")
# How a bug of ours reads to the user; tests look for it, since no input should produce it.
INTERNAL_ERROR = "internal error"


@dataclass(frozen=True)
class LoadResult:
    """``config`` is ``None`` exactly when some diagnostic is an error; warnings never block."""

    config: MeshConfig | None
    diagnostics: tuple[Diagnostic, ...]

    @property
    def errors(self) -> tuple[Diagnostic, ...]:
        return tuple(d for d in self.diagnostics if d.severity == "error")

    @property
    def warnings(self) -> tuple[Diagnostic, ...]:
        return tuple(d for d in self.diagnostics if d.severity == "warning")


class ParseCache:
    """Parsed files by (name, content), so a reload re-parses only files that changed.

    Parsing YAML with positions is by far the slowest step of a load (milliseconds per
    document); a folder of many files edited one at a time pays for one file per edit. The
    parsed documents are never modified after parsing, so sharing them is safe. Whoever
    reloads a folder owns one (a control plane does); a one-off load needs none.
    """

    def __init__(self, max_files: int = 512) -> None:
        self._max_files = max_files
        self._files: OrderedDict[tuple[str, str], ParsedYaml] = OrderedDict()

    def __len__(self) -> int:
        return len(self._files)

    def parse(self, text: str, filename: str) -> ParsedYaml:
        key = (filename, hashlib.sha256(text.encode()).hexdigest())
        parsed = self._files.get(key)
        if parsed is None:
            parsed = parse_yaml(text, filename)
            self._files[key] = parsed
            if len(self._files) > self._max_files:
                self._files.popitem(last=False)
        else:
            self._files.move_to_end(key)
        return parsed


@dataclass
class _Collector:
    cache: ParseCache = field(default_factory=ParseCache)
    resources: list[Resource] = field(default_factory=list)
    diagnostics: list[Diagnostic] = field(default_factory=list)
    paths: ObjectPaths = field(default_factory=ObjectPaths)
    # False once a file could not be read whole: a resource may then be missing.
    complete: bool = True

    def add_text(self, text: str, filename: str, directory: str) -> None:
        documents, problems, complete = self.cache.parse(text, filename)
        self.diagnostics.extend(problems)
        self.complete = self.complete and complete
        for document in documents:
            try:
                resource, found = parse_document(document, directory, self.paths)
            except Exception as error:
                # A bug in one parser must cost the user one document, not the whole folder
                # (and not the control plane that reloads it).
                line, col = document.start
                self.diagnostics.append(
                    Diagnostic(
                        filename, line, col, "", _internal_error("reading this document", error)
                    )
                )
                continue
            self.diagnostics.extend(found)
            if resource is not None:
                self.resources.append(resource)

    def result(self, known_services: Mapping[str, Service] | None = None) -> LoadResult:
        config = _mesh_config(self.resources)
        self.diagnostics.extend(_extra_mesh_configs(self.resources))
        self.diagnostics.extend(_missing_certificate_files(config, self.paths))
        rejected = [r for r in self.resources if isinstance(r, RejectedWorkload)]
        try:
            self.diagnostics.extend(
                validate_mesh(
                    config,
                    self.paths,
                    known_services,
                    complete=self.complete,
                    rejected_workloads=rejected,
                )
            )
        except Exception as error:
            self.diagnostics.append(
                Diagnostic(
                    "", 1, 1, "", _internal_error("checking references between resources", error)
                )
            )
        diagnostics = tuple(sorted(self.diagnostics))
        return LoadResult(None if has_errors(diagnostics) else config, diagnostics)


def _internal_error(activity: str, error: Exception) -> str:
    return f"{INTERNAL_ERROR} while {activity}: {type(error).__name__}: {error}; please report"


def load_text(text: str, filename: str, directory: Path | None = None) -> LoadResult:
    """Load one file's text; ``directory`` (default: the file's folder) goes on Workloads."""
    collector = _Collector()
    folder = directory if directory is not None else Path(filename).parent
    collector.add_text(text, filename, str(folder.resolve()))
    return collector.result()


def load_texts(
    files: Iterable[tuple[str, str]],
    directory: Path | None = None,
    known_services: Mapping[str, Service] | None = None,
) -> LoadResult:
    """Load several ``(filename, text)`` pairs as one folder would be loaded."""
    collector = _Collector()
    for filename, text in files:
        folder = directory if directory is not None else Path(filename).parent
        collector.add_text(text, filename, str(folder.resolve()))
    return collector.result(known_services)


def load_directory(
    path: Path,
    cache: ParseCache | None = None,
    known_services: Mapping[str, Service] | None = None,
) -> LoadResult:
    """Every ``*.yaml``/``*.yml`` under ``path`` (recursively, skipping hidden entries).

    Files are reported as ``path`` joined with their relative name, so the names in
    diagnostics open from wherever the user typed ``path``. A single file is accepted too.
    ``cache`` keeps parsed files between loads of the same folder; ``known_services`` are
    services other registries declare: routes may name them.
    """
    collector = _Collector() if cache is None else _Collector(cache)
    if path.is_file():
        files: list[Path] = [path]
    elif path.is_dir():
        files = sorted(yaml_files(path))
        if not files:
            collector.diagnostics.append(
                Diagnostic(str(path), 1, 1, "", "no *.yaml or *.yml files found", "warning")
            )
    else:
        collector.diagnostics.append(Diagnostic(str(path), 1, 1, "", "no such directory"))
        return LoadResult(None, tuple(collector.diagnostics))
    for file in files:
        text = _read_text(file, collector)
        if text is not None:
            collector.add_text(text, str(file), str(file.parent.resolve()))
    return collector.result(known_services)


def yaml_files(root: Path) -> Iterator[Path]:
    """The config files of a folder: YAML, in any subfolder, hidden files and folders skipped."""
    for candidate in root.rglob("*"):
        relative = candidate.relative_to(root)
        if any(part.startswith(".") for part in relative.parts):
            continue
        if candidate.suffix in YAML_SUFFIXES and candidate.is_file():
            yield candidate


def _read_text(file: Path, collector: _Collector) -> str | None:
    try:
        # utf-8-sig drops the byte-order mark some Windows editors write.
        return file.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError as error:
        collector.diagnostics.append(
            Diagnostic(str(file), 1, 1, "", f"not UTF-8 text (byte {error.start})")
        )
    except OSError as error:
        collector.diagnostics.append(
            Diagnostic(str(file), 1, 1, "", f"cannot read file: {error.strerror}")
        )
    collector.complete = False
    return None


def _mesh_config(resources: Iterable[Resource]) -> MeshConfig:
    resources = list(resources)
    return MeshConfig(
        virtual_services=tuple(r for r in resources if isinstance(r, VirtualService)),
        destination_rules=tuple(r for r in resources if isinstance(r, DestinationRule)),
        gateways=tuple(r for r in resources if isinstance(r, Gateway)),
        service_entries=tuple(r for r in resources if isinstance(r, ServiceEntry)),
        workload_entries=tuple(r for r in resources if isinstance(r, WorkloadEntry)),
        workloads=tuple(r for r in resources if isinstance(r, Workload)),
        peer_authentications=tuple(r for r in resources if isinstance(r, PeerAuthentication)),
        # More than one is an error (see validate); the first one counts meanwhile.
        mesh=next((r for r in resources if isinstance(r, MeshSettings)), MeshSettings()),
        authorization_policies=tuple(r for r in resources if isinstance(r, AuthorizationPolicy)),
        request_authentications=tuple(r for r in resources if isinstance(r, RequestAuthentication)),
        rate_limit_policies=tuple(r for r in resources if isinstance(r, RateLimitPolicy)),
    )


def _extra_mesh_configs(resources: Iterable[Resource]) -> Iterable[Diagnostic]:
    """A folder is one mesh: a second MeshConfig would silently lose to the first."""
    found = [r.meta for r in resources if isinstance(r, MeshSettings) and r.meta is not None]
    for meta in found[1:]:
        line, col = found[0].source.locate("metadata.name")
        yield meta.source.diagnostic(
            "metadata.name",
            f"a folder has at most one MeshConfig; {found[0].name!r} is already at "
            f"{found[0].source.file}:{line}:{col}",
        )


def _tls_settings(
    config: MeshConfig,
) -> Iterator[tuple[Meta, ClientTLSSettings | ServerTLSSettings]]:
    def of_policy(
        meta: Meta, policy: TrafficPolicy | None
    ) -> Iterator[tuple[Meta, ClientTLSSettings]]:
        if policy is None:
            return
        if policy.tls is not None:
            yield meta, policy.tls
        for settings in policy.port_settings.values():
            if settings.tls is not None:
                yield meta, settings.tls

    for rule in config.destination_rules:
        yield from of_policy(rule.meta, rule.traffic_policy)
        for subset in rule.subsets:
            yield from of_policy(rule.meta, subset.traffic_policy)
    for gateway in config.gateways:
        for server in gateway.servers:
            if server.tls is not None:
                yield gateway.meta, server.tls


def _missing_certificate_files(config: MeshConfig, paths: ObjectPaths) -> Iterator[Diagnostic]:
    """Envoy would refuse the whole resource for one missing file: say which, where."""
    for meta, settings in _tls_settings(config):
        tls_path = paths.path_of(settings) or ""
        for key, filename in certificate_files(settings):
            if not Path(filename).is_file():
                yield meta.source.diagnostic(
                    join_path(tls_path, key), f"no such certificate file: {filename}"
                )


def format_diagnostics(diagnostics: Iterable[Diagnostic]) -> str:
    """One line per problem (see ``Diagnostic.__str__``), sorted by file and line."""
    return "\n".join(str(diagnostic) for diagnostic in sorted(diagnostics))
