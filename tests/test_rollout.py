"""Rollouts and rollbacks on a real TorchServe under continuous client load.

The server here has its own run dir, so promotions, retirements and restarts do not disturb the
session's shared server. Two bad candidates are added to a copy of the project: fashion 8.0 (an
archive whose weights are truncated: workers cannot load it) and fashion 9.0 (the 2.0 weights with
the output layer's rows shuffled: it loads, answers badly).

Every test starts from the same baseline, whatever ran before it and in whatever order: the server
running, fashion 1.0 the only registered version and the default, with its full workers, and a
run dir state that remembers no promotion (the `env` fixture restores it and checks it).
"""

import json
import os
import shutil
import signal
import time
import zipfile

import pytest
import torch
from conftest import ROOT

from marforge import files
from marforge.archiving import archive
from marforge.errors import ApiError, Rejected, RolledBack, ServerError
from marforge.measure.loadgen import Background
from marforge.project import Project
from marforge.serve import launch, process, rollout, state, status
from marforge.serve.rundir import RunDir

pytestmark = pytest.mark.integration

BAD_VERSIONS = '''
[models.fashion.versions."8.0"]
model_def = "model_defs/convnet.py"

[models.fashion.versions."9.0"]
model_def = "model_defs/convnet.py"
'''


@pytest.fixture(scope="module")
def bad_project(store, tmp_path_factory):
    """A copy of the project with fashion 8.0 and 9.0 added to models.toml, its own store and run dir."""
    root = tmp_path_factory.mktemp("project")
    (root / "models.toml").write_text((ROOT / "models.toml").read_text() + BAD_VERSIONS)
    for folder in ("model_defs", "samples", "eval"):
        (root / folder).symlink_to(ROOT / folder)
    shutil.copytree(ROOT / "weights", root / "weights")
    source = torch.load(ROOT / "weights" / "fashion-2.0.pt", weights_only=True)
    shuffled = dict(source, **{"fc2.weight": source["fc2.weight"][torch.randperm(10, generator=torch.Generator().manual_seed(1))]})
    metadata = json.loads((ROOT / "weights" / "fashion-2.0.json").read_text())
    for version, state_dict in (("8.0", source), ("9.0", shuffled)):
        weights_file = root / "weights" / f"fashion-{version}.pt"
        torch.save(state_dict, weights_file)
        (root / "weights" / f"fashion-{version}.json").write_text(
            json.dumps({**metadata, "version": version, "sha256": files.sha256(weights_file)}))
    model_store = tmp_path_factory.mktemp("rollout_store")
    for mar in store.glob("*.mar"):
        shutil.copy(mar, model_store)
    project = Project.at(root / "models.toml", model_store=model_store, run_dir=tmp_path_factory.mktemp("rollout_run"),
                         config=ROOT / "config.properties")
    for version in ("8.0", "9.0"):
        archive.build(project.registry.get("fashion", version), model_store)
    corrupt(model_store / "fashion-8.0.mar", "fashion-8.0.pt")
    return project


def corrupt(mar, member):
    """Truncate one member of an archive in place (the weights: the worker's load_state_dict fails)."""
    with zipfile.ZipFile(mar) as src:
        items = [(i, src.read(i.filename)) for i in src.infolist()]
    with zipfile.ZipFile(mar, "w") as out:
        for item, data in items:
            out.writestr(item, data[:2000] if item.filename == member else data)


@pytest.fixture(scope="module")
def running(bad_project):
    """{"project", "ports", "server"}: the module's server (a test may restart it; `env` follows)."""
    ports = process.free_listeners()
    started = launch.serve(bad_project, versions=[bad_project.registry.get("fashion", "1.0")], ports=ports, timeout=240)
    holder = {"project": bad_project, "ports": ports, "server": started}
    yield holder
    process.stop(RunDir(bad_project.run_dir))


def restart(env, versions):
    """Start the module's server again (same ports and run dir) with these fashion versions."""
    project = env["project"]
    env["server"] = launch.serve(project, versions=[project.registry.get("fashion", v) for v in versions],
                                 ports=env["ports"], timeout=240)
    return env["server"].client


@pytest.fixture
def env(running):
    """The baseline, restored before each test: server up, fashion 1.0 alone and the default, no promotion remembered."""
    project, run_dir = running["project"], RunDir(running["project"].run_dir)
    if not running["server"].alive():
        process.stop(run_dir)
        state.save(run_dir, {})
        restart(running, ["1.0"])
    client = running["server"].client
    baseline = project.registry.get("fashion", "1.0")
    if not client.is_registered("fashion", "1.0"):
        rollout.register_candidate(client, baseline, project.model_store, run_dir, 120)
    client.set_default("fashion", "1.0")
    for description in client.describe("fashion"):
        if description["modelVersion"] != "1.0":
            client.unregister("fashion", description["modelVersion"])
    client.scale("fashion", "1.0", workers=baseline.serving["workers"])
    client.wait_ready([("fashion", "1.0")], timeout=120)
    saved = state.load(run_dir)
    state.save(run_dir, {"archives": {k: v for k, v in saved["archives"].items() if not k.startswith("fashion-")}
                         | {"fashion-1.0": files.sha256(baseline.archive_path(project.model_store))}})
    assert [d["modelVersion"] for d in client.describe("fashion")] == ["1.0"]
    assert client.default_version("fashion") == "1.0"
    assert state.load(run_dir)["history"] == {} and state.load(run_dir)["retired"] == {}
    return running


def load_on(env, model="fashion"):
    client = env["server"].client
    sample = sorted((ROOT / "samples" / model).glob("*.png"))[0].read_bytes()
    return Background(f"{client.endpoints.inference}/predictions/{model}", sample, lambda: client.key("inference"))


def do_rollout(env, version, **kwargs):
    return rollout.rollout(env["server"].client, env["project"], "fashion", version,
                           watch_s=kwargs.pop("watch_s", 3.0), log=lambda line: None, **kwargs)


def do_rollback(env):
    return rollout.rollback(env["server"].client, env["project"], "fashion", log=lambda line: None)


def registered(env, version):
    return env["server"].client.is_registered("fashion", version)


def test_roll_forward_and_back_under_load_drops_nothing(env):
    client = env["server"].client
    with load_on(env) as load:
        load.wait_for(20)
        report = do_rollout(env, "2.0")
        load.wait_for(20)
        back = do_rollback(env)
        load.wait_for(20)
    assert report.outcome == "promoted" and [s["step"] for s in report.steps] == [
        "preflight", "register", "gate", "promote", "watch", "retire"]
    assert all(s["ok"] for s in report.steps)
    assert report.steps[-1]["detail"] == "1.0 kept registered with 1 worker for instant rollback"
    assert report.gate["candidate"]["accuracy"] >= report.gate["default"]["accuracy"] - 0.02
    assert back.outcome == "rolled back" and back.headline() == "fashion: rolled back from 2.0 to 1.0"
    assert client.default_version("fashion") == "1.0"
    assert load.failures() == []
    assert set(map(tuple, load.versions_by_client().values())) == {("1.0", "2.0", "1.0")}
    assert registered(env, "2.0")  # kept for instant rollback
    assert state.load(RunDir(env["project"].run_dir))["history"]["fashion"] == ["1.0"]


def test_a_candidate_whose_workers_cannot_load_is_rejected(env):
    client = env["server"].client
    mar = env["project"].model_store / "fashion-8.0.mar"
    with load_on(env) as load:
        load.wait_for(10)
        with pytest.raises(Rejected) as rejected:
            do_rollout(env, "8.0")
        # The same archive registered without the preflight: workers fail, nothing stays registered.
        with pytest.raises(Rejected, match="could not start its workers") as caught:
            rollout.register_candidate(client, env["project"].registry.get("fashion", "8.0"),
                                       env["project"].model_store, RunDir(env["project"].run_dir), 120)
        load.wait_for(10)
    assert rejected.value.message.startswith(f"{mar} fails verification: {mar}: a worker cannot load this archive: ")
    assert rejected.value.report.steps == [{"step": "preflight", "seconds": rejected.value.report.steps[0]["seconds"],
                                            "ok": False, "detail": rejected.value.message.splitlines()[0]}]
    assert f"--- tail of {RunDir(env['project'].run_dir).log('model')} ---" in caught.value.message
    assert caught.value.hint == "fix the archive, rebuild it (make archive) and roll out again"
    assert not registered(env, "8.0")
    assert client.default_version("fashion") == "1.0"
    assert load.failures() == [] and set(map(tuple, load.versions_by_client().values())) == {("1.0",)}


def test_a_candidate_that_answers_badly_fails_the_gate(env):
    client = env["server"].client
    with load_on(env) as load:
        load.wait_for(10)
        with pytest.raises(Rejected) as caught:
            do_rollout(env, "9.0")
        load.wait_for(10)
    gate_result = caught.value.report.gate
    accuracy = gate_result["candidate"]["accuracy"]
    assert caught.value.message == (f"fashion 9.0 rejected: accuracy {accuracy:.4f} is below the floor 0.8500; "
                                    f"accuracy {accuracy:.4f} is more than 0.02 below the current default's "
                                    f"{gate_result['default']['accuracy']:.4f}")
    assert caught.value.report.outcome == "rejected" and accuracy < 0.5
    assert caught.value.exit_code == 3
    assert not registered(env, "9.0") and client.default_version("fashion") == "1.0"
    assert load.failures() == [] and set(map(tuple, load.versions_by_client().values())) == {("1.0",)}


def test_retire_under_load_drops_nothing_and_rollback_brings_it_back(env):
    client = env["server"].client
    run_dir = RunDir(env["project"].run_dir)
    with load_on(env) as load:
        load.wait_for(10)
        report = do_rollout(env, "2.0", retire=True)
        load.wait_for(20)
    assert report.outcome == "promoted" and report.steps[-1]["detail"] == "1.0 drained and unregistered"
    assert not registered(env, "1.0")
    assert load.failures() == []
    assert set(map(tuple, load.versions_by_client().values())) == {("1.0", "2.0")}
    assert state.load(run_dir)["retired"]["fashion"] == ["1.0"]
    back = do_rollback(env)
    assert back.outcome == "rolled back" and registered(env, "1.0")
    assert back.steps[0]["detail"] == "1.0 registered again (it was retired)"
    assert client.default_version("fashion") == "1.0"
    assert "1.0" not in state.load(run_dir)["retired"].get("fashion", [])


def test_a_promoted_candidate_that_fails_the_watch_is_rolled_back(env):
    """2.0 passes the gate; from the moment it is the default until the rollout returns, each of its
    workers is killed as soon as it is READY, so it keeps failing: the watch must see it, and the
    old default must be back at once, on the server and in the state."""
    import threading

    client = env["server"].client
    done = threading.Event()
    killed = []

    def keep_killing_once_promoted():
        own = RunDir(env["project"].run_dir).client()  # a session of its own: requests' are not thread-safe
        while not done.wait(0.02):
            try:
                if own.default_version("fashion") != "2.0":
                    continue
                [description] = own.describe("fashion", "2.0")
                for worker in description["workers"]:
                    if worker["status"] == "READY" and worker["pid"] not in killed:
                        os.kill(worker["pid"], signal.SIGKILL)
                        killed.append(worker["pid"])
            except (ServerError, ProcessLookupError):  # mid-restart: the next round sees the new state
                continue

    killer = threading.Thread(target=keep_killing_once_promoted, daemon=True)
    killer.start()
    try:
        with pytest.raises(RolledBack) as caught:
            do_rollout(env, "2.0", watch_s=5.0)
    finally:
        done.set()
        killer.join(10)
    assert killed, "the killer never saw 2.0 promoted"
    assert caught.value.message.startswith("fashion 2.0 failed the watch and 1.0 is the default again: ")
    assert "not READY" in caught.value.message or "request failed" in caught.value.message
    assert caught.value.exit_code == 4 and caught.value.report.outcome == "rolled back"
    assert [s["step"] for s in caught.value.report.steps][-1] == "watch"
    assert client.default_version("fashion") == "1.0"
    saved = state.load(RunDir(env["project"].run_dir))
    assert saved["defaults"]["fashion"] == "1.0" and saved["history"]["fashion"] == ["1.0"]


def test_a_rollback_with_no_earlier_version_says_so(env):
    with pytest.raises(Rejected) as caught:
        do_rollback(env)
    assert caught.value.message == "no earlier version of fashion to roll back to (history: empty, default 1.0)"
    assert caught.value.hint == "marforge status"


def test_status_reports_a_version_whose_workers_cannot_load(env):
    client = env["server"].client
    client.register("fashion-8.0.mar", workers=1, synchronous=False)  # by hand, skipping marforge's checks
    try:
        time.sleep(3)  # its workers start, fail to load the weights, and are retried
        assert client.ping()["status"] == "Healthy"  # TorchServe's own health check sees nothing wrong
        rows = {r["version"]: r for r in status.collect(client) if r["model"] == "fashion"}
        assert rows["8.0"]["ready"] is False and rows["1.0"]["ready"] is True
        assert "NO" in status.format_table(list(rows.values()))
    finally:
        client.unregister("fashion", "8.0")


def test_a_restart_keeps_the_promoted_default(env):
    do_rollout(env, "2.0")
    assert env["server"].client.default_version("fashion") == "2.0"
    process.stop(RunDir(env["project"].run_dir))
    client = restart(env, ["1.0", "2.0"])
    assert client.default_version("fashion") == "2.0"
    sample = sorted((ROOT / "samples" / "fashion").glob("*.png"))[0].read_bytes()
    assert client.predict("fashion", sample)["version"] == "2.0"
    with pytest.raises(ApiError):
        client.describe("fashion", "9.0")


def test_a_killed_server_comes_back_with_everything(env):
    do_rollout(env, "2.0")
    archives = {p.name: files.sha256(p) for p in env["project"].model_store.glob("*.mar")}
    os.kill(env["server"].pid, signal.SIGKILL)
    deadline = time.monotonic() + 30
    while process.pid_alive(env["server"].pid):
        assert time.monotonic() < deadline
        time.sleep(0.1)
    client = restart(env, ["1.0", "2.0"])
    assert client.default_version("fashion") == "2.0"
    assert all(r["ready"] for r in status.collect(client))
    assert {p.name: files.sha256(p) for p in env["project"].model_store.glob("*.mar")} == archives
