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

# The gate's p99 rule with a wide slack: on the 2-core CI machine a newly registered detector's or
# segmenter's p99 over the gate's 200 scenes measured 0.5-0.6 s against 0.07-0.11 s for the default
# (cause not found yet: issue 20's first-request work). These tests are about the mAP and mIoU checks.
P99_SLACK = "\n[rollout]\np99_slack_ms = 2000.0\n"

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
    (root / "models.toml").write_text((ROOT / "models.toml").read_text() + WORSE + P99_SLACK)
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


@pytest.fixture(scope="module")
def seg_server(store, registry, tmp_path_factory):
    """fashionseg with 2.0 the default and a candidate 1.9: fashionseg 1.0's weights (a lower mIoU)."""
    if "fashionseg" not in registry.models:
        pytest.skip("no fashionseg in the registry")
    root = tmp_path_factory.mktemp("seg_project")
    text = (ROOT / "models.toml").read_text()
    start = text.index("[models.fashionseg]")
    seg = text[start:].replace('default_version = "1.0"', 'default_version = "2.0"', 1)
    (root / "models.toml").write_text(text[:start] + seg + '\n[models.fashionseg.versions."1.9"]\n'
                                      'model_def = "model_defs/scene_segmenter.py"\n' + P99_SLACK)
    for folder in ("model_defs", "samples", "eval"):
        (root / folder).symlink_to(ROOT / folder)
    shutil.copytree(ROOT / "weights", root / "weights")
    for suffix in ("pt", "json"):
        shutil.copy(ROOT / "weights" / f"fashionseg-1.0.{suffix}", root / "weights" / f"fashionseg-1.9.{suffix}")
    model_store = tmp_path_factory.mktemp("seg_store")
    shutil.copy(store / "fashionseg-2.0.mar", model_store)
    project = Project.at(root / "models.toml", model_store=model_store, run_dir=tmp_path_factory.mktemp("seg_run"),
                         config=ROOT / "config.properties")
    started = launch.serve(project, versions=[project.registry.get("fashionseg", "2.0")], ports=process.free_listeners(),
                           timeout=240)
    yield project, started.client
    process.stop(RunDir(project.run_dir))


def test_a_segmenter_whose_miou_dropped_is_refused_by_the_gate_under_load(seg_server):
    from marforge.archiving import archive

    project, client = seg_server
    archive.build(project.registry.get("fashionseg", "1.9"), project.model_store)
    scene = sorted((ROOT / "samples" / "fashionseg").glob("*.png"))[0].read_bytes()
    with Background(f"{client.endpoints.inference}/predictions/fashionseg", scene, lambda: client.key("inference"),
                    clients=2) as load:
        load.wait_for(10)
        with pytest.raises(Rejected) as caught:
            rollout.rollout(client, project, "fashionseg", "1.9", watch_s=2.0, log=lambda line: None)
        load.wait_for(10)
    gate = caught.value.report.gate
    worse, current = gate["candidate"]["miou"], gate["default"]["miou"]
    assert current >= 0.6 and worse < current - 0.02
    assert caught.value.message == (f"fashionseg 1.9 rejected: mIoU {worse:.4f} is more than 0.02 below the current "
                                    f"default's {current:.4f}")
    assert load.failures() == [] and client.default_version("fashionseg") == "2.0"
