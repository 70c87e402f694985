"""Commands that build: archive, verify, archives, stamp, train, samples."""

import dataclasses

from marforge.cli import Output, add_paths, project_of
from marforge.errors import MarforgeError


def cmd_archive(args):
    from marforge.build import archive

    project = project_of(args)
    registry = project.registry
    versions = [registry.by_key(args.key)] if args.key else registry.select(args.name, args.version)
    lines, data = [], []
    for mv in versions:
        path, verification = archive.build(mv, project.model_store, fmt=args.format)
        lines.append(f"built and verified {path} ({mv.name} {mv.version}): {verification.summary()}")
        data.append({"archive": str(path), "model": mv.name, "version": mv.version,
                     "verification": dataclasses.asdict(verification)})
    return Output("\n".join(lines), data)


def cmd_verify(args):
    from marforge.build import mar, verify

    manifest = mar.manifest_of(args.mar)
    mv = project_of(args).registry.get(manifest["modelName"], manifest["modelVersion"])
    verification = verify.check(args.mar, mv)
    lines = [f"{row['sample']}: {row['top1']['label']} ({row['top1']['probability']:.4f}) matches the source model"
             for row in verification.samples]
    lines.append(f"{args.mar}: verified ({mv.name} {mv.version}): {verification.summary()}")
    return Output("\n".join(lines), dataclasses.asdict(verification))


def cmd_archives(args):
    """Standard library only: the Makefile runs it before the virtualenv exists."""
    from marforge.build import variants

    project = project_of(args)
    formats = list(variants.BENCH_FORMATS) if args.bench else (args.formats.split(",") if args.formats else [None])
    unknown = [f for f in formats if f is not None and f not in variants.formats()]
    if unknown:
        raise MarforgeError(f"unknown archive format(s): {', '.join(unknown)}",
                            f"use some of: {', '.join(variants.formats())}")
    paths = dict.fromkeys(project.relative(mv.archive_path(project.model_store, f))
                          for f in formats for mv in project.registry.all_versions())
    return Output(" ".join(paths), list(paths))


def cmd_stamp(args):
    """Standard library only, like `archives`: the Makefile's per-version input stamp."""
    from marforge.build import inputs

    project = project_of(args)
    mv = project.registry.by_key(args.key)
    changed = inputs.write_stamp(project.model_store, mv)
    path = inputs.stamp_path(project.model_store, mv)
    return Output(f"{path}: {'updated' if changed else 'unchanged'}", {"stamp": str(path), "changed": changed})


def cmd_train(args):
    from marforge.train import recipe

    project = project_of(args)
    registry = project.registry
    if args.all:
        versions = [mv for mv in registry.all_versions() if mv.train]
    elif args.name and args.version:
        versions = [registry.get(args.name, args.version)]
    else:
        raise MarforgeError("say which version to train: NAME VERSION, or --all", "python -m marforge train --all")
    log = (lambda line: None) if args.json else (lambda line: print(line, flush=True))
    metadata = recipe.train(project, versions, log=log)
    return Output("", metadata)


def cmd_samples(args):
    from marforge.train import samples

    registry = project_of(args).registry
    models = [registry.models[registry.get(args.name).name]] if args.name else list(registry.models.values())
    log = (lambda line: None) if args.json else print
    written = {model.name: samples.export(model, log=log) for model in models}
    return Output("", {name: {"samples": s, "eval": e} for name, (s, e) in written.items()})


def add_commands(command):
    p = command("archive", cmd_archive, "build and verify <model_store>/<name>-<version>.mar from the registry",
                "python -m marforge archive fashion 2.0      # builds model_store/fashion-2.0.mar")
    p.add_argument("name", nargs="?", help="model name (default: every model)")
    p.add_argument("version", nargs="?", help="version (default: every version of the model)")
    p.add_argument("--key", help="one version by its file stem, e.g. fashion-2.0 (the Makefile uses this)")
    p.add_argument("--format", help="archive format: eager, torchscript, onnx, compile or quantized (default: the "
                   "registry's, written to <key>.mar; others to <key>-<format>.mar)")
    add_paths(p, "model_store")

    p = command("verify", cmd_verify, "load an archive as a worker does and compare it with its source model",
                "python -m marforge verify model_store/fashion-2.0.mar")
    p.add_argument("mar", help="path to a .mar file")

    p = command("archives", cmd_archives, "list the archives the registry builds (for the Makefile; standard "
                "library only)", "python3 -m marforge archives --formats onnx,eager")
    p.add_argument("--formats", help="comma-separated formats (default: each version's registry format)")
    p.add_argument("--bench", action="store_true", help="every format the benchmarks serve")
    add_paths(p, "model_store")

    p = command("stamp", cmd_stamp, "write <model_store>/.inputs/<key>.json if the version's archive inputs "
                "changed (for the Makefile)", "python3 -m marforge stamp fashion-2.0")
    p.add_argument("key", help="the version's file stem, e.g. fashion-2.0")
    add_paths(p, "model_store")

    p = command("train", cmd_train, "train versions by their registry recipe: weights/<key>.pt with provenance",
                "python -m marforge train fashion 1.0    # or --all (make weights)")
    p.add_argument("name", nargs="?")
    p.add_argument("version", nargs="?")
    p.add_argument("--all", action="store_true", help="every version with a train table")

    p = command("samples", cmd_samples, "export sample and eval images of the models trained here",
                "python -m marforge samples               # samples/<name>/ and eval/<name>/")
    p.add_argument("name", nargs="?", help="one model (default: every model)")
