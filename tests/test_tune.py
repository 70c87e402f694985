"""`make tune` and what "auto" means: the `tuned` table's checks, the registry resolving "auto" from it
(or from the rule), models.toml edited as text, the threads reaching the workers, the search's pieces,
and one real tune of a version in a project copy (real TorchServes, a short search)."""

import json
import re
import shutil
import tomllib

import pytest
from conftest import ROOT, start_server

from marforge import registry_text, tuned
from marforge.archiving import archive
from marforge.cli import main
from marforge.device import auto_workers, cpu_count
from marforge.errors import RegistryError
from marforge.measure import report, tune
from marforge.project import Project
from marforge.serve import launch, process
from marforge.serve.rundir import RunDir

CORES = cpu_count()
TABLE = {"cores": CORES, "workers": 3, "threads": 2, "batch_size": 4, "max_batch_delay_ms": 5}


def registry_of(tmp_path, version_lines="", model_lines="", own=False):
    """A project with one model m, version 1.0 (`version_lines` added to its table)."""
    source = 'handler_file = "h.py"\n' if own else ""
    tmp_path.mkdir(exist_ok=True)
    (tmp_path / "h.py").write_text("")
    (tmp_path / "models.toml").write_text(f'[models.m]\ndefault_version = "1.0"\n{model_lines}\n'
                                          f'[models.m.versions."1.0"]\nmodel_def = "m.py"\n{source}{version_lines}')
    return Project.at(tmp_path / "models.toml", device="cpu").registry.get("m", "1.0")


def test_auto_is_the_tuned_table_when_it_was_tuned_on_as_many_cores(tmp_path):
    mv = registry_of(tmp_path, f"tuned = {{ cpu = {registry_text._toml(TABLE)} }}\n")
    assert {k: mv.serving[k] for k in tuned.TUNABLE} == {k: TABLE[k] for k in tuned.TUNABLE}
    assert mv.auto == set(tuned.TUNABLE) and mv.tuned == TABLE


def test_auto_is_the_rule_when_untuned_or_tuned_on_another_machine(tmp_path):
    rule = {"workers": auto_workers(CORES, 0), "threads": None, "batch_size": 16, "max_batch_delay_ms": 1}
    assert {k: registry_of(tmp_path).serving[k] for k in tuned.TUNABLE} == rule
    other = {**TABLE, "cores": CORES + 1}
    mv = registry_of(tmp_path, f"tuned = {{ cpu = {registry_text._toml(other)}, gpu = {registry_text._toml(TABLE)} }}\n")
    assert {k: mv.serving[k] for k in tuned.TUNABLE} == rule  # 2 cores say nothing of 3; the gpu table is not the cpu's


def test_a_number_the_user_wrote_is_kept_over_the_tune(tmp_path):
    mv = registry_of(tmp_path, f"serving = {{ batch_size = 8 }}\ntuned = {{ cpu = {registry_text._toml(TABLE)} }}\n",
                     model_lines="serving = { workers = 1 }\n")
    assert (mv.serving["workers"], mv.serving["batch_size"], mv.serving["threads"]) == (1, 8, 2)
    assert mv.auto == {"threads", "max_batch_delay_ms"} and not mv.auto_workers


def test_an_own_handlers_workers_take_the_servers_share_of_threads(tmp_path):
    mv = registry_of(tmp_path, f"tuned = {{ cpu = {registry_text._toml(TABLE)} }}\n", own=True)
    assert mv.serving["threads"] is None and mv.serving["workers"] == 3
    with pytest.raises(RegistryError, match=r"serving.threads is marforge's handler's setting"):
        registry_of(tmp_path, "serving = { threads = 2 }\n", own=True)


@pytest.mark.parametrize("bad", [{"tpu": TABLE}, {"cpu": {**TABLE, "workers": 0}}, {"cpu": {**TABLE, "threads": True}},
                                 {"cpu": {k: v for k, v in TABLE.items() if k != "cores"}}, {"cpu": {**TABLE, "batch_size": 2.5}}])
def test_a_broken_tuned_table_is_refused_naming_the_version_and_the_fix(tmp_path, bad):
    with pytest.raises(RegistryError) as caught:
        registry_of(tmp_path, f"tuned = {registry_text._toml(bad)}\n")
    assert '[models.m.versions."1.0"] tuned' in caught.value.message and "make tune" in caught.value.hint


def test_serving_numbers_are_checked(tmp_path):
    for value in ("0", '"many"', "true"):
        with pytest.raises(RegistryError, match=r"serving.workers must be a whole number of at least 1 or \"auto\""):
            registry_of(tmp_path, f"serving = {{ workers = {value} }}\n")


def test_set_tuned_writes_one_line_per_version_keeping_comments_and_the_other_device(tmp_path):
    path = tmp_path / "models.toml"
    registry_of(tmp_path, 'format = "eager"  # a comment kept\n')
    registry_text.set_tuned(path, "m", "1.0", "gpu", {**TABLE, "workers": 1}, "make tune, first")
    registry_text.set_tuned(path, "m", "1.0", "cpu", TABLE, "make tune, second")
    registry_text.set_tuned(path, "m", "1.0", "cpu", {**TABLE, "batch_size": 32}, "make tune, third")
    text = path.read_text()
    assert text.count("tuned = ") == 1 and "# a comment kept" in text and "# make tune, third" in text
    assert tomllib.loads(text)["models"]["m"]["versions"]["1.0"]["tuned"] == {"gpu": {**TABLE, "workers": 1},
                                                                           "cpu": {**TABLE, "batch_size": 32}}
    assert Project.at(path, device="cpu").registry.get("m", "1.0").serving["batch_size"] == 32
    with pytest.raises(RegistryError, match=r'no \[models.m.versions."9.0"\] table'):
        registry_text.set_tuned(path, "m", "9.0", "cpu", TABLE, "x")


def test_the_threads_chosen_reach_the_handler_by_the_environment(tmp_path):
    import contract

    one = registry_of(tmp_path, 'serving = { threads = 1 }\n')
    env = launch.worker_threads([one, registry_of(tmp_path / "b", 'serving = { threads = 3 }\n')])
    assert contract.threads_of(env, "m-1.0") == 3  # the later entry of a key wins (a candidate over the registry's)
    assert contract.threads_of(env, "other-1.0") is None and launch.worker_threads([registry_of(tmp_path)]) == {}
    assert contract.threads_of({contract.THREADS_ENV: "m-1.0=x,a=b=2"}, "a=b") == 2


def test_placements_share_the_cores_without_oversubscribing_them():
    assert tune.placements(2) == [(1, 2), (2, 1), (1, 1)]
    assert tune.placements(6) == [(1, 6), (2, 3), (4, 1), (6, 1), (1, 1), (2, 1)]
    assert tune.placements(16, gpus=2) == [(2, 8), (4, 4), (2, 1), (4, 1)]
    assert all(w * t <= cores for cores in range(1, 33) for w, t in tune.placements(cores))


def test_a_candidate_scores_its_worst_ratio_to_the_best_of_its_stage():
    rows = [[{"concurrency": 1, "throughput": 100.0}, {"concurrency": 64, "throughput": 1000.0}],
            [{"concurrency": 1, "throughput": 50.0}, {"concurrency": 64, "throughput": 2000.0}]]
    assert tune.score(rows) == [0.5, 0.5]
    assert tune.score(rows + [[{"concurrency": 1, "throughput": 100.0}, {"concurrency": 64, "throughput": 2000.0}]])[2] == 1.0


def test_only_the_auto_keys_are_searched(tmp_path):
    mv = registry_of(tmp_path, "serving = { workers = 1, batch_size = 8 }\n")
    start = tune.settings_of(mv, 4, 0)
    assert start == {"workers": 1, "threads": 4, "batch_size": 8, "max_batch_delay_ms": 1}
    stages = dict(tune.stages(mv, 4, 0))
    assert list(stages) == ["placement", "window"]
    assert [c["threads"] for c in stages["placement"](start)] == [4, 1] and {c["workers"] for c in stages["placement"](start)} == {1}
    own = registry_of(tmp_path, "", own=True)
    placement = dict(tune.stages(own, 4, 0))["placement"]
    assert [(c["workers"], c["threads"]) for c in placement(tune.settings_of(own, 4, 0))] == [(1, 4), (2, 2), (4, 1)]


def test_the_winner_is_kept_only_ahead_of_the_rule_and_nowhere_far_behind():
    assert tune.kept({"1": 1.02, "16": 1.0, "64": 1.01}) and tune.kept({"1": 0.96, "64": 1.3})
    assert not tune.kept({"1": 0.99, "64": 1.0}) and not tune.kept({"1": 0.9, "64": 1.5}) and not tune.kept({})


def test_a_report_block_missing_from_its_page_is_appended(tmp_path):
    page = tmp_path / "page.md"
    page.write_text("# Page\n\nprose\n")
    report.update_block(page, "tune-a", "table a\n", append=True)
    report.update_block(page, "tune-b", "table b\n", append=True)
    report.update_block(page, "tune-a", "table a2\n", append=True)
    assert page.read_text() == ("# Page\n\nprose\n\n<!-- generated: tune-a -->\ntable a2\n<!-- end: tune-a -->\n\n"
                                "<!-- generated: tune-b -->\ntable b\n<!-- end: tune-b -->\n")


@pytest.fixture
def tunable(tmp_path):
    """A project copy with fashion 1.0 built, all of whose serving settings are fixed but the window."""
    root = tmp_path / "project"
    (root / "docs").mkdir(parents=True)
    for folder in ("model_defs", "samples"):
        (root / folder).symlink_to(ROOT / folder)
    (root / "weights").mkdir()
    for suffix in (".pt", ".json"):
        shutil.copy(ROOT / "weights" / f"fashion-1.0{suffix}", root / "weights")
    shutil.copy(ROOT / "docs" / report.DOCS["tune"], root / "docs")
    shutil.copy(ROOT / "config.properties", root)  # the CLI's --registry reads the project's own beside it
    (root / "models.toml").write_text('[models.fashion]\ndefault_version = "1.0"\n\n[models.fashion.versions."1.0"]\n'
                                      'model_def = "model_defs/fashion_mlp.py"\n'
                                      "serving = { workers = 1, threads = 1, batch_size = 4 }  # the user's\n")
    project = Project.at(root / "models.toml", model_store=root / "model_store", run_dir=root / "run",
                         config=ROOT / "config.properties", bench_results=root / "bench-results")
    archive.build(project.registry.get("fashion", "1.0"), project.model_store)
    return project


@pytest.mark.integration
def test_tune_measures_the_auto_settings_and_writes_them_where_the_registry_reads_them(tunable, monkeypatch, capsys):
    monkeypatch.setattr(tune, "WINDOWS_MS", (0, 3))
    for name, value in (("CONCURRENCIES", (1, 8)), ("SECONDS", 1.0), ("CONFIRM_ROUNDS", 1), ("CONFIRM_SECONDS", 1.0)):
        monkeypatch.setattr(tune, name, value)
    root = tunable.root
    assert main(["--registry", str(root / "models.toml"), "--json", "tune", "fashion", "1.0", "--model-store",
                 str(tunable.model_store), "--out", str(root / "bench-results")]) == 0
    chosen = json.loads(capsys.readouterr().out)["tuned"]["fashion-1.0"]
    assert {k: chosen[k] for k in ("cores", "workers", "threads", "batch_size")} == {"cores": CORES, "workers": 1,
                                                                                    "threads": 1, "batch_size": 4}
    assert chosen["max_batch_delay_ms"] in (0, 1, 3)  # the window: the only "auto" key, 1 the rule's
    text = (root / "models.toml").read_text()
    assert "# the user's" in text and re.search(r"^tuned = \{ (cpu|gpu) = \{ cores = ", text, re.M)
    mv = Project.at(root / "models.toml", device=tunable.device).registry.get("fashion", "1.0")
    assert mv.tuned == chosen and mv.serving["max_batch_delay_ms"] == chosen["max_batch_delay_ms"]
    results = json.loads(next((root / "bench-results").glob("tune-*/tune.json")).read_text())
    assert {r["max_batch_delay_ms"] for r in results["rows"]} == {0, 1, 3} and all(r["errors"] == 0 for r in results["rows"])
    if results["winner"] != results["start"]:  # confirmed against the rule, alternating
        assert set(results["ratios"]) == {"1", "8"} and [r["setting"] for r in results["confirm"]] == \
            [tune.RULE_NAME] * 2 + [tune.TUNED_NAME] * 2
        assert chosen == {"cores": CORES, **(results["winner"] if results["kept"] else results["start"])}
    else:
        assert results["confirm"] == [] and chosen["max_batch_delay_ms"] == 1
    doc = (root / "docs" / report.DOCS["tune"]).read_text()
    assert "<!-- generated: tune-fashion-1.0 -->" in doc and f"batches of up to 4 within {chosen['max_batch_delay_ms']} ms" in doc

    start_server(Project.at(root / "models.toml", model_store=tunable.model_store, run_dir=root / "run",
                                      config=ROOT / "config.properties"))
    try:  # one thread, not the share of the cores a lone worker would get (OMP_NUM_THREADS)
        assert re.search(r"model on \S+, 1 threads", RunDir(root / "run").log("model").read_text())
    finally:
        process.stop(RunDir(root / "run"))
