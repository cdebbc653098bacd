"""Run Pilotfish's validator over real Istio config and count what it accepts and why not.

Istio's files are not ours to commit, so the corpus lives outside the repository:

    .venv/bin/python tools/istio_corpus.py extract --istio /path/to/istio.git --out /work/corpus
    .venv/bin/python tools/istio_corpus.py run /work/corpus [--show rejected|warned|all]

``extract`` reads a bare (or ordinary) git checkout of istio/istio at HEAD and writes one file
per networking.istio.io document (VirtualService, DestinationRule, Gateway, ServiceEntry,
WorkloadEntry) found in ``samples/``, ``pilot/pkg/**/testdata`` and
``pkg/config/validation/testdata``: Istio-valid documents under ``istio/``, the documents of its
``*-invalid.yaml`` validation tests under ``istio-invalid/``, and what Istio's Gateway API
controller generates (its ``*.yaml.golden`` test outputs) under ``istio-generated/``.
Hand-written probes can be added under ``probes/valid/`` and ``probes/invalid/`` (one document
per file).

``run`` validates each document on its own, together with stand-ins for what it names (a
ServiceEntry per destination host, a Gateway per gateway, a DestinationRule with the subsets it
routes to), so that "unknown host" is never the reason. It prints, per group, how many
documents are accepted clean, accepted with warnings and rejected, and the most common
reasons. In ``istio-invalid`` and ``probes/invalid`` a rejection is a catch; everywhere else
it is a defect.
"""

from __future__ import annotations

import argparse
import collections
import re
import subprocess
import sys
import textwrap
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from ruamel.yaml import YAML

from pilotfish.load import load_texts
from pilotfish.model.diagnostics import Diagnostic

KINDS = ("VirtualService", "DestinationRule", "Gateway", "ServiceEntry", "WorkloadEntry")
SOURCES = re.compile(
    r"^(samples/.*|pilot/pkg/.*/testdata/.*|pkg/config/validation/testdata/.*)\.ya?ml$"
)
# What Istio's own controllers generate (Gateway API -> networking.istio.io), as golden files.
GENERATED_SOURCES = re.compile(r"^pilot/pkg/.*/testdata/.*\.ya?ml\.golden$")
GENERATED_NAME = re.compile(r"^  name: \S*~\S*$", re.MULTILINE)
INVALID_SOURCE = re.compile(r"-invalid\.ya?ml$")
DOCUMENT_SEPARATOR = re.compile(r"^---[ \t]*(?:#.*)?$", re.MULTILINE)
# Istio's validation test files mark each invalid document with the error it expects.
EXPECTED_ERROR_KEY = re.compile(r"^_err:(.*)$", re.MULTILINE)
EXPECTED_TO_FAIL = ("istio-invalid", "probes/invalid")
STAND_INS = "stand-ins.yaml"


# --- extract -----------------------------------------------------------------------------------


def _git(istio: Path, *args: str) -> str:
    return subprocess.run(
        ["git", f"--git-dir={istio}", *args], check=True, capture_output=True, text=True
    ).stdout


def _networking_documents(text: str) -> Iterator[tuple[int, str]]:
    yaml = YAML(typ="safe")
    for index, chunk in enumerate(DOCUMENT_SEPARATOR.split(text)):
        # Kept as a comment, to compare with the reason Pilotfish gives.
        chunk = EXPECTED_ERROR_KEY.sub(r"# Istio's expected error:\1", chunk).strip("\n")
        # Go templates ("{{$i}}") generate config; they are not config themselves.
        if "networking.istio.io" not in chunk or "{{" in chunk:
            continue
        try:
            body = yaml.load(chunk)
        except Exception:  # Helm templates and other non-YAML: not config a user applies
            continue
        if (
            isinstance(body, dict)
            and str(body.get("apiVersion", "")).startswith("networking.istio.io/")
            and body.get("kind") in KINDS
        ):
            yield index, chunk + "\n"


def extract(istio: Path, out: Path) -> None:
    written = collections.Counter[str]()
    for path in _git(istio, "ls-tree", "-r", "HEAD", "--name-only").splitlines():
        if GENERATED_SOURCES.match(path) is not None:
            group = "istio-generated"
        elif SOURCES.match(path) is not None:
            group = "istio-invalid" if INVALID_SOURCE.search(path) else "istio"
        else:
            continue
        text = _git(istio, "show", f"HEAD:{path}")
        if group == "istio-generated":
            # Istio names what it generates "route~gateway~http", which no user may write
            # (names are DNS subdomains); rename, so the rest of each document is judged.
            text = GENERATED_NAME.sub(lambda m: m[0].replace("~", "-"), text)
        for index, document in _networking_documents(text):
            target = out / group / f"{path.replace('/', '__')}--{index:03d}.yaml"
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(document)
            written[group] += 1
    for group, count in sorted(written.items()):
        print(f"{group}: {count} documents written under {out / group}")


# --- stand-ins -----------------------------------------------------------------------------------


@dataclass
class _Named:
    """What one document refers to, so stand-ins can make those references resolve."""

    namespace: str
    hosts: dict[str, set[int]] = field(default_factory=dict)
    # The protocol a host's stand-in ports get: that of the routes that reach it.
    protocols: dict[str, str] = field(default_factory=dict)
    subsets: dict[str, set[str]] = field(default_factory=dict)
    gateways: set[str] = field(default_factory=set)


def _named(body: dict[str, object]) -> _Named:
    metadata = body.get("metadata")
    namespace = "default"
    if isinstance(metadata, dict) and isinstance(metadata.get("namespace"), str):
        namespace = metadata["namespace"]
    named = _Named(namespace)
    spec = body.get("spec")
    if not isinstance(spec, dict):
        return named
    if body.get("kind") == "DestinationRule" and isinstance(spec.get("host"), str):
        named.hosts.setdefault(spec["host"], set())
    if body.get("kind") != "VirtualService":
        return named
    for gateway in _list(spec.get("gateways")):
        if isinstance(gateway, str) and gateway != "mesh":
            named.gateways.add(gateway)
    for host in _list(spec.get("hosts")):
        if isinstance(host, str):
            named.hosts.setdefault(host, set())
    for section, protocol in (("http", "HTTP"), ("tcp", "TCP"), ("tls", "TLS")):
        for route in _list(spec.get(section)):
            if isinstance(route, dict):
                for destination in _list(route.get("route")):
                    _note_destination(named, destination, protocol)
                # Mirrors name services too: ``mirror`` is a destination itself.
                for mirror in _list(route.get("mirrors")):
                    _note_destination(named, mirror)
                if route.get("mirror") is not None:
                    _note_destination(named, {"destination": route["mirror"]})
                for gateway in _match_gateways(route):
                    named.gateways.add(gateway)
    return named


def _note_destination(named: _Named, destination: object, protocol: str = "HTTP") -> None:
    if not isinstance(destination, dict) or not isinstance(destination.get("destination"), dict):
        return
    target = destination["destination"]
    host = target.get("host")
    if not isinstance(host, str):
        return
    ports = named.hosts.setdefault(host, set())
    named.protocols.setdefault(host, protocol)
    port = target.get("port")
    if isinstance(port, dict) and isinstance(port.get("number"), int):
        ports.add(port["number"])
    if isinstance(target.get("subset"), str):
        named.subsets.setdefault(host, set()).add(target["subset"])


def _match_gateways(route: dict[str, object]) -> Iterator[str]:
    for match in _list(route.get("match")):
        if isinstance(match, dict):
            for gateway in _list(match.get("gateways")):
                if isinstance(gateway, str) and gateway != "mesh":
                    yield gateway


def _list(value: object) -> list[object]:
    return value if isinstance(value, list) else []


def _stand_ins(named: _Named) -> str:
    documents: list[str] = []
    for index, (host, ports) in enumerate(sorted(named.hosts.items())):
        if "*" in host or not host:
            continue
        numbers = sorted(port for port in ports if 0 < port < 65536) or [80]
        protocol = named.protocols.get(host, "HTTP")
        # A destination without a port needs a service with exactly one port; one with
        # several distinct ports gets all of them.
        port_list = ", ".join(
            f"{{number: {n}, name: {protocol.lower()}-{n}, protocol: {protocol}}}" for n in numbers
        )
        documents.append(
            textwrap.dedent(
                f"""\
                apiVersion: networking.istio.io/v1
                kind: ServiceEntry
                metadata: {{name: stand-in-{index}, namespace: {named.namespace}}}
                spec:
                  hosts: ["{host}"]
                  location: MESH_INTERNAL
                  ports: [{port_list}]
                  resolution: STATIC
                  endpoints: [{{address: 127.0.0.1}}]
                """
            )
        )
    for index, (host, subsets) in enumerate(sorted(named.subsets.items())):
        subset_list = ", ".join(f"{{name: {s}, labels: {{version: {s}}}}}" for s in sorted(subsets))
        documents.append(
            textwrap.dedent(
                f"""\
                apiVersion: networking.istio.io/v1
                kind: DestinationRule
                metadata: {{name: stand-in-rule-{index}, namespace: {named.namespace}}}
                spec:
                  host: "{host}"
                  subsets: [{subset_list}]
                """
            )
        )
    for gateway in sorted(named.gateways):
        namespace, _, name = gateway.rpartition("/")
        documents.append(
            textwrap.dedent(
                f"""\
                apiVersion: networking.istio.io/v1
                kind: Gateway
                metadata: {{name: {name}, namespace: {namespace or named.namespace}}}
                spec:
                  selector: {{istio: ingressgateway}}
                  servers: [{{port: {{number: 80, name: http, protocol: HTTP}}, hosts: ["*"]}}]
                """
            )
        )
    return "---\n".join(documents)


# --- run -------------------------------------------------------------------------------------


@dataclass
class _Outcome:
    path: Path
    errors: list[Diagnostic]
    warnings: list[Diagnostic]
    stand_in_problems: list[Diagnostic]


def validate_document(path: Path) -> _Outcome:
    text = path.read_text()
    files = [(str(path), text)]
    try:
        body = YAML(typ="safe").load(text)
    except Exception:
        body = None
    if isinstance(body, dict):
        stand_ins = _stand_ins(_named(body))
        if stand_ins:
            files.append((STAND_INS, stand_ins))
    result = load_texts(files)
    own = [d for d in result.diagnostics if d.file != STAND_INS]
    return _Outcome(
        path=path,
        errors=[d for d in own if d.severity == "error"],
        warnings=[d for d in own if d.severity == "warning"],
        stand_in_problems=[
            d for d in result.diagnostics if d.file == STAND_INS and d.severity == "error"
        ],
    )


def reason(diagnostic: Diagnostic) -> str:
    """A diagnostic with the document's own names and numbers taken out, for counting."""
    field = re.sub(r"\[\d+\]", "[]", diagnostic.field)
    field = re.sub(r"^spec\.(http|tcp|tls)\[\]\.", r"\1[].", field)
    message = re.sub(r'"[^"]*"', '"…"', diagnostic.message)
    message = re.sub(r"\b\d+(\.\d+)?\b", "N", message)
    message = re.sub(r"\(first defined at [^)]*\)|\([^()]*:\d+:\d+\)", "", message).strip()
    return f"{field}: {message}" if field else message


def _groups(corpus: Path) -> Iterator[tuple[str, list[Path]]]:
    for group in ("istio", "istio-generated", "istio-invalid", "probes/valid", "probes/invalid"):
        files = sorted((corpus / group).glob("*.yaml"))
        if files:
            yield group, files


def run(corpus: Path, show: str | None, top: int) -> None:
    for group, files in _groups(corpus):
        outcomes = [validate_document(path) for path in files]
        rejected = [o for o in outcomes if o.errors]
        warned = [o for o in outcomes if not o.errors and o.warnings]
        clean = [o for o in outcomes if not o.errors and not o.warnings]
        verdict = "caught" if group in EXPECTED_TO_FAIL else "rejected"
        print(
            f"{group}: {len(outcomes)} documents: {len(clean) + len(warned)} accepted "
            f"({len(clean)} clean, {len(warned)} with warnings), {len(rejected)} {verdict}"
        )
        _print_top("errors", (reason(d) for o in rejected for d in o.errors), top)
        _print_top("warnings", (reason(d) for o in outcomes for d in o.warnings), top)
        broken_stand_ins = [o for o in outcomes if o.stand_in_problems]
        if broken_stand_ins:
            print(f"  ({len(broken_stand_ins)} documents had stand-ins with errors)")
        shown = {"rejected": rejected, "warned": warned, "all": outcomes}.get(show or "", [])
        if show == "accepted" and group in EXPECTED_TO_FAIL:
            shown = clean + warned
        for outcome in shown:
            print(f"  {outcome.path}")
            for diagnostic in [*outcome.errors, *outcome.warnings, *outcome.stand_in_problems]:
                print(f"    {diagnostic}")


def _print_top(title: str, reasons: Iterable[str], top: int) -> None:
    counts = collections.Counter(reasons)
    if not counts:
        return
    print(f"  top {title}:")
    for text, count in counts.most_common(top):
        print(f"    {count:4d}  {text}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    extract_command = commands.add_parser("extract", help="write Istio's documents to a folder")
    extract_command.add_argument("--istio", type=Path, required=True, help="istio/istio git dir")
    extract_command.add_argument("--out", type=Path, required=True)
    run_command = commands.add_parser("run", help="validate every document and count")
    run_command.add_argument("corpus", type=Path)
    run_command.add_argument("--show", choices=("rejected", "warned", "accepted", "all"))
    run_command.add_argument("--top", type=int, default=12)
    args = parser.parse_args(argv)
    if args.command == "extract":
        extract(args.istio, args.out)
    else:
        run(args.corpus, args.show, args.top)
    return 0


if __name__ == "__main__":
    sys.exit(main())
