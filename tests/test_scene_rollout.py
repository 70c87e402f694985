"""A detector rolled out on a real TorchServe under client load: the gate scores each version's
answers on the labelled eval scenes with COCO mAP (marforge/tasks/detection.py, torchmetrics on
pycocotools), promotes a better one (fashiondet 1.0 -> 2.0) and rolls it back without a failed
request, and refuses a candidate whose mAP dropped.

The worse candidate is fashiondet 2.9: the 2.0 weights answered with `score_threshold` 0.97, so that
most true objects go unreported (a setting a user could ship by mistake). The server has its own run dir.
"""

import shutil

import pytest
from conftest import ROOT

from marforge.errors import Rejected
from marforge.measure.loadgen import Background
from marforge.project import Project
from marforge.serve import launch, process, rollout
from marforge.serve.rundir import RunDir

pytestmark = pytest.mark.integration

WORSE = '''
[models.fashiondet.versions."2.9"]
model_def = "model_defs/scene_detector.py"
handler = { score_threshold = 0.97 }
'''


@pytest.fixture(scope="module")
def server(store, registry, tmp_path_factory):
    if "fashiondet" not in registry.models:
        pytest.skip("no fashiondet in the registry")
    root = tmp_path_factory.mktemp("scene_project")
    (root / "models.toml").write_text((ROOT / "models.toml").read_text() + WORSE)
    for folder in ("model_defs", "samples", "eval"):
        (root / folder).symlink_to(ROOT / folder)
    shutil.copytree(ROOT / "weights", root / "weights")
    for suffix in ("pt", "json"):
        shutil.copy(ROOT / "weights" / f"fashiondet-2.0.{suffix}", root / "weights" / f"fashiondet-2.9.{suffix}")
    model_store = tmp_path_factory.mktemp("scene_store")
    for mar in store.glob("fashiondet-*.mar"):
        shutil.copy(mar, model_store)
    project = Project.at(root / "models.toml", model_store=model_store, run_dir=tmp_path_factory.mktemp("scene_run"),
                         config=ROOT / "config.properties")
    default = project.registry.get("fashiondet")
    started = launch.serve(project, versions=[default], ports=process.free_listeners(), timeout=240)
    yield project, started.client, default
    process.stop(RunDir(project.run_dir))


def under_load(client):
    scene = sorted((ROOT / "samples" / "fashiondet").glob("*.png"))[0].read_bytes()
    return Background(f"{client.endpoints.inference}/predictions/fashiondet", scene, lambda: client.key("inference"), clients=2)


def test_a_better_detector_is_promoted_and_rolled_back_under_load(server):
    project, client, default = server
    with under_load(client) as load:
        load.wait_for(10)
        report = rollout.rollout(client, project, "fashiondet", "2.0", watch_s=2.0, log=lambda line: None)
        load.wait_for(10)
        back = rollout.rollback(client, project, "fashiondet", log=lambda line: None)
        load.wait_for(10)
    gate = report.gate
    assert report.outcome == "promoted" and gate["candidate"]["map_50"] >= 0.7
    assert gate["candidate"]["map_50"] > gate["default"]["map_50"]
    assert [c["check"] for c in gate["checks"] if c["passed"]] == ["no failed request", "mAP@0.5 floor", "mAP@0.5 drop", "p99"]
    assert back.outcome == "rolled back" and client.default_version("fashiondet") == default.version == "1.0"
    assert load.failures() == []
    assert {v for versions in load.versions_by_client().values() for v in versions} == {"1.0", "2.0"}


def test_a_detector_whose_map_dropped_is_refused_by_the_gate_under_load(server):
    from marforge.archiving import archive

    project, client, default = server
    archive.build(project.registry.get("fashiondet", "2.9"), project.model_store)
    with under_load(client) as load:
        load.wait_for(10)
        with pytest.raises(Rejected) as caught:
            rollout.rollout(client, project, "fashiondet", "2.9", watch_s=2.0, log=lambda line: None)
        load.wait_for(10)
    gate = caught.value.report.gate
    worse, current = gate["candidate"]["map_50"], gate["default"]["map_50"]
    assert worse < current - 0.02
    assert caught.value.message == (f"fashiondet 2.9 rejected: mAP@0.5 {worse:.4f} is below the floor 0.7000; "
                                    f"mAP@0.5 {worse:.4f} is more than 0.02 below the current default's {current:.4f}")
    assert [c["check"] for c in gate["checks"]] == ["no failed request", "mAP@0.5 floor", "mAP@0.5 drop", "p99"]
    assert load.failures() == []
    assert client.default_version("fashiondet") == default.version and not client.is_registered("fashiondet", "2.9")
