"""The marforge command line: parse, call the library, format. `python -m marforge --help`.

Settings come from flags, then environment (MARFORGE_REGISTRY, MARFORGE_MODEL_STORE,
MARFORGE_RUN_DIR, MARFORGE_CONFIG), then the defaults below. Errors print a message and the next
command to run; set MARFORGE_DEBUG=1 for tracebacks.
"""

import argparse
import json
import os
import sys
import time
import traceback
from pathlib import Path

from marforge.errors import INFRA_ERROR, MarforgeError

# Formats `bench` serves by default; compile only on request (inductor compiles each new batch shape
# on its first request, 10-30 s on 2 cores). The Makefile's BENCH_FORMATS builds the same list.
BENCH_FORMATS = ["eager", "torchscript", "onnx", "quantized"]

EXAMPLES = {
    "archive": "python -m marforge archive fashion 2.0      # builds model_store/fashion-2.0.mar",
    "verify": "python -m marforge verify model_store/fashion-2.0.mar",
    "serve": "python -m marforge serve                       # start, wait for READY workers, print URLs",
    "stop": "python -m marforge stop",
    "status": "python -m marforge status",
    "rollout": "python -m marforge rollout fashion 2.0            # exit 3: rejected, 4: rolled back",
    "rollback": "python -m marforge rollback fashion",
    "soak": "python -m marforge soak fashion --minutes 5",
    "bench": "python -m marforge bench fashion 2.0 --short",
    "predict": "python -m marforge predict fashion samples/fashion/00000-ankle-boot.png --version 2.0",
    "token": "curl -H \"Authorization: Bearer $(python -m marforge token)\" http://127.0.0.1:8080/ping",
}


def _setting(args, name, env, default):
    value = getattr(args, name, None)
    return value if value is not None else os.environ.get(env, default)


def _registry(args):
    from marforge import registry

    return registry.load(_setting(args, "registry", "MARFORGE_REGISTRY", registry.REGISTRY_FILE))


def _model_store(args):
    return Path(_setting(args, "model_store", "MARFORGE_MODEL_STORE", "model_store"))


def _run_dir(args):
    return Path(_setting(args, "run_dir", "MARFORGE_RUN_DIR", ".run"))


def cmd_archive(args):
    from marforge import archive

    registry = _registry(args)
    versions = [registry.by_key(args.key)] if args.key else registry.select(args.name, args.version)
    for mv in versions:
        path, report = archive.build_with_report(mv, _model_store(args), fmt=args.format)
        print(f"built and verified {path} ({mv.name} {mv.version}): {report.summary()}")


def cmd_verify(args):
    from marforge import archive

    manifest = archive.manifest_of(args.mar)["model"]
    mv = _registry(args).get(manifest["modelName"], manifest["modelVersion"])
    for row in archive.verify(args.mar, mv):
        top = row["top1"]
        print(f"{row['sample']}: {top['label']} ({top['probability']:.4f}) matches the source model")
    print(f"{args.mar}: verified ({mv.name} {mv.version})")


def cmd_serve(args):
    from marforge import server

    registry = _registry(args)
    started = server.serve(registry, _model_store(args), _run_dir(args),
                           Path(_setting(args, "config", "MARFORGE_CONFIG", "config.properties")),
                           timeout=args.timeout)
    print(server.summary(started, registry))


def cmd_stop(args):
    from marforge import server

    was_running = server.stop(_run_dir(args))
    print("TorchServe stopped" if was_running else f"no server was running from {_run_dir(args)}")


def cmd_status(args):
    from marforge import status

    rows = status.collect(_client(args))
    print(json.dumps(rows, indent=2) if args.json else status.format_table(rows))


def cmd_rollout(args):
    from marforge import rollout

    _report_rollout(args, lambda log: rollout.rollout(_client(args), _registry(args), _model_store(args), _run_dir(args),
                                                     args.name, args.version, retire=args.retire,
                                                     watch_s=args.watch_seconds, log=log))


def cmd_rollback(args):
    from marforge import rollout

    _report_rollout(args, lambda log: rollout.rollback(_client(args), _registry(args), _model_store(args),
                                                      _run_dir(args), args.name, log=log))


def _report_rollout(args, run):
    """Print each step as it finishes (or only the JSON report with --json), whatever the outcome."""
    log = (lambda line: None) if args.json else print
    try:
        report = run(log)
    except MarforgeError as exc:
        report = getattr(exc, "report", None)
        if args.json and report is not None:
            print(report.to_json())
        raise
    print(report.to_json() if args.json else report.headline())


def cmd_soak(args):
    from marforge import soak

    registry = _registry(args)
    images = sorted(registry.get(args.name).samples.glob("*.png"))
    report = soak.soak(_client(args), _run_dir(args), args.name, images, minutes=args.minutes,
                       concurrency=args.concurrency, log=(lambda line: None) if args.json else print)
    if args.json:
        print(json.dumps(report.to_dict(), indent=2))
    else:
        for process, start in report.rss_start_mb.items():
            print(f"RSS {process}: {start} MB after warm-up, {report.rss_end_mb.get(process, 'gone')} MB at the end")
        print("soak passed: no errors, no memory growth, no p99 drift" if not report.problems
              else "soak FAILED: " + "; ".join(report.problems))
    if report.problems:
        raise MarforgeError("soak failed: " + "; ".join(report.problems), f"read {_run_dir(args)}/logs")


def _write_bench(out, name, data, table):
    """Write `<out>/<name>-<time>/<name>.json` and `.md`, and print the table."""
    out_dir = Path(out) / f"{name}-{time.strftime('%Y%m%d-%H%M%S')}"
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / f"{name}.json").write_text(json.dumps(data, indent=2) + "\n")
    (out_dir / f"{name}.md").write_text(table)
    print(table + f"written to {out_dir}/")


def cmd_bench(args):
    from marforge import bench

    registry = _registry(args)
    mv = registry.get(args.name, args.version)
    seconds = 3.0 if args.short else args.seconds
    concurrencies = [int(c) for c in args.concurrency.split(",")]
    if args.sweep:
        rows = bench.sweep(registry, _model_store(args), mv, bench.SWEEP_GRID, seconds=seconds,
                           concurrencies=concurrencies,
                           log=print if args.verbose else (lambda line: None))
        _write_bench(args.out, "sweep", rows, bench.sweep_markdown(rows))
        return
    if args.compare_formats:
        results = bench.compare_formats(registry, _model_store(args), registry.all_versions(),
                                        args.formats.split(",") if args.formats else BENCH_FORMATS, seconds=seconds,
                                        concurrencies=[c for c in concurrencies if c > 1] or concurrencies,
                                        log=print if args.verbose else (lambda line: None))
        _write_bench(args.out, "formats", results, bench.formats_markdown(results))
        return
    variants = args.formats.split(",") if args.formats else [f for f in BENCH_FORMATS if f != mv.format]
    results = bench.run(registry, _model_store(args), mv, seconds=seconds, concurrencies=concurrencies,
                        variants=variants, log=print if args.verbose else (lambda line: None))
    out_dir = bench.write(results, Path(args.out) / time.strftime("%Y%m%d-%H%M%S"))
    print(bench.markdown(results))
    print(f"written to {out_dir}/ (results.json, results.md, plot.png)")


def cmd_predict(args):
    client = _client(args)
    answer = client.predict(args.name, Path(args.image).read_bytes(), version=args.version)
    print(json.dumps(answer, indent=2))


def cmd_token(args):
    key = _client(args).key(args.kind)
    if key is None:
        raise MarforgeError(f"no key file in {_run_dir(args)}: the server is not running or token auth is off",
                            "make serve")
    print(key)


def _client(args):
    from marforge.client import Client

    return Client.from_run_dir(_run_dir(args))


def build_parser():
    parser = argparse.ArgumentParser(prog="marforge", description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--registry", help="the model registry (default: models.toml)")
    sub = parser.add_subparsers(dest="command", required=True)

    def command(name, func, help_text):
        p = sub.add_parser(name, help=help_text, description=help_text, epilog=f"example:\n  {EXAMPLES[name]}",
                           formatter_class=argparse.RawDescriptionHelpFormatter)
        p.set_defaults(func=func)
        return p

    p = command("archive", cmd_archive, "build and verify model_store/<name>-<version>.mar from the registry")
    p.add_argument("name", nargs="?", help="model name (default: every model)")
    p.add_argument("version", nargs="?", help="version (default: every version of the model)")
    p.add_argument("--key", help="one version by its file stem, e.g. fashion-2.0 (the Makefile uses this)")
    p.add_argument("--format", choices=("eager", "torchscript", "onnx", "compile", "quantized"),
                   help="archive format (default: the registry's, written to <key>.mar; others to <key>-<format>.mar)")
    p.add_argument("--model-store", help="output folder (default: model_store)")

    p = command("verify", cmd_verify, "load an archive as a worker does and compare it with its source model")
    p.add_argument("mar", help="path to a .mar file")

    p = command("serve", cmd_serve, "start TorchServe with every registry version and wait until all are READY")
    p.add_argument("--model-store", help="archives folder (default: model_store)")
    p.add_argument("--run-dir", help="server state, logs and keys (default: .run)")
    p.add_argument("--config", help="base TorchServe config (default: config.properties)")
    p.add_argument("--timeout", type=float, default=300.0, help="seconds to wait for READY workers")

    for name, func, text in (("stop", cmd_stop, "stop the server started by serve"),
                             ("status", cmd_status, "every model and version: default, workers, queue")):
        p = command(name, func, text)
        p.add_argument("--run-dir", help="server state, logs and keys (default: .run)")
    p.add_argument("--json", action="store_true", help="machine-readable output")

    p = command("rollout", cmd_rollout, "register, gate, promote and watch a new version; roll back on failure")
    p.add_argument("name")
    p.add_argument("version")
    p.add_argument("--retire", action="store_true", help="unregister the previous version once drained")
    p.add_argument("--watch-seconds", type=float, help="how long to watch after promotion (default: registry)")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.add_argument("--model-store", help="archives folder (default: model_store)")
    p.add_argument("--run-dir", help="server state, logs and keys (default: .run)")

    p = command("rollback", cmd_rollback, "make the previously promoted version the default again")
    p.add_argument("name")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.add_argument("--model-store", help="archives folder (default: model_store)")
    p.add_argument("--run-dir", help="server state, logs and keys (default: .run)")

    p = command("soak", cmd_soak, "minutes of moderate load on the running server: errors, p99 drift, RSS growth")
    p.add_argument("name")
    p.add_argument("--minutes", type=float, default=5.0)
    p.add_argument("--concurrency", type=int, default=4)
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.add_argument("--run-dir", help="server state, logs and keys (default: .run)")

    p = command("bench", cmd_bench, "throughput and latency: in-process ceiling, stock TorchServe, marforge, Flask")
    p.add_argument("name", nargs="?", default="fashion")
    p.add_argument("version", nargs="?", default="2.0")
    p.add_argument("--seconds", type=float, default=10.0, help="duration of each row at each concurrency")
    p.add_argument("--short", action="store_true", help="3 s per row: a quick look")
    p.add_argument("--concurrency", default="1,16,64", help="comma-separated client counts")
    p.add_argument("--formats", help="archive formats to add as (e) rows (default: eager, torchscript, onnx and "
                   "quantized, less the registry's own; compile on request), e.g. torchscript,compile")
    p.add_argument("--model-store", help="archives folder (default: model_store)")
    p.add_argument("--out", default="bench-results", help="results folder (a timestamped folder inside)")
    p.add_argument("--verbose", action="store_true", help="print each row as it is measured")
    p.add_argument("--sweep", action="store_true", help="instead: marforge's server at each concurrency for "
                   "each workers/batch/delay setting in bench.SWEEP_GRID (how the shipped defaults were chosen)")
    p.add_argument("--compare-formats", action="store_true", help="instead: every registry version in every "
                   "format of --formats (default eager,torchscript,onnx,quantized; build them first with make archive "
                   "FORMAT=...) at the concurrencies above 1; names the fastest format per version")

    p = command("predict", cmd_predict, "send one image to the server and print the JSON answer")
    p.add_argument("name")
    p.add_argument("image")
    p.add_argument("--version", help="a specific version (default: the model's default version)")
    p.add_argument("--run-dir", help="server state, logs and keys (default: .run)")

    p = command("token", cmd_token, "print the server's inference key (for curl); prints nothing else")
    p.add_argument("--kind", choices=("inference", "management"), default="inference")
    p.add_argument("--run-dir", help="server state, logs and keys (default: .run)")
    return parser


def main(argv=None):
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except MarforgeError as exc:
        if os.environ.get("MARFORGE_DEBUG"):
            traceback.print_exc()
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        return 130
    except Exception:  # a bug: show it, but say so
        traceback.print_exc()
        print("error: unexpected failure (a bug in marforge); the traceback is above", file=sys.stderr)
        return INFRA_ERROR
    return 0
