"""Experiments on marforge's own server settings: each serves one version as `make serve` would,
with one setting changed, against the same images and load generator as `bench` (experiments.py).

  sweep   workers, batch size and batch window, each setting of a grid (chose models.toml's [serving])
  queue   `job_queue_size` under bursts of clients (chose config.properties' job_queue_size)
  jvm     the frontend's memory bounds (config.properties' vmargs and launch.FRONTEND_ENV) against
          TorchServe's JVM defaults, in alternating rounds (issue 14: throughput and p99 must not regress)
"""

import dataclasses
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path

from marforge.measure import fixtures, machine
from marforge.measure.experiments import images_of, rows_of

# One knob at a time around the shipped defaults (a worker per core, batches of 16 within 1 ms) on
# a 2-core machine: workers per version, then batch size, then the batch window.
SWEEP_GRID = [
    {"workers": w, "batch_size": b, "max_batch_delay_ms": d}
    for w, b, d in [(2, 16, 1), (1, 16, 1), (3, 16, 1), (2, 1, 1), (2, 4, 1), (2, 8, 1), (2, 32, 1),
                    (2, 16, 2), (2, 16, 5), (2, 16, 10)]
]
# On a GPU machine (one GPU, many cores): workers sharing the GPU, then batch size, then the window.
# Not yet run (issue 12): its results choose models.toml's [serving] gpu table.
GPU_SWEEP_GRID = [
    {"workers": w, "batch_size": b, "max_batch_delay_ms": d}
    for w, b, d in [(1, 1, 0), (1, 16, 1), (2, 16, 1), (4, 16, 1), (8, 16, 1), (4, 32, 2), (4, 64, 2), (4, 16, 0),
                    (4, 16, 5)]
]
GRIDS = {"cpu": SWEEP_GRID, "gpu": GPU_SWEEP_GRID}

QUEUE_SIZES = (100, 500, 1000)  # TorchServe's default, the shipped setting, and double it
QUEUE_CLIENTS = (128, 256, 512)  # bursts of clients well past the workers' batch slots

JVM_BOUNDED, JVM_DEFAULTS = "bounded (shipped)", "TorchServe's JVM defaults"


@contextmanager
def configured(project, **changes):
    """The project with its base config.properties changed (a key set to None is removed)."""
    from marforge.serve.config import read_properties, write_properties

    with tempfile.TemporaryDirectory(prefix="marforge-tuning-") as folder:
        config = Path(folder) / project.config.name
        props = {**read_properties(project.config), **changes}
        write_properties(config, props)
        if project.log_config:
            shutil.copy(project.log_config, Path(folder) / project.log_config.name)
        yield dataclasses.replace(project, config=config)


def sweep(project, mv, grid=None, seconds=5.0, concurrencies=(1, 16, 64), log=print):
    """marforge's TorchServe serving `mv` (in its registry format) with each serving setting of `grid`
    (dicts of workers / batch_size / max_batch_delay_ms), at every concurrency; a row per setting and
    concurrency."""
    from marforge.serve.launch import threads_per_worker

    _, bodies = images_of(mv)
    rows = []
    for setting in grid or GRIDS[project.device]:
        candidate = dataclasses.replace(mv, serving={**mv.serving, **setting})
        with fixtures.torchserve(project, candidate) as target:
            for row in rows_of("sweep", target, bodies, concurrencies, seconds):
                row.update(setting, threads=threads_per_worker(candidate.serving["workers"]))
                rows.append(row)
                log(f"{row}")
    return {"seconds": seconds, "machine": machine.describe(project.root), "model": mv.key, "rows": rows}


def queue(project, mv, sizes=QUEUE_SIZES, concurrencies=QUEUE_CLIENTS, seconds=6.0, log=print):
    """marforge's TorchServe serving `mv` with each `job_queue_size`, under bursts of clients: how many
    requests it refuses (503) and how long the rest wait; a row per size and concurrency."""
    _, bodies = images_of(mv)
    rows = []
    for size in sizes:
        with configured(project, job_queue_size=str(size)) as changed, fixtures.torchserve(changed, mv) as target:
            for row in rows_of("queue", target, bodies, concurrencies, seconds):
                row["job_queue_size"] = size
                rows.append(row)
                log(f"{row}")
    return {"seconds": seconds, "machine": machine.describe(project.root), "model": mv.key, "rows": rows}


def jvm(project, mv, rounds=3, concurrencies=(16, 64), seconds=8.0, log=print):
    """marforge's TorchServe serving `mv` with the frontend's shipped bounds and with TorchServe's JVM
    defaults (config.properties without `vmargs`, glibc's default malloc arenas), one after the other
    for `rounds` rounds so that a drift of the machine falls on both; a row per setting, round and
    concurrency, with the frontend's RSS at its end."""
    import psutil

    from marforge.serve.config import read_properties
    from marforge.serve.launch import FRONTEND_ENV

    _, bodies = images_of(mv)
    settings = {JVM_BOUNDED: ({}, FRONTEND_ENV), JVM_DEFAULTS: ({"vmargs": None}, {})}
    rows = []
    for round_ in range(1, rounds + 1):
        for name, (changes, env) in settings.items():
            with configured(project, **changes) as changed, fixtures.torchserve(changed, mv, env=env) as target:
                for row in rows_of(name, target, bodies, concurrencies, seconds):
                    row.update(round=round_, frontend_rss_mb=round(psutil.Process(target.pid).memory_info().rss / 2**20, 1))
                    rows.append(row)
                    log(f"{row}")
    return {"seconds": seconds, "machine": machine.describe(project.root), "model": mv.key, "rows": rows,
            "vmargs": read_properties(project.config).get("vmargs"), "env": FRONTEND_ENV}
