"""A version served by the user's own handler: the debsections text example (handlers/debsections_handler.py,
a BaseHandler subclass with its vocabulary as an extra file, which imports nothing of marforge).

Archived as it is written, verified against the expected answers recorded for its samples
(samples/debsections/expected-<version>.json), refused clearly when it is broken (a missing extra file,
an unmet requirement, answers that drifted, a format or protocol it cannot have), served by a real
TorchServe, and rolled out 1.0 -> 2.0 and back under load with no failed request, the gate judging the
answers' `section` field. Each test works in a copy of the project, so nothing of the repository changes.
"""

import json
import re
import shutil
import zipfile

import pytest
import yaml
from conftest import ROOT

from marforge.archiving import archive, expected
from marforge.errors import ArchiveError, RegistryError
from marforge.project import Project

NAME = "debsections"


def own_registry_text():
    """The repository's debsections tables (the last model of models.toml), alone."""
    text = (ROOT / "models.toml").read_text()
    return text[text.index(f"[models.{NAME}]"):]


def copy_project(root, extra=""):
    """A project in `root` with debsections only; its weights and samples copied (tests edit them)."""
    (root / "models.toml").write_text(own_registry_text() + extra)
    for folder in ("model_defs", "handlers", "eval"):
        (root / folder).symlink_to(ROOT / folder)
    (root / "weights").mkdir()
    for path in ROOT.joinpath("weights").glob(f"{NAME}-*"):
        shutil.copy(path, root / "weights")
    shutil.copytree(ROOT / "samples" / NAME, root / "samples" / NAME)
    return Project.at(root / "models.toml", model_store=root / "model_store", run_dir=root / ".run",
                      config=ROOT / "config.properties")


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """debsections 1.0 and 2.0 archived (and verified) in a copy of the project."""
    project = copy_project(tmp_path_factory.mktemp("own_project"))
    return project, {v: archive.build(project.registry.get(NAME, v), project.model_store) for v in ("1.0", "2.0")}


def test_the_archive_holds_the_handler_as_written_with_its_vocabulary_and_no_marforge_code(built):
    project, archives = built
    path, _ = archives["1.0"]
    with zipfile.ZipFile(path) as mar:
        names = set(mar.namelist())
        handler = mar.read("debsections_handler.py")
        manifest = json.loads(mar.read("MAR-INF/MANIFEST.json"))["model"]
        config = yaml.safe_load(mar.read("model-config.yaml"))
    assert handler == (ROOT / "handlers" / "debsections_handler.py").read_bytes()
    assert names == {"MAR-INF/MANIFEST.json", "debsections_handler.py", "debsections.py", "debsections-1.0.pt",
                     "debsections-1.0.vocab.json", "model-config.yaml"}
    assert (manifest["handler"], manifest["modelFile"], manifest["serializedFile"]) == (
        "debsections_handler.py", "debsections.py", "debsections-1.0.pt")
    assert config == {"marforge": {"format": "eager", "own_handler": "debsections_handler.py",
                                   "answers": {"tolerance": 1e-5, "decision": "section"}}}


def test_verification_reproduces_the_expected_answers_and_scores_the_decision(built):
    project, archives = built
    for version, (_, verification) in archives.items():
        metadata = json.loads((ROOT / "weights" / f"{NAME}-{version}.json").read_text())
        assert verification.images == 6 and verification.agreement == 1.0
        assert round(verification.quality["accuracy"], 6) == metadata["metrics"]["eval_accuracy"]
        assert verification.notes[0] == "6 sample(s) answered as expected (numbers within 1e-05)"
        labels = json.loads((ROOT / "samples" / NAME / "labels.json").read_text())
        decided = {s["sample"]: s["section"] for s in verification.samples}
        assert sum(decided[name] == label for name, label in labels.items()) >= 5


def test_expect_records_what_the_committed_expected_answers_hold(tmp_path):
    project = copy_project(tmp_path)
    mv = project.registry.get(NAME, "2.0")
    committed = expected.expected_file(mv.samples, "2.0").read_text()
    expected.expected_file(mv.samples, "2.0").unlink()
    path, recorded = archive.record_answers(mv)
    written = json.loads(path.read_text())
    assert path == expected.expected_file(mv.samples, "2.0")
    assert written == recorded and path.read_text() == json.dumps(recorded, indent=2, sort_keys=True) + "\n"
    # the committed answers within the version's tolerance: another CPU rounds the last float bits otherwise
    expected.check(json.loads(committed), written, expected.comparison_of(mv), source=path)
    assert set(recorded) == set(json.loads((ROOT / "samples" / NAME / "labels.json").read_text()))


def test_answers_that_drifted_are_refused_naming_the_sample_the_field_and_both_values(tmp_path):
    project = copy_project(tmp_path)
    mv = project.registry.get(NAME, "1.0")
    file = expected.expected_file(mv.samples, "1.0")
    answers = json.loads(file.read_text())
    was = answers["axfrdns.txt"]["probability"]
    answers["axfrdns.txt"]["probability"] = was + 0.001
    file.write_text(json.dumps(answers))
    with pytest.raises(ArchiveError) as caught:
        archive.build(mv, project.model_store)
    message = caught.value.message
    assert message.startswith(f"1 mismatch(es) in 1 sample(s) with the expected answers in {file}:\n")
    shown = re.search(f"sample axfrdns.txt: field probability: expected {re.escape(repr(was + 0.001))}, got ([0-9.e-]+) ", message)
    assert shown and abs(float(shown[1]) - was) <= 1e-5, message  # what this CPU computes: `was` up to rounding
    assert message.endswith(" > tolerance 1.0e-05)")
    assert caught.value.hint.endswith(f"python -m marforge expect {NAME} 1.0")
    assert not mv.archive_path(project.model_store).exists()


def test_a_missing_extra_file_is_refused_before_archiving(tmp_path):
    project = copy_project(tmp_path)
    (project.root / "weights" / f"{NAME}-1.0.vocab.json").unlink()
    mv = project.registry.get(NAME, "1.0")
    with pytest.raises(ArchiveError) as caught:
        archive.build(mv, project.model_store)
    assert caught.value.message == (f"{NAME}-1.0: extra_files {project.root}/weights/{NAME}-1.0.vocab.json does not exist: "
                                    "the archive would be built without it and the first request would fail")


def test_an_unmet_requirement_is_refused_naming_it(tmp_path):
    (tmp_path / "handlers-requirements.txt").write_text("requests\nmarforge-no-such-package>=1.0\n")
    text = own_registry_text().replace('extra_files = ["weights/debsections-1.0.vocab.json"]',
                                       'extra_files = ["weights/debsections-1.0.vocab.json"]\n'
                                       'requirements = "handlers-requirements.txt"', 1)
    project = copy_project(tmp_path)
    (tmp_path / "models.toml").write_text(text)
    mv = Project.at(tmp_path / "models.toml").registry.get(NAME, "1.0")
    with pytest.raises(ArchiveError) as caught:
        archive.build(mv, project.model_store)
    assert caught.value.message == (f"{NAME}-1.0: requirements in {tmp_path}/handlers-requirements.txt are not met by "
                                    "the serving environment: marforge-no-such-package>=1.0: not installed")


def test_another_format_and_kserves_v2_are_refused_with_the_reason(built, tmp_path):
    from marforge.deploy import kserve

    project, _ = built
    mv = project.registry.get(NAME, "1.0")
    with pytest.raises(ArchiveError) as caught:
        archive.build(mv, project.model_store, fmt="onnx")
    assert caught.value.message.startswith(f"{NAME}-1.0 is served by its own handler: it cannot be archived as onnx "
                                           "(a version served by its own handler is archived from its source as it is")
    with pytest.raises(RegistryError) as caught:
        kserve.bundle(project, mv, tmp_path, "s3://bucket", protocol="v2")
    assert "KServe's v2 protocol sends tensors" in caught.value.message and "PROTOCOL=v1" in caught.value.hint
    assert (kserve.bundle(project, mv, tmp_path, "s3://bucket") / "model-store" / f"{NAME}.mar").is_file()


def test_extra_files_without_an_own_handler_are_a_registry_error(tmp_path):
    (tmp_path / "models.toml").write_text('[models.x]\ndefault_version = "1"\n[models.x.versions."1"]\n'
                                          'model_def = "m.py"\nextra_files = ["a.json"]\n')
    with pytest.raises(RegistryError) as caught:
        Project.at(tmp_path / "models.toml").registry
    assert caught.value.message == (f"{tmp_path}/models.toml: [models.x.versions.\"1\"] extra_files belong to a version's "
                                    "own handler, and it names no handler_file")


@pytest.mark.integration
def test_served_and_rolled_out_under_load_with_the_gate_on_the_section(built):
    from marforge.measure.loadgen import Background
    from marforge.serve import launch, process, rollout, status
    from marforge.serve.rundir import RunDir

    project, _ = built
    default = project.registry.get(NAME, "1.0")
    started = launch.serve(project, versions=[default], ports=process.free_listeners(), timeout=240)
    client = started.client
    try:
        text = (ROOT / "samples" / NAME / "python3-magnum.txt").read_bytes()
        answer = client.predict(NAME, text)
        assert answer["section"] == "python" and len(answer["top"]) == 3
        assert client.predict(NAME, json.dumps({"text": text.decode()}).encode(), content_type="application/json") == answer
        with pytest.raises(Exception) as bad:
            client.predict(NAME, b"\xff\xfe not utf-8")
        assert bad.value.status == 400 and "not UTF-8" in bad.value.body
        url = f"{client.endpoints.inference}/predictions/{NAME}"
        with Background(url, text, lambda: client.key("inference"), clients=2) as load:
            load.wait_for(10)
            report = rollout.rollout(client, project, NAME, "2.0", watch_s=2.0, log=lambda line: None)
            load.wait_for(10)
            back = rollout.rollback(client, project, NAME, log=lambda line: None)
            load.wait_for(10)
        assert load.failures() == [] and len(load.results) > 20
        gate = report.gate
        assert report.outcome == "promoted" and back.outcome == "rolled back"
        assert [c["check"] for c in gate["checks"] if c["passed"]] == ["no failed request", "accuracy floor",
                                                                       "accuracy drop", "p99"]
        accuracy = json.loads((ROOT / "weights" / f"{NAME}-2.0.json").read_text())["metrics"]["eval_accuracy"]
        assert gate["candidate"]["accuracy"] == round(accuracy, 4)
        rows = status.annotate(status.collect(client), project.registry)
        assert {r["source"] for r in rows} == {"model_def + own debsections_handler.py"}
        assert client.default_version(NAME) == "1.0"
    finally:
        process.stop(RunDir(project.run_dir))


@pytest.mark.integration
def test_make_bench_sends_the_samples_as_bodies_and_leaves_out_what_cannot_apply(built):
    from marforge.measure import by_task, experiments

    project, _ = built
    mv = project.registry.get(NAME, "1.0")
    results = experiments.bench(project, mv, seconds=1.0, concurrencies=(1,), formats=["onnx"],
                                log=lambda line: None)
    assert [r["row"] for r in results["rows"]] == ["(a) ceiling", "(b) torchserve stock", "(c) marforge",
                                                   "(f) marforge gRPC"]
    assert results["rows"][0]["throughput"] > 0
    assert all(r["errors"] == 0 and r["throughput"] > 0 for r in results["rows"][1:])
    left = {r["row"]: r["reason"] for r in results["left_out"]}
    assert left["(g) marforge v2 JSON"] == by_task.protocols_left_out(mv)["(g) marforge v2 JSON"]
    assert left["(d) flask"] == "marforge/measure/flask_app.py serves multiclass and multilabel models only, not custom"
    assert left["(e) marforge onnx"].startswith("a version served by its own handler is archived from its source")
    said = {a["row"]: a for a in results["answers"]}
    sent = {p.name for p in experiments.images_of(mv)[0]}  # the eval descriptions, as request bodies
    sizes = said["(c) marforge"]["sizes"]
    assert sizes and set(sizes) <= sent and said["(c) marforge"]["statuses"] == {"200": len(sizes)}
