"""Rollouts and rollbacks on a real TorchServe under continuous client load.

The server here starts with fashion 1.0 only and its own run dir, so promotions, retirements and
restarts do not disturb the session's shared server. Two bad candidates are added to a copy of the
registry: fashion 8.0 (an archive whose weights are truncated: workers cannot load it) and
fashion 9.0 (the 2.0 weights with the output layer's rows shuffled: it loads, answers badly).
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
from loadgen import Load
from marforge import archive, registry as registry_module, rollout, server, state, status, weights
from marforge.errors import ApiError

pytestmark = pytest.mark.integration

BAD_VERSIONS = '''
[models.fashion.versions."8.0"]
model_def = "model_defs/convnet.py"

[models.fashion.versions."9.0"]
model_def = "model_defs/convnet.py"
'''


@pytest.fixture(scope="module")
def bad_registry(tmp_path_factory):
    """A copy of the project with fashion 8.0 and 9.0 added to models.toml."""
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
            json.dumps({**metadata, "version": version, "sha256": weights.sha256_of(weights_file)}))
    return registry_module.load(root / "models.toml")


@pytest.fixture(scope="module")
def rollout_store(bad_registry, store, tmp_path_factory):
    path = tmp_path_factory.mktemp("rollout_store")
    for mar in store.glob("*.mar"):
        shutil.copy(mar, path)
    for version in ("8.0", "9.0"):
        archive.build(bad_registry.get("fashion", version), path)
    corrupt(path / "fashion-8.0.mar", "fashion-8.0.pt")
    return path


def corrupt(mar, member):
    """Truncate one member of an archive in place (the weights: the worker's load_state_dict fails)."""
    with zipfile.ZipFile(mar) as src:
        items = [(i, src.read(i.filename)) for i in src.infolist()]
    with zipfile.ZipFile(mar, "w") as out:
        for item, data in items:
            out.writestr(item, data[:2000] if item.filename == member else data)


@pytest.fixture(scope="module")
def env(bad_registry, rollout_store, tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("rollout_run")
    names = ("inference", "management", "metrics", "grpc_inference", "grpc_management")
    ports = dict(zip(names, server.free_ports(len(names))))
    started = server.serve(bad_registry, rollout_store, run_dir, ROOT / "config.properties", ports=ports,
                           versions=[bad_registry.get("fashion", "1.0")], timeout=240)
    env = {"registry": bad_registry, "store": rollout_store, "run_dir": run_dir, "ports": ports, "server": started}
    yield env
    server.stop(env["run_dir"])


def load_on(env, model="fashion"):
    client = env["server"].client
    sample = sorted((ROOT / "samples" / model).glob("*.png"))[0].read_bytes()
    return Load(f"{client.endpoints.inference}/predictions/{model}", sample, lambda: client.key("inference"))


def do_rollout(env, version, **kwargs):
    return rollout.rollout(env["server"].client, env["registry"], env["store"], env["run_dir"], "fashion", version,
                           watch_s=kwargs.pop("watch_s", 3.0), log=lambda line: None, **kwargs)


def do_rollback(env):
    return rollout.rollback(env["server"].client, env["registry"], env["store"], env["run_dir"], "fashion",
                            log=lambda line: None)


def registered(env, version):
    return rollout.is_registered(env["server"].client, "fashion", version)


def test_1_roll_forward_and_back_under_load_drops_nothing(env):
    client = env["server"].client
    assert client.default_version("fashion") == "1.0" and not registered(env, "2.0")
    with load_on(env) as load:
        load.wait_for(20)
        report = do_rollout(env, "2.0")
        load.wait_for(20)
        back = do_rollback(env)
        load.wait_for(20)
    assert report.outcome == "promoted" and [s["step"] for s in report.steps] == [
        "preflight", "register", "gate", "promote", "watch", "retire"]
    assert report.gate["candidate"]["accuracy"] >= report.gate["default"]["accuracy"] - 0.02
    assert back.outcome == "rolled back" and client.default_version("fashion") == "1.0"
    assert load.failures() == []
    assert set(map(tuple, load.versions_by_client().values())) == {("1.0", "2.0", "1.0")}
    assert registered(env, "2.0")  # kept for instant rollback


def test_2_a_candidate_whose_workers_cannot_load_is_rejected(env):
    client = env["server"].client
    with load_on(env) as load:
        load.wait_for(10)
        with pytest.raises(rollout.Rejected, match="fails verification"):
            do_rollout(env, "8.0")
        # The same archive registered without the preflight: workers fail, nothing stays registered.
        with pytest.raises(rollout.Rejected, match="could not start its workers") as caught:
            rollout.register_candidate(client, env["registry"].get("fashion", "8.0"), env["store"], env["run_dir"], 120)
        load.wait_for(10)
    assert "model_log.log" in caught.value.message
    assert not registered(env, "8.0")
    assert client.default_version("fashion") == "1.0"
    assert load.failures() == [] and set(map(tuple, load.versions_by_client().values())) == {("1.0",)}


def test_3_a_candidate_that_answers_badly_fails_the_gate(env):
    client = env["server"].client
    with load_on(env) as load:
        load.wait_for(10)
        with pytest.raises(rollout.Rejected, match="accuracy .* below") as caught:
            do_rollout(env, "9.0")
        load.wait_for(10)
    assert caught.value.report.outcome == "rejected"
    assert caught.value.report.gate["candidate"]["accuracy"] < 0.5
    assert caught.value.exit_code == 3
    assert not registered(env, "9.0") and client.default_version("fashion") == "1.0"
    assert load.failures() == [] and set(map(tuple, load.versions_by_client().values())) == {("1.0",)}


def test_4_retire_under_load_drops_nothing_and_rollback_brings_it_back(env):
    client = env["server"].client
    with load_on(env) as load:
        load.wait_for(10)
        report = do_rollout(env, "2.0", retire=True)
        load.wait_for(20)
    assert report.outcome == "promoted" and "unregistered" in report.steps[-1]["detail"]
    assert not registered(env, "1.0")
    assert load.failures() == []
    assert set(map(tuple, load.versions_by_client().values())) == {("1.0", "2.0")}
    assert state.load(env["run_dir"])["retired"]["fashion"] == ["1.0"]
    back = do_rollback(env)
    assert back.outcome == "rolled back" and registered(env, "1.0")
    assert client.default_version("fashion") == "1.0"
    assert "1.0" not in state.load(env["run_dir"])["retired"].get("fashion", [])


def test_5_status_reports_a_version_whose_workers_cannot_load(env):
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


def test_6_a_restart_keeps_the_promoted_default(env):
    do_rollout(env, "2.0")
    assert env["server"].client.default_version("fashion") == "2.0"
    server.stop(env["run_dir"])
    env["server"] = server.serve(env["registry"], env["store"], env["run_dir"], ROOT / "config.properties",
                                 ports=env["ports"], timeout=240,
                                 versions=[env["registry"].get("fashion", v) for v in ("1.0", "2.0")])
    client = env["server"].client
    assert client.default_version("fashion") == "2.0"
    sample = sorted((ROOT / "samples" / "fashion").glob("*.png"))[0].read_bytes()
    assert client.predict("fashion", sample)["version"] == "2.0"
    with pytest.raises(ApiError):
        client.describe("fashion", "9.0")


def test_7_a_killed_server_comes_back_with_everything(env):
    archives = {p.name: weights.sha256_of(p) for p in env["store"].glob("*.mar")}
    os.kill(env["server"].pid, signal.SIGKILL)
    deadline = time.monotonic() + 30
    while server.pid_alive(env["server"].pid):
        assert time.monotonic() < deadline
        time.sleep(0.1)
    env["server"] = server.serve(env["registry"], env["store"], env["run_dir"], ROOT / "config.properties",
                                 ports=env["ports"], timeout=240,
                                 versions=[env["registry"].get("fashion", v) for v in ("1.0", "2.0")])
    client = env["server"].client
    assert client.default_version("fashion") == "2.0"
    assert all(r["ready"] for r in status.collect(client))
    assert {p.name: weights.sha256_of(p) for p in env["store"].glob("*.mar")} == archives
