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
from marforge.archiving import expected, requirements, variants, verify
from marforge.archiving.weights import verified_metadata
from marforge.errors import ArchiveError, DataError
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
    task_name = tasks.CUSTOM if mv.own_handler else metadata.get("task") or "multiclass"
    task = tasks.of(task_name)
    if fmt not in task.TOLERANCES or (mv.own_handler and fmt != mv.format and not mv.exported):
        what = "served by its own handler" if mv.own_handler else f"a {task_name} model"
        raise ArchiveError(f"{mv.key} is {what}: it cannot be archived as {fmt} ({task.UNAVAILABLE})",
                           f"use {mv.format}" if mv.own_handler else f"use one of: {', '.join(task.TOLERANCES)}")
    if mv.own_handler:
        own_handler_files(mv)
    target = mv.archive_path(model_store, fmt)
    with tempfile.TemporaryDirectory(prefix=f"marforge-{mv.key}-{fmt}-") as work:
        work = Path(work)
        started = time.monotonic()
        variant = variants.prepare(mv, fmt, metadata, work)
        built = run_archiver(mv, variant, None if mv.own_handler else handler_section(mv, metadata), work, Path(handlers_dir))
        build_s = time.monotonic() - started
        verification = verify.check(built, mv)
        files.copy_atomic(built, target)  # a reader never sees half an archive
    return target, verification.with_build_time(build_s)


def record_answers(mv, handlers_dir=shipped.HANDLERS_DIR):
    """Record what an own handler's version answers to its samples, as its expected answers: the archive
    built from its sources (not verified: this is what it is verified with) and loaded as a worker does.
    Returns (the file written, {sample file name: answer})."""
    if not mv.own_handler:
        raise ArchiveError(f"{mv.key} is served by marforge's handler: its archive is verified against its source "
                           "model, and it has no expected answers to record", f"make archive (or python -m marforge "
                           f"archive {mv.name} {mv.version})")
    metadata = verified_metadata(mv)
    own_handler_files(mv)
    try:
        samples = verify.sample_files(mv)
    except DataError as exc:
        raise ArchiveError(f"{mv.key}: no samples to record answers for: {exc.message}", exc.hint) from None
    with tempfile.TemporaryDirectory(prefix=f"marforge-{mv.key}-expect-") as work:
        work = Path(work)
        built = run_archiver(mv, variants.prepare(mv, mv.format, metadata, work), None, work, Path(handlers_dir))
        answers, _, _ = verify.run_loaded(built, mv, mv.format, [path for path, _ in samples])
        recorded = {path.name: verify.json_answer(built, path, answer) for (path, _), answer in zip(samples, answers)}
    return expected.write(mv.samples, mv.version, recorded), recorded


def own_handler_files(mv):
    """Check an own handler's files before archiving: the handler module, every extra file, and its
    requirements against the serving environment (TorchServe installs none at model load here)."""
    for what, path in (("handler_file", mv.handler_file), *(("extra_files", p) for p in mv.extra_files),
                       *((("requirements", mv.requirements),) if mv.requirements else ())):
        if not Path(path).is_file():
            raise ArchiveError(f"{mv.key}: {what} {path} does not exist: the archive would be built without it and "
                               "the first request would fail", f"create it, or fix {what} for {mv.name} {mv.version} in models.toml")
    if mv.requirements:
        requirements.check(mv.requirements, mv.key)


def model_config(mv, variant, handler):
    """model-config.yaml's content: the `handler:` section (marforge's, from the weights' metadata; an own
    handler's, the registry's table as written), the format's sections and the stamp (own handler: its
    file name and the comparison its expected answers are checked with)."""
    config = {**variant.config}
    if mv.own_handler:
        stamp = shipped.contract().STAMP_SECTION
        config[stamp] = {**config[stamp], "own_handler": mv.handler_file.name, "answers": dict(mv.answers)}
        return {"handler": dict(mv.handler), **config} if mv.handler else config
    return {"handler": handler, **config}


def run_archiver(mv, variant, handler, work, handlers_dir):
    """Run torch-model-archiver for one variant in `work` (its private TMPDIR inside); returns the .mar.
    An own handler is archived as it is, with its extra files and requirements; marforge's handler with
    its shipped modules."""
    contract = shipped.contract()
    config = work / contract.CONFIG_FILE
    config.write_text(yaml.safe_dump(model_config(mv, variant, handler), sort_keys=False))
    if mv.own_handler:
        handler_file, modules = mv.handler_file, list(mv.extra_files)
    else:
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
    if mv.own_handler and mv.requirements:
        command += ["--requirements-file", str(mv.requirements)]
    (work / "tmp").mkdir()
    result = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "TMPDIR": str(work / "tmp")})
    built = work / f"{mv.name}.mar"
    if result.returncode != 0 or not built.is_file():
        raise ArchiveError(f"torch-model-archiver failed for {mv.key} ({variant.fmt}):\n{result.stderr.strip()}")
    return built
