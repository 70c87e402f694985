"""Start, check and stop a TorchServe server for the registry's archives.

Each server lives in its own run dir (`.run/` for `make serve`, a temp dir per test session):

    .run/config.properties   the committed config.properties plus model_store and model_snapshot
    .run/endpoints.json      the inference, management and metrics URLs (for clients)
    .run/key_file.json       TorchServe's tokens (mode 600; it writes the file to its start cwd)
    .run/server.pid          the Java frontend's pid: `stop` kills exactly this server
    .run/logs/               TorchServe's logs; model_log.log has the handlers' tracebacks
    .run/tmp/                TMPDIR and TEMP: pid file, worker sockets, extracted archives

The default version of every model is fixed by a `model_snapshot` (TorchServe ignores
`defaultVersion` in `models=`), so directory order never decides which version takes traffic.
"""

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from marforge import state
from marforge.weights import sha256_of
from marforge.client import Client, Endpoints
from marforge.errors import ServerError

ADDRESS_KEYS = {"inference": "inference_address", "management": "management_address", "metrics": "metrics_address"}
GRPC_PORT_KEYS = ("grpc_inference_port", "grpc_management_port")
LOG_CONFIG = "log4j2.xml"  # the frontend's logging, read from beside the base config.properties when there


def read_properties(path):
    """Parse a Java .properties file of simple `key=value` lines; comments and blanks are skipped."""
    props = {}
    for number, line in enumerate(Path(path).read_text().splitlines(), 1):
        line = line.strip()
        if not line or line.startswith(("#", "!")):
            continue
        if "=" not in line:
            raise ServerError(f"{path}:{number}: expected key=value, got {line!r}")
        key, value = line.split("=", 1)
        props[key.strip()] = value.strip()
    return props


def model_snapshot(versions, model_store, defaults):
    """The `model_snapshot` JSON that loads `versions`, with each model's default version fixed.

    `defaults` maps every model name among `versions` to the version that takes unversioned traffic.
    """
    models = {}
    for mv in versions:
        models.setdefault(mv.name, {})[mv.version] = {
            "defaultVersion": mv.version == defaults[mv.name],
            "marName": mv.archive_path(model_store).name,
            "minWorkers": mv.serving["workers"],
            "maxWorkers": mv.serving["workers"],
            "batchSize": mv.serving["batch_size"],
            "maxBatchDelay": mv.serving["max_batch_delay_ms"],
            "responseTimeout": mv.serving["response_timeout_s"],
        }
    return {"name": "marforge.cfg", "modelCount": len(versions), "models": models}


def render_config(base_config, versions, model_store, defaults, ports=None):
    """The properties a server starts with: the base config, the model store, the snapshot, ports.

    `ports` (keys inference, management, metrics, grpc_inference, grpc_management) moves every
    listener, for a second server on the same host (the tests).
    """
    props = read_properties(base_config)
    for key in ("model_store", "load_models", "model_snapshot", "models"):
        if key in props:
            raise ServerError(f"{base_config}: {key} is set by marforge from models.toml; remove it")
    if ports:
        for api, key in ADDRESS_KEYS.items():
            scheme_host = props.get(key, "http://127.0.0.1:0").rsplit(":", 1)[0]
            props[key] = f"{scheme_host}:{ports[api]}"
        for key in GRPC_PORT_KEYS:
            props[key] = str(ports[key.removesuffix("_port")])
    props["model_store"] = str(Path(model_store).resolve())
    props["model_snapshot"] = json.dumps(model_snapshot(versions, model_store, defaults))
    return props


@dataclass
class Server:
    """A started TorchServe: its run dir, Java pid and a client for its APIs."""

    run_dir: Path
    pid: int
    client: Client

    def alive(self):
        return pid_alive(self.pid)


def pid_alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie child has not been reaped yet but is gone
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except OSError:
        return False


def threads_per_worker(total_workers, cpus=None):
    """Intra-op threads for each worker: the cores shared out, at least one.

    PyTorch's default (every core in every worker) makes workers fight over the same cores: on a
    2-core machine stock TorchServe served ~80 req/s, ~430 req/s with one thread per worker.
    """
    cpus = cpus or len(os.sched_getaffinity(0))
    return max(1, cpus // max(1, total_workers))


def start(run_dir, props, expected, timeout=300.0, threads=None, log_config=None):
    """Start TorchServe detached in `run_dir` with `props`; return once every expected version is READY.

    `expected` is a list of (name, version). `threads` sets OMP_NUM_THREADS for the workers unless
    the environment already does. `log_config` is a log4j2.xml for the frontend (None: the one in
    TorchServe's jar). On failure the server is stopped and the error names the log.
    """
    run_dir = Path(run_dir).resolve()
    if (run_dir / "server.pid").exists() and pid_alive(int((run_dir / "server.pid").read_text())):
        raise ServerError(f"a server started from {run_dir} is still running", "make stop")
    for sub in ("logs", "tmp"):
        shutil.rmtree(run_dir / sub, ignore_errors=True)
        (run_dir / sub).mkdir(parents=True)
    (run_dir / "key_file.json").unlink(missing_ok=True)
    config = run_dir / "config.properties"
    config.write_text("".join(f"{k}={v}\n" for k, v in props.items()))
    endpoints = Endpoints(**{api: props[key] for api, key in ADDRESS_KEYS.items()})
    (run_dir / "endpoints.json").write_text(json.dumps(vars(endpoints), indent=2) + "\n")
    env = {**os.environ, "TMPDIR": str(run_dir / "tmp"), "TEMP": str(run_dir / "tmp"),
           "LOG_LOCATION": str(run_dir / "logs"), "METRICS_LOCATION": str(run_dir / "logs")}
    if threads and "OMP_NUM_THREADS" not in os.environ:
        env["OMP_NUM_THREADS"] = str(threads)
    torchserve = Path(sys.executable).with_name("torchserve")
    command = [str(torchserve), "--start", "--ncs", "--ts-config", str(config), "--model-store", props["model_store"]]
    if log_config:
        command += ["--log-config", str(Path(log_config).resolve())]
    with open(run_dir / "logs" / "torchserve.out", "ab") as out:
        launcher = subprocess.run(command, cwd=run_dir, env=env, stdout=out, stderr=subprocess.STDOUT,
                                  stdin=subprocess.DEVNULL, timeout=60)
    pid_file = run_dir / "tmp" / ".model_server.pid"
    if launcher.returncode != 0 or not pid_file.exists():
        raise ServerError(f"torchserve --start failed (exit {launcher.returncode}); see {run_dir}/logs/torchserve.out")
    pid = int(pid_file.read_text().strip())
    (run_dir / "server.pid").write_text(f"{pid}\n")
    server = Server(run_dir, pid, Client(endpoints, key_file=run_dir / "key_file.json"))
    try:
        _wait_for_key_file(server, timeout=60)
        server.client.wait_ready(expected, timeout=timeout, alive=server.alive)
    except ServerError as exc:
        tail = log_tail(run_dir / "logs" / "model_log.log") or log_tail(run_dir / "logs" / "ts_log.log")
        stop(run_dir)
        raise ServerError(f"{exc.message}\n--- last lines of the server logs in {run_dir}/logs ---\n{tail}",
                          f"read {run_dir}/logs/model_log.log and ts_log.log") from None
    return server


def _wait_for_key_file(server, timeout):
    """TorchServe writes key_file.json shortly after start; requests before that would be refused."""
    deadline = time.monotonic() + timeout
    while not (server.run_dir / "key_file.json").exists():
        if not server.alive():
            raise ServerError("TorchServe exited during start-up")
        if time.monotonic() > deadline:
            raise ServerError(f"TorchServe wrote no key_file.json in {timeout:.0f}s")
        time.sleep(0.2)


def free_ports(count):
    """`count` distinct ports free on loopback right now (held open together so they differ)."""
    sockets = [socket.socket() for _ in range(count)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def port_open(port, host="127.0.0.1"):
    with socket.socket() as s:
        return s.connect_ex((host, port)) == 0


def log_tail(path, lines=30):
    try:
        return "\n".join(Path(path).read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def stop(run_dir, timeout=60.0):
    """Stop the server started from `run_dir` (and its workers); True if one was running."""
    run_dir = Path(run_dir).resolve()
    pid_path = run_dir / "server.pid"
    if not pid_path.exists():
        return False
    pid = int(pid_path.read_text().strip())
    children = _children(pid)
    running = pid_alive(pid)
    if running:
        os.kill(pid, signal.SIGTERM)
        if not _wait_gone([pid], timeout):
            os.kill(pid, signal.SIGKILL)
            _wait_gone([pid], 10)
    for child in children:  # workers normally exit with the frontend; make sure of it
        if pid_alive(child):
            os.kill(child, signal.SIGKILL)
    _wait_gone(children, 10)
    pid_path.unlink(missing_ok=True)
    (run_dir / "key_file.json").unlink(missing_ok=True)
    return running


def _children(pid):
    """Every descendant pid of `pid`, read from /proc."""
    parents = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            parents.setdefault(int(fields[1]), []).append(int(stat.parent.name))
        except (OSError, IndexError, ValueError):
            continue
    found, todo = [], [pid]
    while todo:
        for child in parents.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def _wait_gone(pids, timeout):
    deadline = time.monotonic() + timeout
    while any(pid_alive(p) for p in pids):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)
    return True


def serve(registry, model_store, run_dir, base_config, ports=None, timeout=300.0, versions=None):
    """Start a server and wait until every version it loads is READY.

    The frontend logs with the log4j2.xml beside `base_config` when there is one (the project's
    cuts TorchServe's per-request and per-batch log lines).

    It loads `versions` (default: every registry version not retired by a rollout) from built
    archives, with each model's default taken from the run dir's state (the last promotion) or,
    failing that, from the registry; when `versions` is given and leaves that default out, its
    first version of the model is the default.
    """
    model_store = Path(model_store)
    saved = state.load(run_dir)
    chosen = versions is not None  # a subset chosen by the caller: its first version of a model may be the default
    if not chosen:
        versions = [mv for mv in registry.all_versions() if mv.version not in saved["retired"].get(mv.name, [])]
    missing = [str(mv.archive_path(model_store)) for mv in versions if not mv.archive_path(model_store).is_file()]
    if missing:
        raise ServerError(f"archives not built: {', '.join(missing)}", "make archive")
    loaded = {(mv.name, mv.version) for mv in versions}
    defaults = {}
    for name in dict.fromkeys(mv.name for mv in versions):
        defaults[name] = saved["defaults"].get(name, registry.models[name].default_version)
        if chosen and (name, defaults[name]) not in loaded:
            defaults[name] = next(mv.version for mv in versions if mv.name == name)
        if (name, defaults[name]) not in loaded:
            raise ServerError(f"the default of {name} is {defaults[name]} (from {'state.json' if name in saved['defaults'] else 'models.toml'}), "
                              "which is not among the versions to load", f"marforge rollback {name}, or fix {Path(run_dir) / state.STATE_FILE}")
    props = render_config(base_config, versions, model_store, defaults, ports=ports)
    threads = threads_per_worker(sum(mv.serving["workers"] for mv in versions))
    log_config = Path(base_config).with_name(LOG_CONFIG)
    started = start(run_dir, props, sorted(loaded), timeout=timeout, threads=threads,
                    log_config=log_config if log_config.is_file() else None)
    for mv in versions:
        state.record_archive(run_dir, mv.key, sha256_of(mv.archive_path(model_store)))
    return started


def summary(server, registry):
    """What a person needs after `make serve`: the URLs, the versions, a curl to paste."""
    e = server.client.endpoints
    lines = [f"TorchServe is up (pid {server.pid}); every worker is READY.",
             f"  inference  {e.inference}", f"  management {e.management}", f"  metrics    {e.metrics}/metrics",
             f"  logs       {server.run_dir}/logs"]
    for model in registry.models.values():
        default = server.client.default_version(model.name)
        loaded = [d["modelVersion"] for d in server.client.describe(model.name)]
        lines.append(f"  {model.name}: " + ", ".join(v + (" (default)" if v == default else "") for v in loaded))
    first = next(iter(registry.models.values()))
    sample = next(iter(sorted(first.versions[first.default_version].samples.glob("*.png"))), Path("image.png"))
    sample = os.path.relpath(sample)
    lines += ["Query it (the token is TorchServe's inference key from key_file.json):",
              f'  curl -H "Authorization: Bearer $(make -s token)" -T {sample} {e.inference}/predictions/{first.name}',
              "Stop it: make stop"]
    return "\n".join(lines)
