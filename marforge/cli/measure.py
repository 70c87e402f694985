"""Commands that measure: bench (with --compare-formats, --sweep, --queue, --jvm, --protocols, --first, --lone
and --against),
bench-kserve, tune and soak."""

from pathlib import Path

from marforge.cli import Output, add_paths, existing, format_list, numbers, project_of
from marforge.errors import MarforgeError, MeasurementFailed

# The one place the benchmarked version's default is written (make bench passes BENCH_MODEL only when set).
BENCH_MODEL, BENCH_VERSION = "fashion", "2.0"
KSERVE_SECONDS, KSERVE_PASSES, KSERVE_CONCURRENCY = 8.0, 2, "1,8,32"  # bench-kserve's rows, passes and clients


def _log(args):
    return print if args.verbose and not args.json else (lambda line: None)


def cmd_bench(args):
    from marforge.archiving import variants
    from marforge.measure import by_task, experiments, report, tuning

    project = project_of(args)
    seconds = experiments.SHORT_ROW_S if args.short else args.seconds
    concurrencies = numbers(args.concurrency, "--concurrency", "1,16,64")
    formats = format_list(args.formats)
    if args.images:
        existing(args.images, "--images", "pass a folder of images, e.g. --images eval/fashion", folder=True)
    # A short run understates a warm server: it goes to the results folder, never into the docs.
    doc_dir = None if args.short or args.no_docs else project.docs_dir
    if args.compare_formats:
        formats = formats or list(variants.BENCH_FORMATS[project.device])
        refuse_stale(project, [(mv, f) for mv in project.registry.all_versions()
                               for f in by_task.formats_for(mv, formats)[0]])
        results = experiments.compare_formats(project, project.registry.all_versions(), formats, seconds=seconds,
                                              concurrencies=[c for c in concurrencies if c > 1] or concurrencies,
                                              log=_log(args))
        kind = "formats"
    else:
        mv = project.registry.get(args.name, args.version)
        others = [] if args.sweep or args.queue or args.protocols or args.jvm or args.first or args.lone or args.against else \
            experiments.bench_formats(mv, formats, project.device)
        refuse_stale(project, [(mv, mv.format)] + [(mv, f) for f in others])
        if args.sweep:
            results, kind = tuning.sweep(project, mv, seconds=seconds, concurrencies=concurrencies,
                                         log=_log(args)), "sweep"
        elif args.queue:
            results, kind = tuning.queue(project, mv, seconds=seconds, log=_log(args)), "queue"
        elif args.first:
            from marforge.measure import first

            results, kind = first.first(project, mv, log=_log(args)), "first"
        elif args.lone:
            from marforge.measure import lone

            results, kind = lone.lone(project, mv, seconds=seconds, images=args.images, log=_log(args)), "lone"
        elif args.against:
            from marforge.measure import against

            results, kind = against.against(project, mv, args.against, seconds=seconds, log=_log(args),
                                             concurrencies=[c for c in concurrencies if c > 1] or concurrencies), "against"
        elif args.protocols:
            results, kind = experiments.protocols(project, mv, seconds=seconds, concurrencies=concurrencies,
                                                  log=_log(args)), "protocols"
        elif args.jvm:
            results, kind = tuning.jvm(project, mv, seconds=seconds, concurrencies=[c for c in concurrencies if c > 1]
                                       or concurrencies, log=_log(args)), "jvm"
        else:
            results, kind = experiments.bench(project, mv, seconds=seconds, concurrencies=concurrencies,
                                              formats=formats, images=args.images, log=_log(args)), "bench"
    block = f"{kind}-{args.name}" if kind in ("bench", "first", "lone", "against") else kind  # docs/performance.md: a block per model
    out_dir, table = report.write(kind, results, project.bench_results, doc_dir, block)
    where = f"written to {out_dir}/" + (f" and {doc_dir / report.DOCS.get(kind, report.DOC)}" if doc_dir else "")
    return Output(f"{table}{where}", results)


def refuse_stale(project, archives):
    """A user error naming every (version, format) archive of `archives` that is missing or older than
    what make builds it from (marforge/archiving/inputs.py), and the make command that rebuilds them."""
    from marforge.archiving import inputs
    from marforge.errors import ArchiveError

    bad = inputs.unfit(project.model_store, archives)
    if bad:
        formats = dict.fromkeys(fmt for _, fmt, _, _ in bad)
        own = all(fmt == mv.format for mv, fmt, _, _ in bad)
        raise ArchiveError("refusing to measure archives that are not what make builds now: "
                           + "; ".join(f"{project.relative(path)}: {why}" for _, _, path, why in bad),
                           "make archive" if own else f"make archive FORMAT={','.join(formats)}")


def cmd_bench_kserve(args):
    import shlex
    import sys
    import tempfile

    from marforge.deploy import pod
    from marforge.measure import kserve_paths, report

    concurrencies = numbers(args.concurrency, "--concurrency", KSERVE_CONCURRENCY)
    if args.passes < 1:
        raise MarforgeError(f"--passes {args.passes}: not a whole number above 0", f"e.g. --passes {KSERVE_PASSES}")
    if args.seconds <= 0:
        raise MarforgeError(f"--seconds {args.seconds:g}: not above 0", f"e.g. --seconds {KSERVE_SECONDS:g}")
    wrapper = _wrapper(args)
    project = project_of(args)
    mv = project.registry.get(args.name, args.version)
    refuse_stale(project, [(mv, mv.format)])
    command = "python -m marforge " + shlex.join(sys.argv[1:])
    with tempfile.TemporaryDirectory(prefix="marforge-bench-kserve-") as out:
        results = kserve_paths.compare(project, mv, pod.runtimes(project, mv, Path(out), wrapper), pod.compared(wrapper),
                                       command, concurrencies, args.seconds, args.passes, log=_log(args))
    doc_dir = None if args.no_docs else project.docs_dir
    out_dir, table = report.write("kserve", results, project.bench_results, doc_dir)
    where = f"written to {out_dir}/" + (f" and {doc_dir / report.DOCS['kserve']}" if doc_dir else "")
    return Output(f"{table}{where}", results)


def _wrapper(args):
    """bench-kserve's kserve_wrapper (a deploy.pod.Wrapper), None without --wrapper; a user error for
    half a pair of flags, a folder that is not the wrapper's, or a Python that is not there."""
    from marforge.deploy import defaults

    venv = f"the Python of a venv with {defaults.WRAPPER_KSERVE}"
    if args.wrapper is None and args.wrapper_python is None:
        return None
    if args.wrapper_python is None:
        raise MarforgeError(f"--wrapper needs --wrapper-python, {venv}", "e.g. --wrapper-python /tmp/kserve/bin/python")
    if args.wrapper is None:
        raise MarforgeError("--wrapper-python needs --wrapper, pytorch/serve's kubernetes/kserve/kserve_wrapper folder",
                            "e.g. --wrapper serve/kubernetes/kserve/kserve_wrapper")
    folder = existing(args.wrapper, "--wrapper", "pass pytorch/serve's kubernetes/kserve/kserve_wrapper folder", folder=True)
    if not (folder / "__main__.py").is_file():
        raise MarforgeError(f"{folder}: no __main__.py (--wrapper): not pytorch/serve's kserve_wrapper folder",
                            "pass pytorch/serve's kubernetes/kserve/kserve_wrapper folder")
    python = existing(args.wrapper_python, "--wrapper-python", f"pass {venv}")
    from marforge.deploy.pod import Wrapper

    return Wrapper(folder.resolve(), python.absolute())


def cmd_tune(args):
    import time

    from marforge import registry_text
    from marforge.measure import report, tune

    project = project_of(args)
    if args.all:
        if args.name:
            raise MarforgeError("tune --all tunes every version of every model: name none", "python -m marforge tune --all")
        versions = project.registry.all_versions()
    elif not args.name:
        raise MarforgeError("tune needs a model (and optionally a version), or --all", "python -m marforge tune chexnet 0.1")
    else:
        versions = project.registry.select(args.name, args.version)
    refuse_stale(project, [(mv, mv.format) for mv in versions])
    texts, tuned = [], {}
    for mv in versions:
        results = tune.tune(project, mv, log=_log(args))
        tuned[mv.key] = results["tuned"]
        registry_text.set_tuned(project.registry_file, mv.name, mv.version, project.device, results["tuned"],
                                f"make tune, {time.strftime('%Y-%m-%d')}: docs/{report.DOCS['tune']}")
        out_dir, _ = report.write("tune", results, project.bench_results, project.docs_dir, f"tune-{mv.key}")
        texts.append(f"{mv.key}: tuned.{project.device} = {results['tuned']} written to "
                     f"{project.relative(project.registry_file)}; the measurement in {project.relative(out_dir)}/ "
                     f"and docs/{report.DOCS['tune']}\n")
    return Output("".join(texts), {"device": project.device, "tuned": tuned})


def cmd_soak(args):
    from marforge.archiving.verify import sample_files
    from marforge.measure import machine, report, soak
    from marforge.serve.rundir import RunDir

    project = project_of(args)
    run_dir = RunDir(project.run_dir)
    images = [path for path, _ in sample_files(project.registry.get(args.name))]
    result = soak.soak(run_dir.client(), run_dir, args.name, images, minutes=args.minutes, concurrency=args.concurrency,
                       window_s=args.window_seconds, log=(lambda line: None) if args.json else print)
    results = {**result.to_dict(), "machine": machine.describe(project.root)}
    out_dir, table = report.write("soak", results, project.bench_results,
                                  project.docs_dir if args.record else None, block=args.block)
    if result.problems:
        error = MeasurementFailed("soak failed: " + "; ".join(result.problems), f"read {out_dir} and {run_dir.logs}",
                                  report=result)
        print(table)
        raise error
    return Output(table + f"written to {out_dir}/" + (f" and docs/operations.md ({args.block})" if args.record else ""),
                  results)


def add_commands(command):
    from marforge.deploy import defaults as kserve_defaults

    p = command("bench", cmd_bench, "throughput, latency and answer sizes: in-process ceiling, stock TorchServe (and "
                "its own handler for the task), marforge, Flask: the rows that apply to the model's task",
                "python -m marforge bench fashiondet 2.0 --short")
    p.add_argument("name", nargs="?", default=BENCH_MODEL, help="the model to measure (default: %(default)s)")
    p.add_argument("version", nargs="?", default=BENCH_VERSION, help="its version (default: %(default)s)")
    p.add_argument("--seconds", type=float, default=10.0, help="duration of each row at each concurrency")
    p.add_argument("--short", action="store_true", help="3 s per row: a quick look (not written to docs/)")
    p.add_argument("--concurrency", default="1,16,64", help="comma-separated client counts")
    p.add_argument("--formats", help="archive formats to add as (e) rows (default: the machine's benchmark formats, "
                   "marforge/archiving/variants.py BENCH_FORMATS, less the registry's own and those its task cannot be "
                   "archived in), e.g. torchscript,compile")
    p.add_argument("--images", help="a folder of images to send (default: a detector's or segmenter's samples, "
                   "else the model's eval set, else its samples)")
    p.add_argument("--verbose", action="store_true", help="print each row as it is measured")
    p.add_argument("--no-docs", action="store_true", help="do not write the tables into docs/performance.md")
    mode = p.add_mutually_exclusive_group()  # one experiment per run: two of these flags are a usage error
    mode.add_argument("--sweep", action="store_true", help="instead: marforge's server at each concurrency for "
                      "each workers/batch/delay setting of tuning.SWEEP_GRID (how the shipped defaults were chosen)")
    mode.add_argument("--queue", action="store_true", help="instead: marforge's server with each job_queue_size of "
                      "tuning.QUEUE_SIZES under bursts of tuning.QUEUE_CLIENTS clients (how many are refused)")
    mode.add_argument("--jvm", action="store_true", help="instead: marforge's server with the frontend's shipped memory "
                      "bounds and with TorchServe's JVM defaults, alternating, at the concurrencies above 1 (into "
                      "docs/operations.md)")
    mode.add_argument("--first", action="store_true", help="instead: the first requests after READY and after a "
                      "rollout from the model's previous version, with the workers' warm-up on and off, two alternating "
                      "rounds (measure/first.py)")
    mode.add_argument("--lone", action="store_true", help="instead: one client, where its requests' time goes "
                      "(outside the server, queued with the batch window, in the worker) as shipped, with no window and "
                      "with batches of one, against Flask (measure/lone.py)")
    mode.add_argument("--against", metavar="REV", help="instead: the version as this checkout serves it and as commit REV "
                      "(its own code, archive and settings, from a git worktree) serves it, in alternating rounds at "
                      "the concurrencies above 1: a regression shows as a ratio beyond the rounds' noise (measure/against.py)")
    mode.add_argument("--protocols", action="store_true", help="instead: marforge's server sent the images as bytes, over "
                      "gRPC and as v2 JSON in turn, three rounds (what each protocol costs, into docs/kserve.md)")
    mode.add_argument("--compare-formats", action="store_true", help="instead: every registry version in every "
                      "format of --formats (build them first: make archive FORMAT=...) at the concurrencies above 1; "
                      "names the fastest format per version")
    add_paths(p, "model_store", "out")

    p = command("bench-kserve", cmd_bench_kserve, "marforge's own KServe runtime against the stock runtime's path, "
                "each pod started from its bundle as its container starts: first answer, v1 and v2 req/s, p50/p99 "
                "(into docs/kserve-performance.md)", "python -m marforge bench-kserve fashion 2.0")
    p.add_argument("name", nargs="?", default=BENCH_MODEL, help="the model to measure (default: %(default)s)")
    p.add_argument("version", nargs="?", default=BENCH_VERSION, help="its version (default: %(default)s)")
    p.add_argument("--seconds", type=float, default=KSERVE_SECONDS, help="duration of each row (default: %(default)g)")
    p.add_argument("--passes", type=int, default=KSERVE_PASSES, help="alternating passes, each pod started anew "
                   "(default: %(default)s)")
    p.add_argument("--concurrency", default=KSERVE_CONCURRENCY, help="comma-separated client counts (default: %(default)s)")
    p.add_argument("--wrapper", help="the stock runtime's proxy too: pytorch/serve's kubernetes/kserve/kserve_wrapper "
                   "folder (with the inference_pb2 stubs its image generates); it listens on 8080 and 8081")
    p.add_argument("--wrapper-python", help=f"the Python that runs --wrapper: a venv with {kserve_defaults.WRAPPER_KSERVE}")
    p.add_argument("--verbose", action="store_true", help="print each row as it is measured")
    p.add_argument("--no-docs", action="store_true", help="do not write the report into docs/kserve-performance.md")
    add_paths(p, "model_store", "out")

    p = command("tune", cmd_tune, "choose a version's workers, threads, batch size and window (those models.toml leaves "
                "\"auto\") by measuring them on this machine; written into models.toml as its `tuned` table for this kind "
                "of machine, the measurement into docs/tuning.md", "python -m marforge tune chexnet 0.1")
    p.add_argument("name", nargs="?", help="the model to tune (every version of it unless one is named)")
    p.add_argument("version", nargs="?", help="one version of it")
    p.add_argument("--all", action="store_true", help="every version of every model")
    p.add_argument("--verbose", action="store_true", help="print each row as it is measured")
    add_paths(p, "model_store", "out")

    p = command("soak", cmd_soak, "minutes of moderate load on the running server: errors, p99 drift, RSS growth",
                "python -m marforge soak fashion --minutes 5")
    p.add_argument("name")
    p.add_argument("--minutes", type=float, default=5.0)
    p.add_argument("--concurrency", type=int, default=4)
    p.add_argument("--window-seconds", type=float, default=30.0, help="length of each measured window")
    p.add_argument("--record", action="store_true", help="also write the report into docs/operations.md")
    p.add_argument("--block", default="soak", help="the generated block of docs/operations.md it goes to (default: soak)")
    add_paths(p, "run_dir", "out")
