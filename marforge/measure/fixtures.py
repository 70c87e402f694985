"""The servers a benchmark measures, each started for one version on free ports and stopped after.

    torchserve(project, mv)              marforge's TorchServe, as `make serve` runs it
    torchserve(project, mv, stock=True)  TorchServe with its defaults: a worker per core, no batching,
                                         every core in every worker, its own logging
    format_server(project, mv, fmt)      either of those, serving the version's archive in format `fmt`
    stock_handler(project, mv, plan)     stock TorchServe with one of its own handlers (by_task.StockPlan)
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

from marforge.archiving.presets import IMAGENET_MEAN, IMAGENET_STD
from marforge.errors import ServerError
from marforge.serve import launch, process
from marforge.serve.client import STOCK_SERVING
from marforge.serve.rundir import RunDir


@dataclass
class Target:
    """A running server under test."""

    url: str
    pid: int
    roles: dict  # pid -> role, for the processes whose CPU is reported by name
    token: object = None  # () -> the current inference key, or None
    endpoints: object = None  # a TorchServe's Endpoints (for its gRPC and v2 rows)
    logs: Path | None = None  # a TorchServe's worker log (model_log.log), where its handlers' exceptions go
    server: object = None  # a TorchServe's process.Server (its client, for the management API)

    def headers(self):
        key = self.token() if self.token else None
        return {"Authorization": f"Bearer {key}"} if key else None


@contextmanager
def torchserve(project, mv, stock=False, env=None):
    """A TorchServe serving `mv` alone from the project's model store: marforge's settings, or stock
    (`env`: launch.serve's)."""
    run_dir = Path(tempfile.mkdtemp(prefix="marforge-bench-"))
    if stock:  # TorchServe's default_workers_per_model is the number of CPUs
        mv = dataclasses.replace(mv, serving={"workers": len(os.sched_getaffinity(0)), **STOCK_SERVING})
    try:
        started = launch.serve(dataclasses.replace(project, run_dir=run_dir), versions=[mv],
                               ports=process.free_listeners(), stock=stock, env=env)
        yield Target(f"{started.client.endpoints.inference}/predictions/{mv.name}/{mv.version}", started.pid,
                     {started.pid: "frontend"}, lambda: started.client.key("inference"), started.client.endpoints,
                     RunDir(run_dir).log("model"), started)
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


def fits_stock_classifier(mv, metadata):
    """TorchServe's own image_classifier makes 3 x 224 x 224 inputs with ImageNet's mean and std
    (Resize(256), CenterCrop(224)): a model trained on those can be served by it as it is (from a model
    definition and weights: the eager archive it is given)."""
    pre = metadata.get("preprocess")
    return mv.model_def is not None and pre is not None and (
        pre["color"], list(pre["image_size"]), tuple(pre["mean"]), tuple(pre["std"])) == (
        "rgb", [224, 224], IMAGENET_MEAN, IMAGENET_STD)


@contextmanager
def stock_handler(project, mv, plan):
    """Stock TorchServe serving an eager archive of `mv` made with one of TorchServe's own handlers
    (`plan`, a by_task.StockPlan: image_classifier, object_detector, image_segmenter, or a file of
    `plan.source` subclassing one), its model file, its weights and an index_to_name.json of its
    labels, as a user of TorchServe's examples would: the (b') row."""
    import json
    import subprocess
    import sys

    from marforge.archiving.weights import read_metadata

    store = Path(tempfile.mkdtemp(prefix="marforge-bench-stock-"))
    try:
        labels = store / "index_to_name.json"
        labels.write_text(json.dumps({str(i): label for i, label in enumerate(read_metadata(mv)["labels"])}))
        handler = plan.handler
        if plan.source is not None:
            handler = str(store / f"{plan.handler}.py")
            Path(handler).write_text(plan.source)
        (store / "tmp").mkdir()
        done = subprocess.run([str(Path(sys.executable).with_name("torch-model-archiver")), "--model-name", mv.name,
                               "--version", mv.version, "--model-file", str(mv.model_def), "--serialized-file",
                               str(mv.weights), "--handler", handler, "--extra-files", str(labels),
                               "--export-path", str(store)], capture_output=True, text=True,
                              env={**os.environ, "TMPDIR": str(store / "tmp")})
        if done.returncode != 0:
            raise ServerError(f"torch-model-archiver failed for the stock {plan.handler} archive: {done.stderr.strip()}")
        os.replace(store / f"{mv.name}.mar", mv.archive_path(store))
        with torchserve(dataclasses.replace(project, model_store=store), mv, stock=True) as target:
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
