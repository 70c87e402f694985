"""A server's run directory: the one place that knows its layout.

Each server lives in its own run dir (`.run/` for `make serve`, a temp dir per test session):

    config.properties   the base config plus the model store and the model snapshot
    endpoints.json      the inference, management and metrics URLs (for clients)
    key_file.json       TorchServe's tokens (mode 600; it writes the file to its start cwd)
    server.pid          the Java frontend's pid: `stop` stops exactly this server
    state.json          promoted defaults and rollout history that survive a restart (state.py)
    logs/               TorchServe's logs: ts_log.log, model_log.log (the handlers' tracebacks),
                        access_log.log, and torchserve.out (the launcher's own output)
    tmp/                TMPDIR and TEMP: TorchServe's pid file, worker sockets, extracted archives
"""

import json
import shutil
from pathlib import Path

from marforge.errors import ServerError
from marforge.serve.client import Client, Endpoints
from marforge.serve.config import write_properties


class RunDir:
    def __init__(self, path):
        self.path = Path(path).resolve()

    def __repr__(self):
        return f"RunDir({str(self.path)!r})"

    # -- files ------------------------------------------------------------------------------------
    @property
    def config(self):
        return self.path / "config.properties"

    @property
    def endpoints_file(self):
        return self.path / "endpoints.json"

    @property
    def key_file(self):
        return self.path / "key_file.json"

    @property
    def pid_file(self):
        return self.path / "server.pid"

    @property
    def state_file(self):
        return self.path / "state.json"

    @property
    def logs(self):
        return self.path / "logs"

    @property
    def tmp(self):
        return self.path / "tmp"

    @property
    def torchserve_pid_file(self):
        """Where TorchServe writes its own pid: $TMPDIR/.model_server.pid."""
        return self.tmp / ".model_server.pid"

    def log(self, name):
        """A log file by its short name: model (the handlers' output), ts (the frontend), access, launcher."""
        return self.logs / {"model": "model_log.log", "ts": "ts_log.log", "access": "access_log.log",
                            "launcher": "torchserve.out"}[name]

    # -- reading and writing ----------------------------------------------------------------------
    def pid(self):
        """The frontend's pid recorded by the last start, or None."""
        try:
            return int(self.pid_file.read_text().strip())
        except (FileNotFoundError, ValueError):
            return None

    def endpoints(self):
        try:
            return Endpoints(**json.loads(self.endpoints_file.read_text()))
        except FileNotFoundError:
            raise ServerError(f"{self.endpoints_file} not found: no server was started from {self.path}",
                              "make serve") from None

    def client(self, **kwargs):
        """A client for this run dir's server, with its endpoints and tokens."""
        return Client(self.endpoints(), key_file=self.key_file, **kwargs)

    def prepare_start(self, props, endpoints):
        """Fresh logs/ and tmp/, no stale keys; write the config and the endpoints for this start."""
        for folder in (self.logs, self.tmp):
            shutil.rmtree(folder, ignore_errors=True)
            folder.mkdir(parents=True)
        self.key_file.unlink(missing_ok=True)
        write_properties(self.config, props)
        self.endpoints_file.write_text(json.dumps(vars(endpoints), indent=2) + "\n")

    def record_pid(self, pid):
        self.pid_file.write_text(f"{pid}\n")

    def clear_pid(self):
        """Forget the stopped server: its pid and its keys (which die with it)."""
        self.pid_file.unlink(missing_ok=True)
        self.key_file.unlink(missing_ok=True)

    def log_tail(self, name, lines=30):
        try:
            return "\n".join(self.log(name).read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""
