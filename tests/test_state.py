"""What a run dir remembers across restarts (serve/state.py): promotions, rollbacks, retirements."""

import json

from marforge.serve import state
from marforge.serve.rundir import RunDir


def test_a_new_run_dir_remembers_nothing(tmp_path):
    assert state.load(RunDir(tmp_path)) == {"defaults": {}, "history": {}, "retired": {}, "archives": {}}


def test_promotions_build_the_rollback_history_and_rollbacks_walk_it_back(tmp_path):
    run_dir = RunDir(tmp_path)
    state.record_promotion(run_dir, "fashion", "1.0", "2.0")
    state.record_promotion(run_dir, "fashion", "2.0", "3.0")
    assert state.load(run_dir)["history"] == {"fashion": ["1.0", "2.0", "3.0"]}
    assert state.load(run_dir)["defaults"] == {"fashion": "3.0"}
    state.restore_default(run_dir, "fashion", "2.0")
    saved = state.load(run_dir)
    assert saved["history"] == {"fashion": ["1.0", "2.0"]} and saved["defaults"] == {"fashion": "2.0"}
    state.restore_default(run_dir, "fashion", "2.0")  # already the last entry: nothing is dropped
    assert state.load(run_dir)["history"] == {"fashion": ["1.0", "2.0"]}


def test_a_retired_version_that_is_promoted_or_restored_is_no_longer_retired(tmp_path):
    run_dir = RunDir(tmp_path)
    state.record_promotion(run_dir, "fashion", "1.0", "2.0")
    state.record_retired(run_dir, "fashion", "1.0")
    state.record_retired(run_dir, "fashion", "1.0")  # once only
    assert state.load(run_dir)["retired"] == {"fashion": ["1.0"]}
    state.restore_default(run_dir, "fashion", "1.0")
    assert state.load(run_dir)["retired"] == {"fashion": []}
    state.record_retired(run_dir, "fashion", "2.0")
    state.record_promotion(run_dir, "fashion", "1.0", "2.0")
    assert state.load(run_dir)["retired"] == {"fashion": []}


def test_models_are_kept_apart_and_archives_recorded(tmp_path):
    run_dir = RunDir(tmp_path)
    state.record_promotion(run_dir, "fashion", "1.0", "2.0")
    state.record_promotion(run_dir, "digits", "1.0", "1.1")
    state.record_archive(run_dir, "fashion-2.0", "abc")
    saved = state.load(run_dir)
    assert saved["defaults"] == {"fashion": "2.0", "digits": "1.1"}
    assert saved["history"] == {"fashion": ["1.0", "2.0"], "digits": ["1.0", "1.1"]}
    assert saved["archives"] == {"fashion-2.0": "abc"}


def test_state_is_written_whole_or_not_at_all(tmp_path):
    run_dir = RunDir(tmp_path)
    state.record_promotion(run_dir, "fashion", "1.0", "2.0")
    assert not list(tmp_path.glob("*.partial"))  # the temporary file was renamed into place
    assert json.loads(run_dir.state_file.read_text())["defaults"] == {"fashion": "2.0"}
    (tmp_path / "state.json.partial").write_text("{half a fi")  # what a crash mid-write leaves
    assert state.load(run_dir)["defaults"] == {"fashion": "2.0"}


def _promote_many(run_dir_path, name, count):
    run_dir = RunDir(run_dir_path)
    for i in range(count):
        state.record_promotion(run_dir, name, f"{i}.0", f"{i + 1}.0")
        state.record_archive(run_dir, f"{name}-{i + 1}.0", str(i))


def test_two_processes_updating_two_models_at_once_lose_nothing(tmp_path):
    import multiprocessing

    count = 60
    ctx = multiprocessing.get_context("fork")
    workers = [ctx.Process(target=_promote_many, args=(tmp_path, name, count)) for name in ("fashion", "digits")]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(60)
        assert worker.exitcode == 0
    saved = state.load(RunDir(tmp_path))
    assert saved["defaults"] == {"fashion": f"{count}.0", "digits": f"{count}.0"}
    for name in ("fashion", "digits"):
        assert saved["history"][name] == [f"{i}.0" for i in range(count + 1)]
        assert all(saved["archives"][f"{name}-{i + 1}.0"] == str(i) for i in range(count))
