"""The Makefile takes its facts from marforge: every archive format has a rule, dry-run with `make -n`."""

import os
import subprocess
import sys

import pytest
from conftest import ROOT, task_of

from marforge import shipped
from marforge.archiving import variants
from marforge.project import Project

REGISTRY = ROOT / "models.toml"


def make_n(tmp_path, *targets, device="cpu"):
    """`make -n TARGETS` in the project (the setup stamp taken as done): (exit code, output)."""
    done = subprocess.run(["make", "-n", "-o", ".venv/.marforge-setup", *targets, f"MODEL_STORE={tmp_path}",
                           f"PYTHON={sys.executable}"], capture_output=True, text=True, cwd=ROOT,
                          env={**os.environ, "MARFORGE_DEVICE": device})
    return done.returncode, done.stdout + done.stderr


@pytest.mark.parametrize("fmt", variants.formats())
def test_make_archive_has_a_rule_for_every_format(tmp_path, fmt):
    code, out = make_n(tmp_path, "archive", f"FORMAT={fmt}")
    assert code == 0, out
    for mv in Project.at(REGISTRY).registry.all_versions():
        own = f"-m marforge archive --key {mv.key} --model-store {tmp_path}"
        other = f"-m marforge archive --key {mv.key} --format {fmt} --model-store {tmp_path}"
        never = fmt not in shipped.contract().formats_for(task_of(mv))  # a detector's onnx, say: never asked for
        if never or ((mv.exported or mv.own_handler) and fmt != mv.format):  # archived in their own format only
            assert f"--key {mv.key} --format {fmt}" not in out, out
            continue
        assert (own if fmt == mv.format else other) in out, out


@pytest.mark.parametrize("device", sorted(variants.BENCH_FORMATS))
def test_the_benchmark_formats_exist_and_make_can_build_them(tmp_path, device):
    assert set(variants.BENCH_FORMATS[device]) <= set(variants.formats())
    code, out = make_n(tmp_path, "bench-formats", device=device)
    assert code == 0 and "No rule to make target" not in out, out
    assert "marforge bench --compare-formats" in out


def test_formats_prints_the_contracts_list(capsys):
    from marforge.cli import main

    assert main(["--registry", str(REGISTRY), "--device", "gpu", "formats"]) == 0
    assert capsys.readouterr().out == "eager torchscript onnx compile quantized cudagraphs export\n"
    assert main(["--registry", str(REGISTRY), "--device", "gpu", "formats", "--bench"]) == 0
    assert capsys.readouterr().out == "eager torchscript compile cudagraphs\n"


def test_bench_against_needs_a_commit_and_passes_it_with_the_benchmarked_version(tmp_path):
    refused = subprocess.run(["make", "-o", "archive", "-o", ".venv/.marforge-setup", "bench-against"], cwd=ROOT,
                             capture_output=True, text=True)
    assert refused.returncode == 2 and refused.stderr.startswith("error: set AGAINST to the commit to compare with")
    code, out = make_n(tmp_path, "bench-against", "AGAINST=HEAD~2", "BENCH_MODEL=chexnet", "BENCH_VERSION=0.1")
    assert code == 0 and "marforge bench chexnet 0.1 --against HEAD~2 --concurrency 16,64" in out, out
