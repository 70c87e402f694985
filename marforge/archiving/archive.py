"""Build versioned TorchServe archives: `<model_store>/<name>-<version>.mar`, verified before they land.

`build` checks the weights against their metadata (sha256, plain state_dict), writes the serialized
file of the requested format (variants.py; the registry's `format` by default), writes the
archive's model-config.yaml (the contract's `handler:` section from the weights' metadata and the
registry's handler options, plus the format's own sections), runs torch-model-archiver in a private
temp dir (it always writes `<model-name>.mar` and stages in `$TMPDIR/<model-name>`, so parallel
builds would collide), verifies the result (verify.py) and only then moves it into place: the
registry's own format as `<name>-<version>.mar` (what the server loads), any other as
`<name>-<version>-<format>.mar`. Serving settings (workers, batching) are not baked in: TorchServe
lets model-config.yaml override them, and they belong to the server's config.
"""

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

from marforge import files, shipped, tasks
from marforge.archiving import variants, verify
from marforge.archiving.weights import verified_metadata
from marforge.errors import ArchiveError
from marforge.registry import handler_defaults


def handler_section(mv, metadata: dict) -> dict:
    """The `handler:` section of model-config.yaml for one version (the contract writes it): the
    registry's handler options over the contract's defaults for them (registry.handler_defaults)."""
    return shipped.contract().handler_section(metadata, {**handler_defaults(), **mv.handler})


def build(mv, model_store, handlers_dir=shipped.HANDLERS_DIR, fmt=None):
    """Build, verify and install `mv`'s archive in format `fmt` (default: the registry's).

    Returns (the installed archive's path, its verify.Verification with the build time in `build_s`).
    """
    fmt = fmt or mv.format
    if fmt not in variants.formats():
        raise ArchiveError(f"unknown archive format {fmt!r} for {mv.key}", f"use one of: {', '.join(variants.formats())}")
    metadata = verified_metadata(mv)
    task_name = metadata.get("task") or "multiclass"
    task = tasks.of(task_name)
    if fmt not in task.TOLERANCES:
        raise ArchiveError(f"{mv.key} is a {task_name} model: it cannot be archived as {fmt} ({task.UNAVAILABLE})",
                           f"use one of: {', '.join(task.TOLERANCES)}")
    target = mv.archive_path(model_store, fmt)
    with tempfile.TemporaryDirectory(prefix=f"marforge-{mv.key}-{fmt}-") as work:
        work = Path(work)
        started = time.monotonic()
        variant = variants.prepare(mv, fmt, metadata, work)
        built = run_archiver(mv, variant, handler_section(mv, metadata), work, Path(handlers_dir))
        build_s = time.monotonic() - started
        verification = verify.check(built, mv)
        files.copy_atomic(built, target)  # a reader never sees half an archive
    return target, verification.with_build_time(build_s)


def run_archiver(mv, variant, handler, work, handlers_dir):
    """Run torch-model-archiver for one variant in `work` (its private TMPDIR inside); returns the .mar."""
    contract = shipped.contract()
    config = work / contract.CONFIG_FILE
    config.write_text(yaml.safe_dump({"handler": handler, **variant.config}, sort_keys=False))
    handler_file, modules = shipped.files(handlers_dir)
    modules = [*modules, *variant.extra_files]
    command = [
        str(Path(sys.executable).with_name("torch-model-archiver")),
        "--model-name", mv.name, "--version", mv.version, *variant.archiver_args(),
        "--handler", str(handler_file), "--config-file", str(config),
        "--export-path", str(work), "--force",
    ]
    if modules:
        command += ["--extra-files", ",".join(str(p) for p in modules)]
    (work / "tmp").mkdir()
    result = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "TMPDIR": str(work / "tmp")})
    built = work / f"{mv.name}.mar"
    if result.returncode != 0 or not built.is_file():
        raise ArchiveError(f"torch-model-archiver failed for {mv.key} ({variant.fmt}):\n{result.stderr.strip()}")
    return built
