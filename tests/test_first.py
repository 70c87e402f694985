"""`bench --first` (marforge/measure/first.py), integration test: the experiment runs against real
TorchServes and every point it reports was answered. What the figures are is `make bench-first`'s
(docs/performance.md), not a test's."""

import zipfile

import pytest
import yaml
from conftest import ROOT

from marforge.measure import first
from marforge.project import Project


@pytest.fixture(scope="module")
def project(store):
    return Project.at(ROOT / "models.toml", model_store=store)


def test_the_previous_version_is_the_one_registered_before(project):
    assert first.previous_of(project, project.registry.get("fashion", "2.0")).version == "1.0"
    assert first.previous_of(project, project.registry.get("fashion", "1.0")) is None


def test_warm_up_off_is_written_into_the_archives_handler_section(project, tmp_path):
    from marforge.archiving import archive

    built, _ = archive.build(first.with_warm_up(project.registry.get("fashion", "1.0"), False), tmp_path)
    with zipfile.ZipFile(built) as mar:
        assert yaml.safe_load(mar.read("model-config.yaml"))["handler"]["warm_up"] is False


@pytest.mark.integration
def test_one_round_measures_start_and_rollout_with_warm_up_on_and_off(project):
    lines = []
    results = first.first(project, project.registry.get("fashion", "2.0"), rounds=1, log=lines.append)
    points = [(r["scenario"], r["warm_up"]) for r in results["rows"]]
    assert points == [("start", "on (shipped)"), ("rollout from 1.0", "on (shipped)"), ("start", "off"),
                      ("rollout from 1.0", "off")]
    figures = ("ready_s", "first_ms", "next_median_ms", "burst_first_ms", "burst_later_ms", "at_work_median_ms")
    assert all(r[key] > 0 for r in results["rows"] for key in figures), results["rows"]
    assert len(lines) == 4 and results["serving"] == project.registry.get("fashion", "2.0").serving
