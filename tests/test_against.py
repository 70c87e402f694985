"""`bench --against REV` (marforge/measure/against.py): the verdict's arithmetic, the report, the
refusals, and one real A/A run: this checkout against its own HEAD, each side a real TorchServe, the
baseline's built and served by HEAD's code from a git worktree. What the figures are is
`make bench-against`'s (docs/performance.md), not a test's."""

import subprocess

import pytest
from conftest import ROOT

from marforge.errors import MarforgeError
from marforge.measure import against
from marforge.measure.against import NOISE_FLOOR, NOW, THEN
from marforge.project import Project

MACHINE = {"cpus": 2, "cpu_model": "Test CPU", "gpu": None, "torch": "2.x", "commit": "abc1234", "date": "today"}


def row(side, round_, concurrency, throughput, p99=10.0):
    return {"row": side, "round": round_, "concurrency": concurrency, "throughput": throughput, "p50_ms": 5.0,
            "p99_ms": p99, "errors": 0}


ROWS = [row(NOW, 1, 16, 100.0), row(THEN, 1, 16, 100.0), row(THEN, 2, 16, 100.0), row(NOW, 2, 16, 120.0),
        row(NOW, 1, 64, 80.0, 16.0), row(THEN, 1, 64, 100.0), row(THEN, 2, 64, 101.0), row(NOW, 2, 64, 80.0, 16.0),
        row(NOW, 1, 128, 120.0, 8.0), row(THEN, 1, 128, 100.0)]


def test_a_ratio_inside_the_rounds_spread_is_noise_and_beyond_it_a_change_for_the_better_or_worse():
    verdicts = against.verdicts(ROWS)
    assert verdicts[16, "req/s"] == {"ratio": 1.1, "noise": 0.2, "verdict": "within noise"}  # this side's rounds: 100, 120
    assert verdicts[64, "req/s"] == {"ratio": 0.796, "noise": NOISE_FLOOR["throughput"], "verdict": "worse: a regression"}
    assert verdicts[128, "req/s"]["verdict"] == "better"
    assert verdicts[16, "p99"] == {"ratio": 1.0, "noise": NOISE_FLOOR["p99_ms"], "verdict": "within noise"}
    assert verdicts[64, "p99"]["verdict"] == "worse: a regression" and verdicts[128, "p99"]["verdict"] == "better"
    assert against.verdicts([row(NOW, 1, 16, 100.0)])[16, "req/s"]["verdict"] == "not measured"


def test_the_report_names_the_baseline_and_gives_a_verdict_per_concurrency_and_measure():
    results = {"model": "fashion-2.0", "seconds": 8.0, "machine": MACHINE, "rounds": 2, "rows": ROWS[:8],
               "against": {"rev": "HEAD~3", "commit": "1234567", "subject": "a change"}}
    table = against.markdown(results)
    assert table.startswith('`bench --against HEAD~3`: fashion-2.0, this checkout against commit 1234567 ("a change") '
                            "as the baseline, 2 alternating rounds, 8 s per point. 2 CPUs (Test CPU)")
    assert "| this checkout / the baseline | at 16 | at 64 |\n| --- | ---: | ---: |\n| req/s | 1.10 | 0.80 |" in table
    assert table.endswith("| 16 | req/s | 1.1 | 0.2 | within noise |\n| 16 | p99 | 1.0 | 0.1 | within noise |\n"
                          "| 64 | req/s | 0.796 | 0.05 | worse: a regression |\n| 64 | p99 | 1.6 | 0.1 | worse: a regression |\n")


def test_a_name_that_is_no_commit_or_a_folder_outside_git_is_the_users_mistake(tmp_path):
    project = Project.at(ROOT / "models.toml")
    with pytest.raises(MarforgeError) as caught, against.worktree(project, "no-such-commit"):
        pass
    assert caught.value.message == f"--against no-such-commit: not a commit of {ROOT}" and "git log" in caught.value.hint
    (tmp_path / "models.toml").write_text("")
    with pytest.raises(MarforgeError, match="is not a git checkout"), against.worktree(Project.at(tmp_path / "models.toml"),
                                                                                       "HEAD"):
        pass


@pytest.mark.integration
@pytest.mark.skipif(not (ROOT / ".git").exists(), reason="needs a git checkout of marforge (--against reads a commit)")
def test_an_a_a_run_serves_both_sides_in_alternating_rounds_and_leaves_no_worktree(store):
    project = Project.at(ROOT / "models.toml", model_store=store)
    lines = []
    results = against.against(project, project.registry.get("fashion", "2.0"), "HEAD", rounds=2, concurrencies=(4,),
                              seconds=1.0, log=lines.append)
    assert [(r["row"], r["round"]) for r in results["rows"]] == [(NOW, 1), (THEN, 1), (THEN, 2), (NOW, 2)]
    assert all(r["errors"] == 0 and r["throughput"] > 0 for r in results["rows"]), results["rows"]
    head = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True, text=True).stdout
    assert results["against"]["commit"] == head[:7] and lines[0] == f"building fashion-2.0 as {head[:7]} builds it"
    listed = subprocess.run(["git", "-C", str(ROOT), "worktree", "list"], capture_output=True, text=True).stdout
    assert "marforge-against-" not in listed
