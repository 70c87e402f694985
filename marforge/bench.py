"""`make bench`: the same images, load generator and durations against every way of serving a model.

Rows (each at every concurrency, default 1, 16 and 64):
  (a) ceiling   the archive's own handler run in-process (decode + preprocess + model, in batches of
                the version's batch size), one single-threaded process per core: what the machine can
                do with no server
  (b) stock     TorchServe with its defaults: a worker per core, no batching, every core per worker
  (b')          the same with the eager archive, when the version is served in another format
  (c) marforge  TorchServe as `make serve` runs it (config.properties + models.toml)
  (d) flask     a Flask app like the handwritten-digit example's (marforge/flask_baseline.py)
  (e) ...       each extra archive format given, served with (c)'s settings

Per row: throughput, p50/p90/p99 latency, errors, the load generator's CPU (in cores), the CPU
each server process used (in cores), and the peak RSS of the server processes. Every server first
gets a few seconds of unrecorded load at the highest concurrency (`warm_up`). The load generator
is marforge.loadgen (asyncio, keep-alive) in this process. Results go to a folder as JSON, a
markdown table and a PNG plot (throughput against p99).
"""

import asyncio
import dataclasses
import json
import multiprocessing
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import psutil

from marforge import server
from marforge.loadgen import run_load

ROOT = Path(__file__).resolve().parent.parent
WARM_UP_S = 5.0  # unrecorded load on each server before its rows


# -- measuring ------------------------------------------------------------------------------------
class Watch:
    """Samples the RSS of a process tree while a run goes on, and the CPU each process used."""

    def __init__(self, root_pid, roles):
        self.root = psutil.Process(root_pid)
        self.roles = roles  # pid -> role name, for the processes whose CPU is reported
        self.peak_mb = 0.0
        self._stop = threading.Event()
        self._cpu0 = self._cpu()

    def _tree(self):
        try:
            return [self.root] + self.root.children(recursive=True)
        except psutil.NoSuchProcess:
            return []

    def _cpu(self):
        times = {}
        for p in self._tree():
            try:
                t = p.cpu_times()
                times[p.pid] = t.user + t.system
            except psutil.NoSuchProcess:
                continue
        return times

    def _sample(self):
        while not self._stop.wait(0.25):
            total = 0
            for p in self._tree():
                try:
                    total += p.memory_info().rss
                except psutil.NoSuchProcess:
                    continue
            self.peak_mb = max(self.peak_mb, total / 2**20)

    def __enter__(self):
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()

    def cpu_cores(self, seconds):
        """CPU used per role during the run, in cores (1.0 = one core busy all the time)."""
        cpu1 = self._cpu()
        used = {}
        for pid, t in cpu1.items():
            role = self.roles.get(pid, "worker")
            used[role] = used.get(role, 0.0) + (t - self._cpu0.get(pid, 0.0)) / seconds
        return {k: round(v, 2) for k, v in used.items()}


def measure(label, url, bodies, concurrency, seconds, pid, roles, headers=None):
    """One load run against url; a result row."""
    with Watch(pid, roles) as watch:
        cpu0 = time.process_time()
        result = asyncio.run(run_load(url, bodies, concurrency, seconds, headers=headers))
        loadgen = (time.process_time() - cpu0) / result.seconds
    return {"row": label, "concurrency": concurrency, "throughput": round(result.throughput(), 1),
            "p50_ms": round(result.percentile(50), 2), "p90_ms": round(result.percentile(90), 2),
            "p99_ms": round(result.percentile(99), 2), "errors": result.errors, "requests": len(result.samples),
            "loadgen_cpu": round(loadgen, 2), "server_cpu": watch.cpu_cores(result.seconds),
            "peak_rss_mb": round(watch.peak_mb, 1)}


# -- (a) the in-process ceiling --------------------------------------------------------------------
def _ceiling_process(args):
    mar_path, paths, seconds, batch_size = args
    import torch

    from marforge.worker import LoadedArchive

    torch.set_num_threads(1)
    rows = [{"body": Path(p).read_bytes()} for p in paths]
    with LoadedArchive(mar_path) as loaded:
        handler = loaded.handler
        done, deadline = 0, time.monotonic() + seconds
        while time.monotonic() < deadline:
            batch = [rows[(done + j) % len(rows)] for j in range(batch_size)]
            handler.inference(handler.preprocess(batch))
            done += batch_size
    return done / seconds


def ceiling(mar_path, paths, seconds, batch_size, processes=None):
    """Images per second of the archive's own handler (decode, preprocess, model, softmax; batches of
    `batch_size`) run in-process, in `processes` single-threaded processes (default: one per core)."""
    processes = processes or len(os.sched_getaffinity(0))
    with multiprocessing.get_context("spawn").Pool(processes) as pool:
        rates = pool.map(_ceiling_process, [(str(mar_path), [str(p) for p in paths], seconds, batch_size)] * processes)
    return {"row": "(a) ceiling", "concurrency": None, "throughput": round(sum(rates), 1), "processes": processes}


# -- servers ---------------------------------------------------------------------------------------
def _ports():
    names = ("inference", "management", "metrics", "grpc_inference", "grpc_management")
    return dict(zip(names, server.free_ports(len(names))))


@contextmanager
def torchserve(mv, model_store, stock=False, registry=None):
    """A TorchServe serving `mv` alone: stock defaults, or marforge's shipped configuration."""
    run_dir = Path(tempfile.mkdtemp(prefix="marforge-bench-"))
    ports = _ports()
    try:
        if stock:
            cpus = len(os.sched_getaffinity(0))  # TorchServe's default_workers_per_model
            base = run_dir / "stock.properties"
            base.write_text("".join(f"{k}={v}\n" for k, v in {
                "inference_address": f"http://127.0.0.1:{ports['inference']}",
                "management_address": f"http://127.0.0.1:{ports['management']}",
                "metrics_address": f"http://127.0.0.1:{ports['metrics']}",
                "grpc_inference_port": ports["grpc_inference"], "grpc_management_port": ports["grpc_management"],
            }.items()))
            stock_mv = dataclasses.replace(mv, serving={"workers": cpus, "batch_size": 1, "max_batch_delay_ms": 100,
                                                        "response_timeout_s": 120})
            props = server.render_config(base, [stock_mv], model_store, {mv.name: mv.version})
            started = server.start(run_dir, props, [(mv.name, mv.version)], threads=None)
        else:
            started = server.serve(registry, model_store, run_dir, ROOT / "config.properties", ports=ports,
                                   versions=[mv])
        yield started
    finally:
        server.stop(run_dir)


@contextmanager
def flask_baseline(mv, registry_path):
    port = server.free_ports(1)[0]
    process = subprocess.Popen([sys.executable, "-m", "marforge.flask_baseline", mv.name, mv.version,
                                "--port", str(port), "--registry", str(registry_path)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=ROOT)
    try:
        deadline = time.monotonic() + 60
        while not server.port_open(port):
            if process.poll() is not None or time.monotonic() > deadline:
                raise server.ServerError("the Flask baseline did not start", "pip install -r requirements-bench.txt")
            time.sleep(0.2)
        yield process.pid, f"http://127.0.0.1:{port}/predict"
    finally:
        process.terminate()
        process.wait(10)


def warm_up(url, bodies, concurrency, row_seconds, headers=None):
    """Unrecorded load before a server's rows (WARM_UP_S, or `row_seconds` when the rows are shorter):
    its JIT (the Java frontend's above all) and caches reach steady state first. Measured on 2
    cores: a cold frontend at 64 clients served ~1,850 req/s where a warm one served ~2,950."""
    seconds = min(WARM_UP_S, row_seconds)
    if seconds > 0:
        asyncio.run(run_load(url, bodies, concurrency, seconds, headers=headers))


def _torchserve_rows(label, started, mv, bodies, concurrencies, seconds):
    url = f"{started.client.endpoints.inference}/predictions/{mv.name}/{mv.version}"
    key = started.client.key("inference")
    warm_up(url, bodies, max(concurrencies), seconds, headers={"Authorization": f"Bearer {key}"} if key else None)
    rows = []
    for c in concurrencies:
        key = started.client.key("inference")
        rows.append(measure(label, url, bodies, c, seconds, started.pid, {started.pid: "frontend"},
                            headers={"Authorization": f"Bearer {key}"} if key else None))
    return rows


def run(registry, model_store, mv, seconds=10.0, concurrencies=(1, 16, 64), variants=(), log=print):
    """Every row at every concurrency; returns the results dict (rows plus ratios and targets).

    `variants` names archive formats already built as model_store/<key>-<format>.mar, served as (e).
    """
    paths = sorted(registry.models[mv.name].eval_dir.glob("*.png"))
    bodies = [p.read_bytes() for p in paths]
    rows = [ceiling(mv.archive_path(model_store), paths, seconds, mv.serving["batch_size"])]
    log(f"{rows[-1]}")

    def served(label, context):
        with context as started:
            for row in _torchserve_rows(label, started, mv, bodies, concurrencies, seconds):
                rows.append(row)
                log(f"{row}")

    served("(b) torchserve stock", torchserve(mv, model_store, stock=True, registry=registry))
    served("(c) marforge", torchserve(mv, model_store, registry=registry))
    if mv.format != "eager" and mv.archive_path(model_store, "eager").is_file():
        # What stock TorchServe does with the PyTorch model itself, which is what most users start from.
        served("(b') torchserve stock, eager archive", format_server(registry, model_store, mv, "eager", stock=True))
    elif mv.format != "eager":
        log(f"(b') skipped: {mv.archive_path(model_store, 'eager')} not built (make archive FORMAT=eager)")
    with flask_baseline(mv, registry.path) as (pid, url):
        warm_up(url, bodies, max(concurrencies), seconds)
        for c in concurrencies:
            rows.append(measure("(d) flask", url, bodies, c, seconds, pid, {pid: "flask"}))
            log(f"{rows[-1]}")
    for fmt in variants:
        served(f"(e) marforge {fmt}", format_server(registry, model_store, mv, fmt))
    return {"model": mv.key, "seconds": seconds, "cpus": len(os.sched_getaffinity(0)), "rows": rows,
            "ratios": ratios(rows, concurrencies)}


@contextmanager
def format_server(registry, model_store, mv, fmt, stock=False):
    """TorchServe serving `mv` from its archive in format `fmt` (built beforehand), with marforge's
    settings or, if `stock`, TorchServe's defaults."""
    built = mv.archive_path(model_store, fmt)
    if not built.is_file():
        raise server.ServerError(f"{built} not built", f"make archive FORMAT={fmt}")
    store = Path(tempfile.mkdtemp(prefix=f"marforge-bench-{fmt}-"))
    try:
        shutil.copy(built, mv.archive_path(store))  # served under the name the server loads
        with torchserve(mv, store, stock=stock, registry=registry) as started:
            yield started
    finally:
        shutil.rmtree(store, ignore_errors=True)


def compare_formats(registry, model_store, versions, formats, seconds=5.0, concurrencies=(16, 64), log=print):
    """Every version in every format, served with marforge's settings; rows plus the winner per version.

    The winner per version is `winner`'s: the fastest at the highest concurrency, if 5% ahead of eager.
    """
    rows, winners = [], {}
    for mv in versions:
        bodies = [p.read_bytes() for p in sorted(mv.eval_dir.glob("*.png"))]
        for fmt in formats:
            with format_server(registry, model_store, mv, fmt) as started:
                for row in _torchserve_rows(fmt, started, mv, bodies, concurrencies, seconds):
                    rows.append({**row, "version": mv.key, "format": fmt})
                    log(f"{mv.key} {rows[-1]}")
        winners[mv.key] = winner([r for r in rows if r["version"] == mv.key])
    return {"seconds": seconds, "cpus": len(os.sched_getaffinity(0)), "rows": rows, "winners": winners}


def winner(rows, margin=1.05):
    """The format of `rows` (one version's) with the highest throughput at the highest concurrency
    measured; eager unless the best is at least `margin` times eager's (eager needs no conversion)."""
    top = max(r["concurrency"] for r in rows)
    at_top = {r["format"]: r["throughput"] for r in rows if r["concurrency"] == top}
    best = max(at_top, key=at_top.get)
    return best if "eager" not in at_top or at_top[best] >= margin * at_top["eager"] else "eager"


def formats_markdown(results):
    lines = [f"{results['cpus']} CPUs, {results['seconds']:.0f} s per row", "",
             "| version | format | conc. | req/s | p50 ms | p99 ms | errors | server CPU (cores) | peak RSS MB |",
             "| --- | --- | ---: | ---: | ---: | ---: | ---: | --- | ---: |"]
    for r in results["rows"]:
        cpu = ", ".join(f"{k} {v}" for k, v in sorted(r["server_cpu"].items()))
        lines.append(f"| {r['version']} | {r['format']} | {r['concurrency']} | {r['throughput']} | {r['p50_ms']} | "
                     f"{r['p99_ms']} | {r['errors']} | {cpu} | {r['peak_rss_mb']} |")
    lines += ["", "Fastest format per version (models.toml `format` serves it as <name>-<version>.mar):", ""]
    lines += [f"- {key}: {fmt}" for key, fmt in results["winners"].items()]
    return "\n".join(lines) + "\n"


def _throughput(rows, label, concurrency):
    for r in rows:
        if r["row"].startswith(label) and r["concurrency"] in (concurrency, None):
            return r
    return None


def ratios(rows, concurrencies):
    """(c)/(a), (c)/(b), (c)/(d) (and (c)/(b') when measured) at each concurrency, with the issue's
    targets checked; the targets compare with (b) on the same archive as (c)."""
    out = {}
    for c in concurrencies:
        mine = _throughput(rows, "(c)", c)
        for other in ("(a)", "(b)", "(b')", "(d)"):
            theirs = _throughput(rows, other, c)
            if mine and theirs and theirs["throughput"]:
                out[f"(c)/{other} at {c}"] = round(mine["throughput"] / theirs["throughput"], 2)
    targets = {"(c)/(b) at 16": 10.0, "(c)/(d) at 16": 4.0, "(c)/(a) at 64": 0.6}
    checks = {k: {"ratio": out.get(k), "target": v, "met": out.get(k, 0) >= v} for k, v in targets.items()}
    p99 = (_throughput(rows, "(c)", 16) or {}).get("p99_ms")
    checks["(c) p99 at 16 <= 50 ms"] = {"value": p99, "met": p99 is not None and p99 <= 50}
    return {"ratios": out, "targets": checks}


# -- reports ---------------------------------------------------------------------------------------
def markdown(results):
    lines = [f"model {results['model']}, {results['cpus']} CPUs, {results['seconds']:.0f} s per row",
             "", "| row | conc. | req/s | p50 ms | p90 ms | p99 ms | errors | loadgen CPU | server CPU (cores) | peak RSS MB |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- | ---: |"]
    for r in results["rows"]:
        if r["concurrency"] is None:
            lines.append(f"| {r['row']} ({r['processes']} processes, img/s) | - | {r['throughput']} | | | | | | | |")
            continue
        cpu = ", ".join(f"{k} {v}" for k, v in sorted(r["server_cpu"].items()))
        lines.append(f"| {r['row']} | {r['concurrency']} | {r['throughput']} | {r['p50_ms']} | {r['p90_ms']} | "
                     f"{r['p99_ms']} | {r['errors']} | {r['loadgen_cpu']} | {cpu} | {r['peak_rss_mb']} |")
    ratios_by_pair = {}
    for name, value in results["ratios"]["ratios"].items():
        pair, concurrency = name.split(" at ")
        ratios_by_pair.setdefault(pair, {})[int(concurrency)] = value
    concurrencies = sorted({c for by in ratios_by_pair.values() for c in by})
    lines += ["", "| ratio | " + " | ".join(f"at {c}" for c in concurrencies) + " |",
              "| --- |" + " ---: |" * len(concurrencies)]
    for pair, by in ratios_by_pair.items():
        lines.append(f"| {pair} | " + " | ".join(str(by.get(c, "-")) for c in concurrencies) + " |")
    lines += ["", "| check | value | target | met |", "| --- | ---: | ---: | --- |"]
    for name, check in results["ratios"]["targets"].items():
        value = check.get("ratio", check.get("value"))
        lines.append(f"| {name} | {value} | {check.get('target', '')} | {'yes' if check['met'] else 'NO'} |")
    return "\n".join(lines) + "\n"


def plot(results, path):
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot

    figure, axes = pyplot.subplots(figsize=(8, 5))
    labels = dict.fromkeys(r["row"] for r in results["rows"] if r["concurrency"] is not None)
    for label in labels:
        points = [(r["p99_ms"], r["throughput"], r["concurrency"]) for r in results["rows"] if r["row"] == label]
        axes.plot([p[0] for p in points], [p[1] for p in points], marker="o", label=label)
        for x, y, c in points:
            axes.annotate(str(c), (x, y), textcoords="offset points", xytext=(4, 4), fontsize=7)
    for r in results["rows"]:
        if r["concurrency"] is None:
            axes.axhline(r["throughput"], linestyle="--", color="grey", label=r["row"])
    axes.set_xscale("log")
    axes.set_xlabel("p99 latency (ms, log scale); labels: concurrency")
    axes.set_ylabel("throughput (requests/s)")
    axes.set_title(f"{results['model']} on {results['cpus']} CPUs")
    axes.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=110)


def write(results, out_dir):
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    (out_dir / "results.md").write_text(markdown(results))
    plot(results, out_dir / "plot.png")
    return out_dir


# One knob at a time around the shipped defaults (a worker per core, batches of 16 within 1 ms) on a
# 2-core machine: workers per version, then batch size, then the batch window.
SWEEP_GRID = [
    {"workers": w, "batch_size": b, "max_batch_delay_ms": d}
    for w, b, d in [(2, 16, 1), (1, 16, 1), (3, 16, 1), (2, 1, 1), (2, 4, 1), (2, 8, 1), (2, 32, 1),
                    (2, 16, 2), (2, 16, 5), (2, 16, 10)]
]


def sweep(registry, model_store, mv, grid, seconds=5.0, concurrencies=(1, 16, 64), log=print):
    """marforge's TorchServe serving `mv` (in its registry format) for each serving setting in `grid`
    (dicts of workers / batch_size / max_batch_delay_ms), measured at every concurrency; returns one
    row per setting and concurrency."""
    paths = sorted(registry.models[mv.name].eval_dir.glob("*.png"))
    bodies = [p.read_bytes() for p in paths]
    rows = []
    for setting in grid:
        candidate = dataclasses.replace(mv, serving={**mv.serving, **setting})
        with torchserve(candidate, model_store, registry=registry) as started:
            for row in _torchserve_rows("sweep", started, candidate, bodies, concurrencies, seconds):
                row.update(setting, threads=server.threads_per_worker(setting.get("workers", mv.serving["workers"])))
                rows.append(row)
                log(f"{row}")
    return rows


def sweep_markdown(rows):
    """One line per setting, in the order swept: throughput, p50 and p99 at each concurrency."""
    knobs = ("workers", "threads", "batch_size", "max_batch_delay_ms")
    settings = {}
    for r in rows:
        settings.setdefault(tuple(r[k] for k in knobs), {})[r["concurrency"]] = r
    concurrencies = sorted({r["concurrency"] for r in rows})
    head = ["workers", "threads/worker", "batch", "delay ms"]
    for c in concurrencies:
        head += [f"req/s @{c}", f"p50 ms @{c}", f"p99 ms @{c}"]
    lines = ["| " + " | ".join(head + ["errors"]) + " |", "|" + " ---: |" * (len(head) + 1)]
    for knob_values, by_concurrency in settings.items():
        cells = [str(v) for v in knob_values]
        for c in concurrencies:
            r = by_concurrency.get(c)
            cells += [str(r["throughput"]), str(r["p50_ms"]), str(r["p99_ms"])] if r else ["-"] * 3
        cells.append(str(sum(r["errors"] for r in by_concurrency.values())))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
