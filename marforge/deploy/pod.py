"""A KServe bundle's TorchServe started on this machine as a pod starts it (tests, `bench-kserve`).

    own     marforge's ServingRuntime's container as written in the bundle: its command and args
            (the storage location KServe mounts at /mnt/models is the bundle's folder) and the
            InferenceService's environment
    stock   KServe's kserve-torchserve runtime: its container's args (STOCK_ARGS) with the
            InferenceService's environment, plus `--foreground` so that the process started is
            the server; with a `Wrapper`, pytorch/serve's kserve_wrapper (the proxy the runtime's
            image runs) beside it, reading the same config.properties (/mnt/models in it made
            the bundle's folder, as in the args), with the InferenceService's protocolVersion

The image's PATH is the bin folder of the Python running marforge (its torchserve, its python3).
Each pod gets a run folder of its own for TMPDIR and LOG_LOCATION, as a pod has its own /tmp. The
ports are the bundle's: write it with free ones (kserve.bundle's `ports`). `address` is the one the
routes are reached through: 127.0.0.2 reaches what binds 0.0.0.0 but not what binds 127.0.0.1, as
another pod reaches a pod's IP.
"""

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from marforge.deploy import runtime
from marforge.errors import MarforgeError, ServerError
from marforge.serve import process

OUTSIDE = "127.0.0.2"  # another address of the loopback range, as another pod reaches a pod's IP
# KServe's kserve-torchserve ClusterServingRuntime starts its container with these args (KServe's
# config/runtimes/kustomization, as in ../shared/data/kserve/kserve-torchserve.yaml).
STOCK_ARGS = ["torchserve", "--start", f"--model-store={runtime.MOUNT}/model-store",
              f"--ts-config={runtime.MOUNT}/config/config.properties"]
WRAPPER_PORTS = (8080, 8081)  # kserve_wrapper's __main__ passes ModelServer http_port=8080, grpc_port=8081 itself


@dataclass(frozen=True)
class Wrapper:
    """pytorch/serve's kubernetes/kserve/kserve_wrapper folder (with the inference_pb2 stubs its image
    generates from TorchServe's inference.proto) and the Python of a venv with kserve[storage]."""

    folder: Path
    python: Path


@dataclass
class Pod:
    """A bundle's TorchServe (and, for the stock runtime with a wrapper, its proxy) running here."""

    folder: Path
    runtime_name: str
    env: dict
    ports: dict
    server: subprocess.Popen
    started: float  # time.monotonic() when the container's process was started
    run: Path
    spec: dict = field(default_factory=dict)  # the ServingRuntime's container (own runtime)
    proxy: subprocess.Popen | None = None
    address: str = OUTSIDE

    @property
    def pid(self) -> int:
        return self.server.pid

    @property
    def routes(self) -> dict[str, str]:
        """{route: base URL} of what serves v1 and v2: TorchServe's inference port, and the proxy's."""
        host = self.address if self.runtime_name == "own" else "127.0.0.1"  # the stock config binds loopback
        routes = {"TorchServe": f"http://{host}:{self.ports['inference']}"}
        if self.proxy is not None:
            routes["kserve_wrapper"] = f"http://127.0.0.1:{WRAPPER_PORTS[0]}"
        return routes

    def ready(self) -> bool:
        """The own runtime's readiness command as the bundle writes it (the inference port answers
        /ping and every worker is READY); for the stock runtime, every worker of the snapshot's models
        READY on the management API and, with the proxy, the proxy's /v1/models/<name> ready."""
        if self.spec:
            command = self.spec["readinessProbe"]["exec"]["command"]
            return subprocess.run(command, env=self.env, capture_output=True, timeout=30, check=False).returncode == 0
        import requests

        from marforge.serve.config import read_properties

        names = json.loads(read_properties(self.folder / "config" / "config.properties")["model_snapshot"])["models"]
        try:
            for name in names:
                [described] = requests.get(f"http://127.0.0.1:{self.ports['management']}/models/{name}", timeout=5).json()
                workers = described.get("workers", [])
                if not workers or any(w["status"] != "READY" for w in workers):
                    return False
                if self.proxy is not None and requests.get(f"{self.routes['kserve_wrapper']}/v1/models/{name}",
                                                           timeout=5).json().get("ready") is not True:
                    return False
        except (requests.RequestException, ValueError, KeyError):
            return False
        return True

    def wait_ready(self, timeout: float = 240.0) -> None:
        deadline = time.monotonic() + timeout
        while not self.ready():
            self.check_alive()
            if time.monotonic() > deadline:
                raise ServerError(f"{self.folder}: the readiness check never passed in {timeout:.0f} s",
                                  f"read {self.run / 'torchserve.log'}")
            time.sleep(1)

    def check_alive(self) -> None:
        for name, child in (("TorchServe", self.server), ("kserve_wrapper", self.proxy)):
            if child is not None and child.poll() is not None:
                log = self.run / ("torchserve.log" if child is self.server else "wrapper.log")
                raise ServerError(f"{name} started from {self.folder} exited ({child.returncode}); "
                                  f"last lines of {log}:\n{log.read_text()[-2000:]}", f"read {log}")


def pod_env(folder: Path, run: Path) -> dict:
    """The container's environment here: the image's PATH, the InferenceService's env, its own /tmp."""
    service = yaml.safe_load((folder / "inferenceservice.yaml").read_text())
    return {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
            **{e["name"]: e["value"] for e in service["spec"]["predictor"]["model"]["env"]},
            "TMPDIR": str(run / "tmp"), "TEMP": str(run / "tmp"), "LOG_LOCATION": str(run / "logs")}


def command(folder: Path, runtime_name: str) -> tuple[list[str], dict]:
    """(the container's command line with /mnt/models as `folder`, the container spec or {})."""
    if runtime_name == "own":
        [spec] = yaml.safe_load((folder / "servingruntime.yaml").read_text())["spec"]["containers"]
        line = spec["command"] + spec["args"]
    else:
        spec, line = {}, [*STOCK_ARGS, "--foreground"]
    return [a.replace(runtime.MOUNT, str(folder)) for a in line], spec


@contextmanager
def started(folder: Path, runtime_name: str = "own", wrapper: Wrapper | None = None) -> Iterator[Pod]:
    """Start the bundle in `folder` as its runtime's container does; stopped (TorchServe's own
    `torchserve --stop`, then its process group) when the block ends."""
    folder = Path(folder)
    if wrapper is not None and runtime_name != "stock":
        raise MarforgeError("kserve_wrapper runs only in front of the stock runtime's TorchServe", "drop --wrapper")
    if wrapper is not None:
        busy = [p for p in WRAPPER_PORTS if process.port_open(p)]
        if busy:
            raise MarforgeError(f"port(s) {', '.join(map(str, busy))} in use here: kserve_wrapper listens on "
                                f"{WRAPPER_PORTS[0]} and {WRAPPER_PORTS[1]} (its __main__ fixes them)",
                                "stop what listens there, or run without --wrapper")
    run = Path(tempfile.mkdtemp(prefix=f"marforge-pod-{runtime_name}-"))
    (run / "tmp").mkdir()
    env = pod_env(folder, run)
    line, spec = command(folder, runtime_name)
    with ExitStack() as logs:
        log = logs.enter_context(open(run / "torchserve.log", "wb"))
        t0 = time.monotonic()
        server = subprocess.Popen(line, cwd=run, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        pod = Pod(folder, runtime_name, env, _ports(folder), server, t0, run, spec)
        try:
            if wrapper is not None:  # it reads the config's model_store: /mnt/models is `folder` here too
                config = run / "config.properties"
                config.write_text((folder / "config" / "config.properties").read_text().replace(runtime.MOUNT, str(folder)))
                pod.proxy = subprocess.Popen(
                    [str(wrapper.python), str(Path(wrapper.folder) / "__main__.py")], cwd=wrapper.folder,
                    stdout=logs.enter_context(open(run / "wrapper.log", "wb")), stderr=subprocess.STDOUT,
                    start_new_session=True, env={**env, "CONFIG_PATH": str(config),
                                                 "PROTOCOL_VERSION": _protocol(folder)})
            yield pod
        finally:
            _stop(pod)
    shutil.rmtree(run, ignore_errors=True)  # kept when the block failed: its logs are named in the error


def _protocol(folder: Path) -> str:
    """The InferenceService's protocolVersion, which the wrapper reads as PROTOCOL_VERSION."""
    service = yaml.safe_load((folder / "inferenceservice.yaml").read_text())
    return str(service["spec"]["predictor"]["model"]["protocolVersion"])


def _ports(folder: Path) -> dict:
    from urllib.parse import urlsplit

    from marforge.serve.config import read_properties

    props = read_properties(folder / "config" / "config.properties")
    return {"inference": urlsplit(props["inference_address"]).port, "management": urlsplit(props["management_address"]).port,
            "metrics": urlsplit(props["metrics_address"]).port, "grpc_inference": int(props["grpc_inference_port"]),
            "grpc_management": int(props["grpc_management_port"])}


def _stop(pod: Pod) -> None:
    if pod.proxy is not None and pod.proxy.poll() is None:
        os.killpg(pod.proxy.pid, signal.SIGTERM)
        try:
            pod.proxy.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(pod.proxy.pid, signal.SIGKILL)
    if pod.server.poll() is None:
        subprocess.run(["torchserve", "--stop", "--foreground"], env=pod.env, cwd=pod.run, timeout=90, check=False,
                       capture_output=True)
        try:
            pod.server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(pod.server.pid, signal.SIGKILL)
            pod.server.wait(timeout=30)


def local_bundle(project: Any, mv: Any, out: Path, runtime_name: str) -> Path:
    """A bundle of `mv` for this machine: sized for its cores, TorchServe's listeners on free ports
    (for the stock runtime inference and management on one port, as its 8085)."""
    from marforge.deploy import kserve

    ports = process.free_listeners()
    if runtime_name == "stock":
        ports["management"] = ports["inference"]
    return kserve.bundle(project, mv, out, f"file://{out}", kserve.Target(cpus=len(os.sched_getaffinity(0))),
                         ports=ports, runtime_name=runtime_name)


def runtimes(project: Any, mv: Any, out: Path, wrapper: Wrapper | None = None) -> list[tuple[str, Callable[[], Any]]]:
    """The pods `bench-kserve` compares, as (name, () -> `started` of its bundle, written under `out`):
    marforge's own runtime, then the stock runtime (with kserve_wrapper in front when given)."""
    own, stock = local_bundle(project, mv, out / "own", "own"), local_bundle(project, mv, out / "stock", "stock")
    return [("own runtime", lambda: started(own, "own")), ("stock runtime", lambda: started(stock, "stock", wrapper))]


def compared(wrapper: Wrapper | None) -> str:
    """What the stock side of `bench-kserve` is, in words, for its report."""
    if wrapper is not None:
        return (f"the stock runtime's path: pytorch/serve's kserve_wrapper ({wrapper.folder}, run by {wrapper.python}) "
                "on 8080 in front of TorchServe started from a `--runtime stock` bundle as kserve-torchserve starts it, "
                "and that TorchServe's own v1/v2 routes")
    return ("TorchServe's own v1/v2 routes, started from a `--runtime stock` bundle as kserve-torchserve starts it "
            "(on its own port, loopback): the floor of the stock runtime's path. Its proxy, kserve_wrapper, was not "
            "run (no --wrapper given), so what the proxy adds is not in these figures")
