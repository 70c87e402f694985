"""The TorchServe process: start it detached in a run dir, wait until it is READY, stop it by its pid.

`torchserve --start` returns at once and the Java frontend runs on; it is started with `--ncs`
(no config snapshot may override the config), its own TMPDIR/TEMP and log dir inside the run dir,
and counts as started only when describe shows every expected version's workers READY (`/ping`
answers Healthy while workers crash). `stop` stops exactly the server of one run dir, workers
included, and never a server it did not start.
"""

import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from marforge.errors import ServerError
from marforge.serve.config import PORT_NAMES, endpoints_of
from marforge.serve.rundir import RunDir


@dataclass
class Server:
    """A started TorchServe: its run dir, Java pid and a client for its APIs."""

    run_dir: RunDir
    pid: int
    client: object  # marforge.serve.client.Client

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


def start(run_dir, props, expected, timeout=300.0, threads=None, log_config=None, env=None):
    """Start TorchServe detached in `run_dir` (a RunDir) with `props`; return once every expected
    version is READY.

    `expected` is a list of (name, version). `threads` sets OMP_NUM_THREADS for the workers unless
    the environment already does. `log_config` is a log4j2.xml for the frontend (None: the one in
    TorchServe's jar). `env` adds variables the environment does not set. On failure the server is
    stopped and the error quotes the logs.
    """
    if run_dir.pid() and pid_alive(run_dir.pid()):
        raise ServerError(f"a server started from {run_dir.path} is still running", "make stop")
    run_dir.prepare_start(props, endpoints_of(props))
    env = {**(env or {}), **os.environ, "TMPDIR": str(run_dir.tmp), "TEMP": str(run_dir.tmp),
           "LOG_LOCATION": str(run_dir.logs), "METRICS_LOCATION": str(run_dir.logs)}
    if threads and "OMP_NUM_THREADS" not in os.environ:
        env["OMP_NUM_THREADS"] = str(threads)
    torchserve = Path(sys.executable).with_name("torchserve")
    command = [str(torchserve), "--start", "--ncs", "--ts-config", str(run_dir.config),
               "--model-store", props["model_store"]]
    if log_config:
        command += ["--log-config", str(Path(log_config).resolve())]
    with open(run_dir.log("launcher"), "ab") as out:
        launcher = subprocess.run(command, cwd=run_dir.path, env=env, stdout=out, stderr=subprocess.STDOUT,
                                  stdin=subprocess.DEVNULL, timeout=60)
    pid_file = run_dir.torchserve_pid_file
    if launcher.returncode != 0 or not pid_file.exists():
        raise ServerError(f"torchserve --start failed (exit {launcher.returncode}); see {run_dir.log('launcher')}")
    pid = int(pid_file.read_text().strip())
    run_dir.record_pid(pid)
    server = Server(run_dir, pid, run_dir.client())
    try:
        if props.get("disable_token_authorization") != "true":
            _wait_for_key_file(server, timeout=60)
        server.client.wait_ready(expected, timeout=timeout, alive=server.alive)
    except ServerError as exc:
        tail = run_dir.log_tail("model") or run_dir.log_tail("ts")
        stop(run_dir)
        raise ServerError(f"{exc.message}\n--- last lines of the server logs in {run_dir.logs} ---\n{tail}",
                          f"read {run_dir.log('model')} and {run_dir.log('ts')}") from None
    return server


def _wait_for_key_file(server, timeout):
    """TorchServe writes key_file.json shortly after start; requests before that would be refused."""
    deadline = time.monotonic() + timeout
    while not server.run_dir.key_file.exists():
        if not server.alive():
            raise ServerError("TorchServe exited during start-up")
        if time.monotonic() > deadline:
            raise ServerError(f"TorchServe wrote no {server.run_dir.key_file.name} in {timeout:.0f}s")
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


def free_listeners():
    """{listener name: free port} for every port a TorchServe binds (config.PORT_NAMES)."""
    return dict(zip(PORT_NAMES, free_ports(len(PORT_NAMES))))


def port_open(port, host="127.0.0.1"):
    with socket.socket() as s:
        return s.connect_ex((host, port)) == 0


def stop(run_dir, timeout=60.0):
    """Stop the server started from `run_dir` (a RunDir) and its workers; True if one was running."""
    pid = run_dir.pid()
    if pid is None:
        return False
    children = descendants(pid)
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
    run_dir.clear_pid()
    return running


def descendants(pid):
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
