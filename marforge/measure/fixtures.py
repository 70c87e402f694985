"""The servers a benchmark measures, each started for one version on free ports and stopped after.

    torchserve(project, mv)              marforge's TorchServe, as `make serve` runs it
    torchserve(project, mv, stock=True)  TorchServe with its defaults: a worker per core, no batching,
                                         every core in every worker, its own logging
    format_server(project, mv, fmt)      either of those, serving the version's archive in format `fmt`
    flask_server(project, mv)            the Flask app of flask_app.py, in its own process

Each yields what the load needs: the URL to post to, the headers (the inference token), and the
server's pid with the roles of its processes, for the CPU and memory figures.
"""

import dataclasses
import multiprocessing
import os
import shutil
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from marforge.errors import ServerError
from marforge.serve import launch, process
from marforge.serve.rundir import RunDir

STOCK_SERVING = {"batch_size": 1, "max_batch_delay_ms": 100, "response_timeout_s": 120}  # TorchServe's own


@dataclass
class Target:
    """A running server under test."""

    url: str
    pid: int
    roles: dict  # pid -> role, for the processes whose CPU is reported by name
    token: object = None  # () -> the current inference key, or None
    endpoints: object = None  # a TorchServe's Endpoints (for its gRPC and v2 rows)

    def headers(self):
        key = self.token() if self.token else None
        return {"Authorization": f"Bearer {key}"} if key else None


@contextmanager
def torchserve(project, mv, stock=False):
    """A TorchServe serving `mv` alone from the project's model store: marforge's settings, or stock."""
    run_dir = Path(tempfile.mkdtemp(prefix="marforge-bench-"))
    if stock:  # TorchServe's default_workers_per_model is the number of CPUs
        mv = dataclasses.replace(mv, serving={"workers": len(os.sched_getaffinity(0)), **STOCK_SERVING})
    try:
        started = launch.serve(dataclasses.replace(project, run_dir=run_dir), versions=[mv],
                               ports=process.free_listeners(), stock=stock)
        yield Target(f"{started.client.endpoints.inference}/predictions/{mv.name}/{mv.version}", started.pid,
                     {started.pid: "frontend"}, lambda: started.client.key("inference"), started.client.endpoints)
    finally:
        process.stop(RunDir(run_dir))
        shutil.rmtree(run_dir, ignore_errors=True)


@contextmanager
def format_server(project, mv, fmt, stock=False):
    """`torchserve` serving `mv` from its archive in format `fmt` (built beforehand)."""
    built = mv.archive_path(project.model_store, fmt)
    if not built.is_file():
        raise ServerError(f"{built} not built", f"make archive FORMAT={fmt}")
    store = Path(tempfile.mkdtemp(prefix=f"marforge-bench-{fmt}-"))
    try:
        shutil.copy(built, mv.archive_path(store))  # served under the name the server loads
        with torchserve(dataclasses.replace(project, model_store=store), mv, stock=stock) as target:
            yield target
    finally:
        shutil.rmtree(store, ignore_errors=True)


@contextmanager
def flask_server(project, mv):
    """The Flask baseline serving `mv`, in a process of its own."""
    from marforge.measure import flask_app

    port = process.free_ports(1)[0]
    child = multiprocessing.get_context("spawn").Process(
        target=flask_app.serve, args=(str(project.registry_file), mv.name, mv.version, port), daemon=True)
    child.start()
    try:
        deadline = time.monotonic() + 60
        while not process.port_open(port):
            if not child.is_alive() or time.monotonic() > deadline:
                raise ServerError("the Flask baseline did not start", "pip install -r requirements-bench.txt")
            time.sleep(0.2)
        yield Target(f"http://127.0.0.1:{port}/predict", child.pid, {child.pid: "flask"})
    finally:
        child.terminate()
        child.join(10)
