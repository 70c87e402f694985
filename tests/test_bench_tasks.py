"""`make bench` for a detector and a segmenter (marforge/measure/by_task.py, answers.py): the rows that
apply to the task and the stated reason for each left out, TorchServe's own object_detector and
image_segmenter as the (b') row or the measured reason they cannot serve the model, and the answer
sizes per image; the integration tests run the whole bench at a tiny scale (1 client, 1 s rows)
against real TorchServes.

The segmenter is the registry's when it has one, else fashionseg's committed weights under a
temporary registry entry in a test project.
"""

import importlib.util
import json
import shutil

import pytest
from conftest import ROOT, temp_project

from marforge import tasks
from marforge.archiving import archive, variants
from marforge.cli import main
from marforge.measure import answers, by_task, experiments, tables
from marforge.project import Project

MACHINE = {"cpus": 2, "cpu_model": "Test CPU", "gpu": None, "torch": "2.x", "commit": "abc1234", "date": "today"}
CAPTUM = importlib.util.find_spec("captum") is not None  # TorchServe's vision handlers import it (requirements-bench.txt)


def detector(registry):
    found = [mv for mv in registry.all_versions() if by_task.task_of(mv) == "detection"]
    if not found:
        pytest.skip("no detection version in the registry")
    return found[0]


def test_a_detectors_rows_are_those_its_task_applies_to_with_the_reason_for_the_rest(registry):
    mv = detector(registry)
    formats = ["eager", "torchscript", "onnx", "quantized"]
    kept, unavailable = by_task.formats_for(mv, formats)
    assert kept == [f for f in formats if f in tasks.of("detection").TOLERANCES] and "eager" in kept
    assert list(unavailable) == [f for f in formats if f not in kept] and "onnx" in unavailable
    assert set(unavailable.values()) == {tasks.of("detection").UNAVAILABLE}
    assert experiments.bench_formats(mv) == [f for f in kept if f != mv.format]
    assert by_task.flask_left_out(mv) == ("marforge/measure/flask_app.py serves multiclass and multilabel models "
                                          "only, not detection")
    assert by_task.flask_left_out(registry.get("fashion", "2.0")) is None
    [plan] = by_task.stock_plans(mv, fits_classifier=False)
    assert (plan.handler, plan.feeds, plan.source) == ("object_detector", ("as sent",), None)


def test_a_detector_is_benched_on_its_sample_scenes_of_several_sizes(registry):
    mv = detector(registry)
    paths, bodies = experiments.images_of(mv)
    assert [p.parent for p in paths] == [mv.samples] * len(paths) and len(bodies) == len(paths)
    from PIL import Image

    assert len({Image.open(p).size for p in paths}) >= 3


def test_the_bench_archive_list_holds_only_formats_each_task_can_be_archived_in(registry, capsys):
    assert main(["--registry", str(registry.path), "archives", "--model-store", "store", "--bench"]) == 0
    listed = capsys.readouterr().out.split()
    mv = detector(registry)
    assert f"store/{mv.key}-onnx.mar" not in listed and f"store/{mv.key}-quantized.mar" not in listed
    assert "store/fashion-1.0-torchscript.mar" in listed  # a classifier still gets every benchmark format


def detector_results(b_prime):
    row = {"concurrency": 1, "throughput": 20.0, "p50_ms": 40.0, "p90_ms": 45.0, "p99_ms": 50.0, "errors": 0,
           "loadgen_cpu": 0.1, "server_cpu": {"frontend": 0.1, "worker": 0.9}, "peak_rss_mb": 900.0}
    rows = [{"row": "(a) ceiling", "concurrency": None, "throughput": 100.0, "processes": 2},
            {**row, "row": "(c) marforge"}] + ([{**row, "row": b_prime}] if b_prime else [])
    left_out = [{"row": "(d) flask", "reason": "serves classifiers only"}]
    said = [{"row": "(c) marforge", "sizes": {"a.png": 300, "b.png": 500}, "statuses": {"200": 2}, "error": None}]
    if b_prime:
        said.append({"row": b_prime, "sizes": {"a.png": 200, "b.png": 400}, "statuses": {"200": 2}, "error": None})
    else:
        left_out.append({"row": "(b') torchserve stock, its object_detector", "reason": "fed as sent: HTTP 503 x"})
    return {"model": "fashiondet-2.0", "format": "eager", "task": "detection", "seconds": 1, "machine": MACHINE,
            "images": "2 from samples/fashiondet", "rows": rows, "left_out": left_out, "notes": [], "answers": said,
            "ratios": {}, "targets": {}}


def test_a_detectors_report_shows_the_b_prime_row_and_the_answer_sizes_or_why_it_is_missing():
    table = tables.bench_markdown(detector_results("(b') torchserve stock, its object_detector")).splitlines()
    assert "| (b') torchserve stock, its object_detector | 1 | 20.0 | 40.0 | 45.0 | 50.0 | 0 | 0.1 | " \
           "frontend 0.1, worker 0.9 | 900.0 |" in table
    assert "Rows left out for this detection model, and why:" in table and "- (d) flask: serves classifiers only" in table
    at = table.index("| image | (c) marforge | (b') torchserve stock, its object_detector |")
    assert table[at + 2:at + 6] == ["| a.png | 300 | 200 |", "| b.png | 500 | 400 |", "| mean | 400 | 300 |",
                                    "| statuses | 2 x 200 | 2 x 200 |"]
    table = tables.bench_markdown(detector_results(None)).splitlines()
    assert "- (b') torchserve stock, its object_detector: fed as sent: HTTP 503 x" in table
    assert "| image | (c) marforge |" in table


def test_a_worker_logs_last_exception_is_the_reason_quoted(tmp_path):
    log = tmp_path / "model_log.log"
    log.write_text("INFO MODEL_LOG - Traceback (most recent call last):\n"
                   "INFO MODEL_LOG - RuntimeError: output with shape [1, 224, 224] doesn't match the broadcast shape "
                   "[3, 224, 224]\nINFO W-9000 - Backend response time: 3\n")
    target = type("T", (), {"logs": log})()
    assert answers.worker_error(target, wait_s=0) == ("RuntimeError: output with shape [1, 224, 224] doesn't match the "
                                            "broadcast shape [3, 224, 224]")
    assert answers.worker_error(target, since=log.stat().st_size, wait_s=0) == "no exception"  # only what came after


# -- the whole bench at a tiny scale, against real TorchServes ----------------------------------------
def tiny_bench(project, mv):
    """The bench at 1 client, 1 s rows; as (e) rows only the formats the task cannot be archived in
    (left out with the reason, no archive to build)."""
    unavailable = by_task.formats_for(mv, variants.BENCH_FORMATS["cpu"])[1]
    return experiments.bench(project, mv, seconds=1.0, concurrencies=(1,), formats=list(unavailable), log=lambda line: None)


def labels(results):
    return [r["row"] for r in results["rows"]]


@pytest.mark.integration
def test_a_detector_bench_runs_each_row_that_applies_and_measures_the_answers(registry, tmp_path):
    mv = detector(registry)
    store = tmp_path / "store"
    archive.build(mv, store)
    results = tiny_bench(Project.at(registry.path, model_store=store, run_dir=tmp_path / "run"), mv)
    assert labels(results)[:5] == ["(a) ceiling", "(b) torchserve stock", "(c) marforge", "(f) marforge gRPC",
                                   "(g) marforge v2 JSON"]
    assert results["rows"][0]["throughput"] > 0
    assert all(r["errors"] == 0 and r["throughput"] > 0 for r in results["rows"][1:])
    left = {r["row"]: r["reason"] for r in results["left_out"]}
    assert left["(d) flask"] == by_task.flask_left_out(mv)
    assert left["(e) marforge onnx"] == tasks.of("detection").UNAVAILABLE
    said = {a["row"]: a for a in results["answers"]}
    names = [p.name for p in sorted(mv.samples.glob("*.png"))]
    assert sorted(said["(c) marforge"]["sizes"]) == names and said["(c) marforge"]["statuses"] == {"200": len(names)}
    b_prime = "(b') torchserve stock, its object_detector"
    if CAPTUM:  # TorchServe's object_detector serves the grayscale detector as it is: ToTensor of the image as sent
        assert b_prime in labels(results) and sorted(said[b_prime]["sizes"]) == names
    else:
        assert left[b_prime].startswith("its worker cannot import ts.torch_handler.object_detector: "
                                        "ModuleNotFoundError: No module named 'captum'")
    table = tables.bench_markdown(results).splitlines()
    answered = ["(b) torchserve stock", "(c) marforge"] + ([b_prime] if CAPTUM else [])
    assert "| image | " + " | ".join(answered) + " |" in table and f"- (d) flask: {left['(d) flask']}" in table


SEGMENTER = ("fashionseg", "1.0")  # trained weights committed in weights/, for a temporary registry entry


@pytest.fixture(scope="module")
def segmenter(registry, tmp_path_factory):
    """(project, the segmentation version): the registry's first when it has one, else fashionseg's
    committed weights under a temporary registry entry in a test project, with the detector's sample
    scenes (several sizes, unlabelled) as its samples."""
    tmp = tmp_path_factory.mktemp("segmenter")
    found = [mv for mv in registry.all_versions() if by_task.task_of(mv) == "segmentation"]
    if found:
        archive.build(found[0], tmp / "store")
        return Project.at(registry.path, model_store=tmp / "store", run_dir=tmp / "run"), found[0]
    name, version = SEGMENTER
    weights = ROOT / "weights" / f"{name}-{version}.pt"
    if not weights.is_file():
        pytest.skip(f"no segmentation version in the registry and no {weights}")
    (tmp / "project").mkdir()
    temp_project(tmp / "project", f'[models.{name}]\ndefault_version = "{version}"\nserving = {{ workers = 1 }}\n\n'
                                  f'[models.{name}.versions."{version}"]\nmodel_def = "model_defs/scene_segmenter.py"\n')
    (tmp / "project" / "weights").mkdir()
    for suffix in (".pt", ".json"):
        shutil.copy(weights.with_suffix(suffix), tmp / "project" / "weights")
    samples = tmp / "project" / "samples" / name
    samples.mkdir(parents=True)
    for path in sorted((ROOT / "samples" / "fashiondet").glob("*.png")):
        shutil.copy(path, samples)
    (samples / "labels.json").write_text(json.dumps({p.name: None for p in sorted(samples.glob("*.png"))}))
    project = Project.at(tmp / "project" / "models.toml", model_store=tmp / "store", run_dir=tmp / "run",
                         config=ROOT / "config.properties")
    mv = project.registry.get(name, version)
    archive.build(mv, project.model_store)
    return project, mv


@pytest.mark.integration
def test_a_segmenter_bench_measures_why_the_stock_image_segmenter_cannot_serve_it_and_the_answer_sizes(segmenter):
    project, mv = segmenter
    results = tiny_bench(project, mv)
    assert labels(results)[:5] == ["(a) ceiling", "(b) torchserve stock", "(c) marforge", "(f) marforge gRPC",
                                   "(g) marforge v2 JSON"]
    left = {r["row"]: r["reason"] for r in results["left_out"]}
    assert left["(d) flask"] == by_task.flask_left_out(mv)
    assert left["(e) marforge onnx"] == tasks.of("segmentation").UNAVAILABLE
    said = {a["row"]: a for a in results["answers"]}
    names = sorted(p.name for p in mv.samples.glob("*.png"))
    assert sorted(said["(c) marforge"]["sizes"]) == names
    plain, adapted = [p.label for p in by_task.stock_plans(mv, fits_classifier=False)]
    if not CAPTUM:
        assert left[plain].startswith("its worker cannot import ts.torch_handler.image_segmenter: ")
        return
    # Stock image_segmenter normalises three channels: a grayscale image fails there, an RGB one in the model
    assert left[plain].startswith("fed as sent: HTTP 503 ") and "; fed rgb: HTTP 503 " in left[plain]
    assert "RuntimeError: " in left[plain]
    assert adapted in labels(results) and sorted(said[adapted]["sizes"]) == names
    for name in names:  # the whole score tensor as nested lists against one PNG mask
        assert said[adapted]["sizes"][name] > 10 * said["(c) marforge"]["sizes"][name]


def test_the_docs_have_a_bench_block_for_the_detector_and_the_segmenter(registry):
    from marforge.measure import report

    text = (registry.path.parent / "docs" / report.DOC).read_text()
    for name in ("fashiondet", "fashionseg"):
        assert f"<!-- generated: bench-{name} -->" in text and f"<!-- end: bench-{name} -->" in text, name
