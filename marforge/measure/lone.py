"""The lone client: where one client's request, sent one at a time, spends its time in marforge's
TorchServe, and what the batch window costs it.

For each setting (the version's serving table as shipped; the batch window at 0 ms; batches of one)
a fresh TorchServe serves the version as `make serve` would, is warmed up as `make bench` warms its
servers (WARM_UP_CLIENTS clients for WARM_UP_S), and one client sends the images one after another
for `seconds`. The frontend's own Prometheus counters, read before and after, split
each request's mean time:

  outside      the client's mean time per request less the frontend's ts_inference_latency: the
               load generator, the loopback TCP, Netty's parsing before the request becomes a job
               and the answer's writing after the counter stops
  queued       ts_queue_latency: from the job's creation until its batch is handed to a worker
               (TorchServe's Model.pollBatch: after the first job it polls for more for up to
               max_batch_delay ms, so a lone request waits the whole window out)
  worker       the rest of ts_inference_latency: the batch sent to the Python worker over its
               socket, the worker's decoding, TorchServe's Service.predict, the answer's way back
  of which handler   TorchServe's Service.predict on a batch of this one request, timed in a
               process of its own with the worker's thread count (the archive loaded as a worker
               loads it): what the handler (and the Service around it) does per request

with the frontend's and the workers' CPU per request beside them. Flask serving the same version,
one request at a time, is the reference a lone client compares marforge with (`make bench`'s (d)).
"""

import dataclasses
import multiprocessing
import os
import statistics
import time

import requests

from marforge.errors import MeasurementFailed
from marforge.measure import fixtures, machine, tables
from marforge.measure.experiments import WARM_UP_S, images_of
from marforge.measure.sampling import measure, warm_up
from marforge.serve.client import prometheus_total

LATENCY, QUEUED, REQUESTS = "ts_inference_latency_microseconds", "ts_queue_latency_microseconds", "ts_inference_requests_total"
SHIPPED, NO_WINDOW, BATCH_OF_ONE = "as shipped", "max_batch_delay_ms 0", "batch_size 1"
WARM_UP_CLIENTS = 16  # each server is warmed up first as `make bench`'s are: its frontend's JIT at work
# (name, serving changes) of the settings compared: the shipped table, no window, batches of one.
SETTINGS: tuple[tuple[str, dict], ...] = ((SHIPPED, {}), (NO_WINDOW, {"max_batch_delay_ms": 0}), (BATCH_OF_ONE, {"batch_size": 1}))


def _counters(metrics_url):
    text = requests.get(f"{metrics_url}/metrics", timeout=30).text
    return {name: prometheus_total(text, name) for name in (LATENCY, QUEUED, REQUESTS)}


def parts(throughput, before, after):
    """A lone client's mean ms per request (from its `throughput`, requests one at a time) split by the
    frontend's counters read `before` and `after` its run: outside, queued, worker (the docstring above)."""
    served = after[REQUESTS] - before[REQUESTS]
    if not served or not throughput:
        raise MeasurementFailed("the frontend counted no request during the run: nothing to split",
                                "check that the server runs with metrics_mode=prometheus (config.properties)")
    mean_ms = 1000.0 / throughput
    server_ms = (after[LATENCY] - before[LATENCY]) / served / 1000
    queued_ms = (after[QUEUED] - before[QUEUED]) / served / 1000
    return {"served": int(served), "mean_ms": round(mean_ms, 3), "outside_ms": round(mean_ms - server_ms, 3),
            "queued_ms": round(queued_ms, 3), "worker_ms": round(server_ms - queued_ms, 3)}


def _service_predict_ms(args):
    """The mean ms of TorchServe's Service.predict on one-request batches of `bodies` for `seconds`."""
    mar_path, paths, seconds, threads = args
    from pathlib import Path

    import torch

    from marforge.archiving.worker import LoadedArchive

    torch.set_num_threads(threads)
    bodies = [Path(p).read_bytes() for p in paths]
    with LoadedArchive(mar_path, batch_size=1) as loaded:
        def batch(i):
            return [{"requestId": b"lone", "headers": [],
                     "parameters": [{"name": "body", "contentType": "", "value": bodies[i % len(bodies)]}]}]
        for i in range(20):  # as the server's rows are, after a warm-up
            loaded.service.predict(batch(i))
        done, took, deadline = 0, 0.0, time.monotonic() + seconds
        while time.monotonic() < deadline:
            one = batch(done)
            started = time.perf_counter()
            loaded.service.predict(one)
            took += time.perf_counter() - started
            done += 1
    return took / done * 1000


def service_predict_ms(mar_path, paths, seconds, threads):
    """`_service_predict_ms` in a spawned process of its own (the model loaded there, not here)."""
    with multiprocessing.get_context("spawn").Pool(1) as pool:
        return pool.apply(_service_predict_ms, ((str(mar_path), [str(p) for p in paths], seconds, threads),))


def lone(project, mv, seconds=10.0, images=None, rounds=2, log=print):
    """A row per setting of SETTINGS and Flask (one client, `seconds`, the images of
    `images_of(mv, images)`) in each of `rounds` rounds, the order reversed every other round so that
    a drift of the machine falls on all; with the handler's own time per request beside them."""
    from marforge.serve.launch import threads_per_worker

    paths, bodies = images_of(mv, images)
    rows = []
    points = [*SETTINGS, ("(d) flask", None)]
    for round_ in range(1, rounds + 1):
        for name, changes in points if round_ % 2 else points[::-1]:
            if changes is None:
                with fixtures.flask_server(project, mv) as target:
                    warm_up(target.url, bodies, WARM_UP_CLIENTS, WARM_UP_S)
                    row = measure(name, target.url, bodies, 1, seconds, target.pid, target.roles)
                row.update(setting=name, round=round_, mean_ms=round(1000.0 / row["throughput"], 3))
            else:
                candidate = dataclasses.replace(mv, serving={**mv.serving, **changes})
                with fixtures.torchserve(project, candidate) as target:
                    warm_up(target.url, bodies, WARM_UP_CLIENTS, WARM_UP_S, headers=target.headers())
                    before = _counters(target.endpoints.metrics)
                    row = measure(name, target.url, bodies, 1, seconds, target.pid, target.roles, headers=target.headers())
                    after = _counters(target.endpoints.metrics)
                row.update(candidate.serving, setting=name, round=round_, **parts(row["throughput"], before, after),
                           threads=threads_per_worker(candidate.serving["workers"]))
            rows.append(row)
            log(f"{row}")
    threads = threads_per_worker(mv.serving["workers"])
    handler_ms = service_predict_ms(mv.archive_path(project.model_store), paths, seconds, threads)
    log(f"handler: {handler_ms:.3f} ms per request")
    return {"seconds": seconds, "machine": machine.describe(project.root), "model": mv.key, "format": mv.format,
            "images": str(images) if images else "its eval images (else its samples)",
            "rows": rows, "handler_ms": round(handler_ms, 3), "handler_threads": threads,
            "cpus": len(os.sched_getaffinity(0))}


def markdown(results):
    """Where a lone client's request goes, one line per setting (measure/lone.py says what each part is),
    then Flask's, and the handler's own time per request."""
    lines = tables.head(f"`bench --lone`: {results['model']} served as {results['format']}, {results['images']}, one "
                  f"client, {results['seconds']:g} s per row", results,
                  [("setting", "l"), ("round", "r"), ("batch", "r"), ("delay ms", "r"), ("req/s", "r"), ("p50 ms", "r"),
                   ("mean ms", "r"),
                   ("outside ms", "r"), ("queued ms", "r"), ("worker ms", "r"), ("frontend CPU ms/req", "r"),
                   ("worker CPU ms/req", "r")])
    for r in results["rows"]:
        cpu = {role: round(cores / r["throughput"] * 1000, 3) if r["throughput"] else "-"
               for role, cores in r["server_cpu"].items()}
        if r["setting"] == "(d) flask":
            lines.append(f"| (d) flask | {r['round']} | | | {r['throughput']} | {r['p50_ms']} | {r['mean_ms']} | | | | | "
                         f"{cpu.get('flask', '-')} (flask) |")
            continue
        lines.append(f"| {r['setting']} | {r['round']} | {r['batch_size']} | {r['max_batch_delay_ms']} | {r['throughput']} | "
                     f"{r['p50_ms']} | {r['mean_ms']} | {r['outside_ms']} | {r['queued_ms']} | {r['worker_ms']} | "
                     f"{cpu.get('frontend', '-')} | {cpu.get('worker', '-')} |")
    by_setting: dict = {}
    for r in results["rows"]:
        by_setting.setdefault(r["setting"], []).append(r)
    flask = statistics.mean(r["throughput"] for r in by_setting.get("(d) flask", [])) if "(d) flask" in by_setting else None
    lines += ["", "| setting | mean req/s | / (d) flask | mean ms | outside ms | queued ms | worker ms |",
              "| --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for name, rows in by_setting.items():
        mean = {k: statistics.mean(r[k] for r in rows) if all(k in r for r in rows) else None
                for k in ("throughput", "mean_ms", "outside_ms", "queued_ms", "worker_ms")}
        shown = [f"{mean['throughput']:.1f}", f"{mean['throughput'] / flask:.2f}" if flask else "-",
                 *(f"{mean[k]:.3f}" if mean[k] is not None else "" for k in ("mean_ms", "outside_ms", "queued_ms", "worker_ms"))]
        lines.append(f"| {name} | " + " | ".join(shown) + " |")
    lines += ["", f"The handler's own time per request (TorchServe's Service.predict on a batch of one, in a process "
                  f"of its own with {results['handler_threads']} thread(s)): {results['handler_ms']} ms; the rest of "
                  "\"worker ms\" is the frontend-worker protocol and the worker's loop."]
    return "\n".join(lines) + "\n"
