"""Commands that build: archive, verify, archives, formats, build-code, stamp, demo, kserve, stubs, train, samples."""

import dataclasses
import zipfile
from pathlib import Path

from marforge import shipped
from marforge.cli import Output, add_paths, existing, format_list, project_of
from marforge.errors import ArchiveError, MarforgeError


def cmd_archive(args):
    from marforge.archiving import archive

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
    from marforge.archiving import mar, verify

    hint = "pass a .mar file that make archive built, e.g. model_store/fashion-2.0.mar"
    path = existing(args.mar, "the archive to verify", hint)
    try:
        manifest = mar.manifest_of(path)
    except (zipfile.BadZipFile, KeyError) as exc:
        raise ArchiveError(f"{args.mar}: not a .mar archive ({exc})", hint) from None
    mv = project_of(args).registry.get(manifest["modelName"], manifest["modelVersion"])
    verification = verify.check(args.mar, mv)
    lines = [f"{row['sample']}: {row['top1']['label']} ({row['top1']['probability']:.4f}) matches the source model"
             for row in verification.samples]
    lines.append(f"{args.mar}: verified ({mv.name} {mv.version}): {verification.summary()}")
    return Output("\n".join(lines), dataclasses.asdict(verification))


def cmd_archives(args):
    """Standard library only: the Makefile runs it before the virtualenv exists."""
    from marforge.archiving import variants
    from marforge.archiving.weights import task_of

    project = project_of(args)
    formats = list(variants.BENCH_FORMATS[project.device]) if args.bench else (format_list(args.formats) or [None])
    paths = dict.fromkeys(project.relative(mv.archive_path(project.model_store, f))
                          for f in formats for mv in project.registry.all_versions()
                          if f is None or (f in shipped.contract().formats_for(task_of(mv))  # an exported or
                                           and (f == mv.format or not (mv.exported or mv.own_handler))))  # own: its own
    return Output(" ".join(paths), list(paths))


def cmd_build_code(args):
    from marforge.archiving import inputs

    code = [str(path) for path in inputs.build_code()]
    return Output(" ".join(code), code)


def cmd_formats(args):
    """Standard library only, like `archives`: the Makefile defines one archive rule per format it prints."""
    from marforge.archiving import variants

    formats = list(variants.BENCH_FORMATS[project_of(args).device]) if args.bench else list(variants.formats())
    return Output(" ".join(formats), formats)


def cmd_stamp(args):
    """Standard library only, like `archives`: the Makefile's per-version input stamp."""
    from marforge.archiving import inputs

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
    from marforge.train import samples, scene_recipe, scene_samples, text_recipe

    registry = project_of(args).registry
    models = [registry.models[registry.get(args.name).name]] if args.name else list(registry.models.values())
    # the text recipe writes its samples and eval set as it trains
    models = [m for m in models if all(mv.train.get("dataset") != text_recipe.DATASET_NAME for mv in m.versions.values())]
    log = (lambda line: None) if args.json else print

    def export(model):
        train = next((mv.train for mv in model.versions.values() if mv.train), {})
        if train.get("dataset") == scene_recipe.DATASET_NAME:
            return scene_samples.export(model, train["task"], log=log)
        return samples.export(model, log=log)

    written = {model.name: export(model) for model in models}
    return Output("", {name: {"samples": s, "eval": e} for name, (s, e) in written.items()})


def cmd_demo(args):
    from marforge.archiving import synthetic

    report = synthetic.make_demo(project_of(args), log=(lambda line: None) if args.json else print)
    return Output("" if report else f"{synthetic.DEMO_MODEL} {synthetic.DEMO_VERSION}: synthetic weights up to date",
                  {"report": report})


def cmd_kserve(args):
    from marforge.deploy import kserve

    project = project_of(args)
    versions = project.registry.select(args.name, args.version)
    target = kserve.Target(cpus=args.cpus, gpus=args.gpus, memory=args.memory)
    out = Path(args.out_dir).resolve() if args.out_dir else project.root / "kserve"
    written = [kserve.bundle(project, mv, out, args.storage_uri, target, protocol=args.protocol, image=args.image,
                             canary_percent=args.canary_percent, runtime_name=args.runtime) for mv in versions]
    runtimes = "servingruntime.yaml, clusterservingruntime.yaml, " if args.runtime == "own" else ""
    lines = [f"wrote {folder}/ (config/, model-store/, {runtimes}inferenceservice.yaml, inferenceservice-gpu.yaml, "
             "canary-knative.yaml, canary-standard.yaml)" for folder in written]
    lines.append("token authorization is OFF in these bundles (KServe's probes send no token): read the comment in "
                 "config/config.properties")
    return Output("\n".join(lines), [str(folder) for folder in written])


def cmd_stubs(args):
    from marforge.serve import grpc_client

    folder = grpc_client.generate_stubs()
    return Output(f"gRPC stubs for TorchServe's inference.proto written to {folder}", {"stubs": str(folder)})


def add_commands(command):
    p = command("archive", cmd_archive, "build and verify <model_store>/<name>-<version>.mar from the registry",
                "python -m marforge archive fashion 2.0      # builds model_store/fashion-2.0.mar")
    p.add_argument("name", nargs="?", help="model name (default: every model)")
    p.add_argument("version", nargs="?", help="version (default: every version of the model)")
    p.add_argument("--key", help="one version by its file stem, e.g. fashion-2.0 (the Makefile uses this)")
    p.add_argument("--format", help="archive format, one of those `python3 -m marforge formats` prints (default: "
                   "the registry's, written to <key>.mar; others to <key>-<format>.mar)")
    add_paths(p, "model_store")

    p = command("verify", cmd_verify, "load an archive as a worker does and compare it with its source model",
                "python -m marforge verify model_store/fashion-2.0.mar")
    p.add_argument("mar", help="path to a .mar file")

    p = command("archives", cmd_archives, "list the archives the registry builds (for the Makefile; standard "
                "library only)", "python3 -m marforge archives --formats onnx,eager")
    p.add_argument("--formats", help="comma-separated formats (default: each version's registry format)")
    p.add_argument("--bench", action="store_true", help="every format the benchmarks serve")
    add_paths(p, "model_store")

    p = command("formats", cmd_formats, "list every archive format (for the Makefile; standard library only)",
                "python3 -m marforge formats --bench")
    p.add_argument("--bench", action="store_true", help="only the formats the benchmarks serve on this machine")

    command("build-code", cmd_build_code, "list the code every archive is built from, relative to the checkout (for the "
            "Makefile; standard library only)", "python3 -m marforge build-code")

    p = command("stamp", cmd_stamp, "write <model_store>/.inputs/<key>.json if the version's archive inputs "
                "changed (for the Makefile)", "python3 -m marforge stamp fashion-2.0")
    p.add_argument("key", help="the version's file stem, e.g. fashion-2.0")
    add_paths(p, "model_store")

    p = command("demo", cmd_demo, "make the CheXNet demo's synthetic weights (and samples): a seeded "
                "DenseNet121 in CheXNet's checkpoint format, imported like a real one",
                "python -m marforge demo                  # make archive runs it")

    from marforge.deploy import defaults as kserve_defaults

    p = command("kserve", cmd_kserve, "write a storage location per version for KServe, marforge's own "
                "ServingRuntime and the InferenceService YAML",
                "python -m marforge kserve fashion 2.0 --storage-uri s3://bucket/marforge")
    p.add_argument("name", nargs="?", help="model name (default: every model)")
    p.add_argument("version", nargs="?", help="version (default: every version of the model)")
    p.add_argument("--storage-uri", required=True, help="where the bundles will be copied; each version's is <uri>/<key>")
    p.add_argument("--cpus", type=int, default=kserve_defaults.CPUS,
                   help="CPU cores per pod (workers and threads are sized for them)")
    p.add_argument("--gpus", type=int, default=kserve_defaults.GPUS,
                   help="GPUs per pod for inferenceservice.yaml (the -gpu file has 1 at least)")
    p.add_argument("--memory", default=kserve_defaults.MEMORY, help="memory per pod, a Kubernetes quantity")
    p.add_argument("--protocol", choices=("v1", "v2"), default=kserve_defaults.PROTOCOL,
                   help="the InferenceService's protocolVersion")
    p.add_argument("--image", default=kserve_defaults.IMAGE, help="the serving image (docker/Dockerfile.kserve)")
    p.add_argument("--canary-percent", type=int, default=kserve_defaults.CANARY_PERCENT,
                   help="traffic the canary step sends to this version")
    p.add_argument("--runtime", choices=kserve_defaults.RUNTIMES, default=kserve_defaults.RUNTIMES[0],
                   help="own: marforge's ServingRuntime, TorchServe alone on 8080 (default); stock: KServe's "
                   "kserve-torchserve, behind its proxy")
    p.add_argument("--out-dir", help="where to write the bundles (default: kserve/ in the project)")
    add_paths(p, "model_store")

    p = command("stubs", cmd_stubs, "generate the gRPC stubs for TorchServe's inference.proto (make setup does)",
                "python -m marforge stubs")

    p = command("train", cmd_train, "train versions by their registry recipe: weights/<key>.pt with provenance",
                "python -m marforge train fashion 1.0    # or --all (make weights)")
    p.add_argument("name", nargs="?")
    p.add_argument("version", nargs="?")
    p.add_argument("--all", action="store_true", help="every version with a train table")

    p = command("samples", cmd_samples, "export sample and eval images of the models trained here",
                "python -m marforge samples               # samples/<name>/ and eval/<name>/")
    p.add_argument("name", nargs="?", help="one model (default: every model)")
