"""`bench-kserve` (issue 22): the own KServe runtime's pod against the stock runtime's path.

The library's pieces run for real at a tiny scale: both bundles written with free ports, each pod
started as its runtime's container starts it (marforge/deploy/pod.py), one pass of 2 s rows at one
client, the report written into a generated block. The command's argument errors are asserted word
for word; the own bundle's canary files against KServe's CRD (skipped, saying why, where absent).
With MARFORGE_KSERVE_WRAPPER and MARFORGE_KSERVE_PYTHON set, the stock proxy is measured too.
"""

import os
from pathlib import Path

import pytest
import yaml
from conftest import ROOT
from test_cli import run

from marforge.deploy import kserve, pod, schema
from marforge.measure import kserve_paths, report

KSERVE = ROOT.parent / "shared" / "data" / "kserve"
needs_kserve = pytest.mark.skipif(not KSERVE.is_dir(), reason=f"{KSERVE} is absent: KServe's CRDs are not here")


@pytest.fixture(scope="module")
def project(store):
    from marforge.project import Project

    return Project.at(ROOT / "models.toml", model_store=store)


@pytest.mark.integration
def test_a_tiny_comparison_measures_both_pods_and_reports_every_row(registry, project, tmp_path):
    mv = registry.get("fashion", "2.0")
    lines = []
    results = kserve_paths.compare(project, mv, pod.runtimes(project, mv, tmp_path / "bundles"), pod.compared(None),
                                   "python -m marforge bench-kserve --passes 1", [1], 2.0, 1, log=lines.append)
    rows = {(r["runtime"], r["route"], r["protocol"]): r for r in results["rows"]}
    assert sorted(rows) == [("own runtime", "TorchServe", "v1"), ("own runtime", "TorchServe", "v2"),
                            ("stock runtime", "TorchServe", "v1"), ("stock runtime", "TorchServe", "v2")]
    for row in rows.values():
        assert row["throughput"] > 0 and row["errors"] == 0 and row["failed_statuses"] == {}, row
        assert 0 < row["p50_ms"] <= row["p99_ms"] < 2000 and row["concurrency"] == 1 and row["pass"] == 1
    assert [(f["runtime"], f["route"]) for f in results["first_answer"]] == [("own runtime", "TorchServe"),
                                                                             ("stock runtime", "TorchServe")]
    assert all(0 < f["seconds"] < kserve_paths.FIRST_ANSWER_S for f in results["first_answer"])
    assert len(results["load_at_start"]) == 3 and len(lines) == 6
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "kserve-performance.md").write_text("# t\n<!-- generated: kserve -->\nold\n<!-- end: kserve -->\n")
    _, table = report.write("kserve", results, tmp_path / "results", docs)
    written = (docs / "kserve-performance.md").read_text()
    assert table in written and "old" not in written
    assert table.startswith("`python -m marforge bench-kserve --passes 1`: fashion-2.0, ")
    assert "Load average at the start: " in table and "Compared: TorchServe's own v1/v2 routes, started from a " in table
    for (runtime, route, protocol), row in rows.items():
        assert f"| {runtime}: {route} | {protocol} | 1 | {row['throughput']} | {row['p50_ms']} |" in table


WRAPPER_HELP = "pass pytorch/serve's kubernetes/kserve/kserve_wrapper folder"


def test_bench_kserve_names_each_bad_argument_and_the_fix(capsys, tmp_path):
    python = tmp_path / "python"
    python.write_text("")
    cases = [
        (["--wrapper", str(tmp_path)], "error: --wrapper needs --wrapper-python, the Python of a venv with "
         "kserve[storage]==0.13.0\n  next: e.g. --wrapper-python /tmp/kserve/bin/python\n"),
        (["--wrapper-python", str(python)], "error: --wrapper-python needs --wrapper, pytorch/serve's "
         "kubernetes/kserve/kserve_wrapper folder\n  next: e.g. --wrapper serve/kubernetes/kserve/kserve_wrapper\n"),
        (["--wrapper", str(tmp_path / "none"), "--wrapper-python", str(python)],
         f"error: {tmp_path}/none: no such folder (--wrapper)\n  next: {WRAPPER_HELP}\n"),
        (["--wrapper", str(tmp_path), "--wrapper-python", str(python)],
         f"error: {tmp_path}: no __main__.py (--wrapper): not pytorch/serve's kserve_wrapper folder\n"
         f"  next: {WRAPPER_HELP}\n"),
        (["--passes", "0"], "error: --passes 0: not a whole number above 0\n  next: e.g. --passes 2\n"),
        (["--seconds", "0"], "error: --seconds 0: not above 0\n  next: e.g. --seconds 8\n"),
        (["--concurrency", "1,x"], "error: --concurrency '1,x': not a comma-separated list of whole numbers above 0\n"
         "  next: e.g. --concurrency 1,8,32\n"),
    ]
    for argv, message in cases:
        assert run(capsys, "bench-kserve", *argv)[::2] == (1, message), argv
    (tmp_path / "__main__.py").write_text("")
    assert run(capsys, "bench-kserve", "--wrapper", str(tmp_path), "--wrapper-python", str(tmp_path / "py"))[::2] == (
        1, f"error: {tmp_path}/py: no such file (--wrapper-python)\n"
           "  next: pass the Python of a venv with kserve[storage]==0.13.0\n")


def test_bench_kserve_refuses_an_archive_that_is_not_built(capsys, tmp_path):
    assert run(capsys, "bench-kserve", "fashion", "2.0", "--model-store", str(tmp_path))[::2] == (
        1, "error: refusing to measure archives that are not what make builds now: "
           f"{tmp_path}/fashion-2.0.mar: not built\n  next: make archive\n")


@needs_kserve
def test_the_stock_pod_starts_as_kserves_runtime_does():
    [container] = yaml.safe_load((KSERVE / "kserve-torchserve.yaml").read_text())["spec"]["containers"]
    assert container["args"] == pod.STOCK_ARGS


@needs_kserve
def test_the_own_bundle_carries_both_canary_files_valid_against_the_crd(registry, project, tmp_path):
    pytest.importorskip("kubernetes_validate", reason="kubernetes-validate is not installed here (requirements.txt)")
    folder = kserve.bundle(project, registry.get("fashion", "2.0"), tmp_path, "s3://b/m", canary_percent=25)
    knative = yaml.safe_load((folder / "canary-knative.yaml").read_text())
    standard = yaml.safe_load((folder / "canary-standard.yaml").read_text())
    assert knative["spec"]["predictor"]["canaryTrafficPercent"] == 25
    assert knative["metadata"]["annotations"]["serving.kserve.io/deploymentMode"] == "Knative"
    assert knative["spec"]["predictor"]["model"]["runtime"] == "marforge-torchserve"
    [step] = standard["spec"]["canary"]
    assert step["trafficPercent"] == 25 and step["predictor"]["model"]["runtime"] == "marforge-torchserve"
    assert step["predictor"]["model"]["storageUri"] == "s3://b/m/fashion-2.0"
    crd = KSERVE / "serving.kserve.io_inferenceservices.yaml"
    assert schema.problems(knative, crd) == [] and schema.problems(standard, crd) == []


WRAPPER = {"folder": os.environ.get("MARFORGE_KSERVE_WRAPPER"), "python": os.environ.get("MARFORGE_KSERVE_PYTHON")}


@pytest.mark.integration
@pytest.mark.skipif(not all(WRAPPER.values()), reason="set MARFORGE_KSERVE_WRAPPER (pytorch/serve's kserve_wrapper folder, "
                    "with its inference_pb2 stubs) and MARFORGE_KSERVE_PYTHON (a venv with kserve[storage]==0.13.0)")
def test_the_stock_proxy_is_measured_in_front_of_its_torchserve_when_given(registry, project, tmp_path):
    mv = registry.get("fashion", "2.0")
    wrapper = pod.Wrapper(Path(WRAPPER["folder"]), Path(WRAPPER["python"]))
    [_, stock] = pod.runtimes(project, mv, tmp_path, wrapper)  # the stock runtime only
    results = kserve_paths.compare(project, mv, [stock], pod.compared(wrapper), "test", [1], 2.0, 1, log=lambda line: None)
    firsts = {f["route"]: f["seconds"] for f in results["first_answer"]}
    assert list(firsts) == ["TorchServe", "kserve_wrapper"] and firsts["kserve_wrapper"] > firsts["TorchServe"]
    assert {(r["route"], r["protocol"]) for r in results["rows"]} == {
        (route, protocol) for route in firsts for protocol in ("v1", "v2")}
    assert all(r["throughput"] > 0 and r["errors"] == 0 for r in results["rows"]), results["rows"]
