"""Whole folders from disk, Istio's own Bookinfo samples, and the one-line report format."""

from __future__ import annotations

from pathlib import Path

import pytest
from load_cases import BOOKINFO_REGISTRY, documents

from pilotfish.load import ParseCache, format_diagnostics, load_directory, load_texts
from pilotfish.model.diagnostics import Diagnostic

DATA = Path(__file__).resolve().parents[1] / "data" / "load"
REPO = Path(__file__).resolve().parents[3]
# Kept outside the repository on purpose: unmodified upstream files (see DESIGN.md).
BOOKINFO = REPO.parent / "shared" / "compat" / "istio-bookinfo"
BOOKINFO_SCENARIOS = [
    "bookinfo-gateway.yaml",
    "virtual-service-all-v1.yaml",
    "virtual-service-ratings-test-abort.yaml",
    "virtual-service-ratings-test-delay.yaml",
    "virtual-service-reviews-90-10.yaml",
    "virtual-service-reviews-jason-v2-v3.yaml",
]


@pytest.fixture
def bookinfo() -> Path:
    """The samples folder, or a skip that names it: a clone of its own has no ../shared."""
    if not BOOKINFO.is_dir():
        pytest.skip(
            f"Istio's Bookinfo samples are missing: no folder {BOOKINFO} "
            "(kept outside the repository: copy Istio's samples/bookinfo/networking there)"
        )
    return BOOKINFO


def test_a_folder_is_read_recursively_skipping_hidden_entries() -> None:
    result = load_directory(DATA / "mesh")
    assert result.diagnostics == ()
    assert result.config is not None
    assert [w.meta.name for w in result.config.workloads] == ["web-v1", "web-v2"]
    assert result.config.workloads[1].replicas == 2
    assert result.config.workloads[0].directory == str((DATA / "mesh" / "services").resolve())
    (service,) = result.config.virtual_services
    assert [r.weight for r in service.http[0].route] == [75, 25]
    assert service.meta.source.file == str(DATA / "mesh" / "routes.yml")


def test_diagnostics_of_a_folder_name_each_file_as_found() -> None:
    result = load_directory(DATA / "broken")
    assert result.config is None
    routes = str(DATA / "broken" / "routes.yaml")
    workloads = str(DATA / "broken" / "workloads.yaml")
    summary = [(d.file, d.line, d.col, d.field) for d in result.errors]
    assert (routes, 10, 9, "spec.http[0].route[0].destination.hots") in summary
    assert (routes, 9, 7, "spec.http[0].route[0].destination.host") in summary
    assert (workloads, 8, 3, "spec.protocol") in summary


def test_relative_paths_stay_relative(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(DATA)
    result = load_directory(Path("broken"))
    assert {d.file for d in result.diagnostics} == {"broken/routes.yaml", "broken/workloads.yaml"}


def test_a_missing_folder_is_a_diagnostic(tmp_path: Path) -> None:
    result = load_directory(tmp_path / "nowhere")
    assert result.config is None
    assert [d.message for d in result.diagnostics] == ["no such directory"]


def test_an_empty_folder_loads_an_empty_mesh_with_a_warning(tmp_path: Path) -> None:
    result = load_directory(tmp_path)
    assert result.config is not None
    assert [d.severity for d in result.diagnostics] == ["warning"]


def test_unreadable_bytes_are_a_diagnostic(tmp_path: Path) -> None:
    (tmp_path / "latin1.yaml").write_bytes(b"kind: caf\xe9\n")
    result = load_directory(tmp_path)
    assert result.config is None
    assert "not UTF-8" in result.diagnostics[0].message


@pytest.mark.parametrize("scenario", BOOKINFO_SCENARIOS)
def test_istio_bookinfo_samples_load_as_they_are(scenario: str, bookinfo: Path) -> None:
    files = [
        (str(bookinfo / scenario), (bookinfo / scenario).read_text()),
        (
            str(bookinfo / "destination-rule-all.yaml"),
            (bookinfo / "destination-rule-all.yaml").read_text(),
        ),
        ("registry.yaml", documents(*BOOKINFO_REGISTRY)),
    ]
    result = load_texts(files)
    assert result.errors == ()
    assert result.config is not None
    assert result.config.virtual_services


def test_bookinfo_values_survive_loading(bookinfo: Path) -> None:
    scenario = bookinfo / "virtual-service-ratings-test-delay.yaml"
    result = load_texts(
        [
            (str(scenario), scenario.read_text()),
            ("rules.yaml", (bookinfo / "destination-rule-all.yaml").read_text()),
            ("registry.yaml", documents(*BOOKINFO_REGISTRY)),
        ]
    )
    assert result.config is not None
    first = result.config.virtual_services[0].http[0]
    assert first.fault is not None and first.fault.delay is not None
    assert (first.fault.delay.fixed_delay, first.fault.delay.percent) == (7.0, 100.0)
    assert first.match[0].headers["end-user"].value == "jason"


def test_format_diagnostics_one_per_line_sorted() -> None:
    diagnostics = [
        Diagnostic("b.yaml", 3, 5, "spec.host", "unknown service", "warning"),
        Diagnostic(
            "a.yaml", 12, 7, "spec.http[0].route[0].destination.host", 'unknown service "x"'
        ),
        Diagnostic("a.yaml", 2, 1, "", "invalid YAML: bad"),
    ]
    assert format_diagnostics(diagnostics).splitlines() == [
        "a.yaml:2:1: invalid YAML: bad",
        'a.yaml:12:7: spec.http[0].route[0].destination.host: unknown service "x"',
        "b.yaml:3:5: warning: spec.host: unknown service",
    ]


def test_a_diagnostic_reads_the_same_alone_and_in_a_list() -> None:
    whole_document = Diagnostic("cfg", 1, 1, "", "msg")
    warning = Diagnostic("cfg", 2, 3, "spec.host", "unknown service", "warning")
    assert str(whole_document) == "cfg:1:1: msg"
    assert str(warning) == "cfg:2:3: warning: spec.host: unknown service"
    assert format_diagnostics([warning, whole_document]) == f"{whole_document}\n{warning}"


def test_the_parse_cache_belongs_to_the_caller(tmp_path: Path) -> None:
    (tmp_path / "registry.yaml").write_text(documents(*BOOKINFO_REGISTRY[:1]))
    mine, theirs = ParseCache(), ParseCache()
    assert load_directory(tmp_path, mine).config is not None
    assert load_directory(tmp_path).config is not None
    assert (len(mine), len(theirs)) == (1, 0)
    (tmp_path / "registry.yaml").write_text(documents(*BOOKINFO_REGISTRY[1:2]))
    reloaded = load_directory(tmp_path, mine)
    assert reloaded.config is not None
    assert [w.meta.name for w in reloaded.config.workloads] == ["details-v1"]
    assert (len(mine), len(theirs)) == (2, 0)
