"""What a server's run dir remembers across restarts: promoted defaults, rollout history, archives.

`.run/state.json`:
    {"defaults": {"fashion": "2.0"},            # the version each model serves unversioned traffic from
     "history": {"fashion": ["1.0", "2.0"]},    # defaults in promotion order; rollback pops the last
     "retired": {"fashion": ["1.0"]},           # unregistered by `rollout --retire`; not loaded on restart
     "archives": {"fashion-2.0": "<sha256>"}}   # the bytes each registered version was loaded from

`marforge serve` reads it, so a restart serves the last promoted default (TorchServe itself
forgets: it ignores `defaultVersion` in `models=` and loads the first version it finds).
"""

import json
import os
from pathlib import Path

STATE_FILE = "state.json"


def load(run_dir):
    path = Path(run_dir) / STATE_FILE
    state = json.loads(path.read_text()) if path.exists() else {}
    for key in ("defaults", "history", "retired", "archives"):
        state.setdefault(key, {})
    return state


def save(run_dir, state):
    """Write atomically: a crash mid-write leaves the previous state, never half a file."""
    path = Path(run_dir) / STATE_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".partial")
    partial.write_text(json.dumps(state, indent=2, sort_keys=True) + "\n")
    os.replace(partial, path)


def record_default(run_dir, name, version, push=True):
    """Remember `version` as the default of `name`; `push` appends it to the rollback history."""
    state = load(run_dir)
    state["defaults"][name] = version
    history = state["history"].setdefault(name, [])
    if push and (not history or history[-1] != version):
        history.append(version)
    retired = state["retired"].get(name, [])
    if version in retired:
        retired.remove(version)
    save(run_dir, state)
    return state


def record_archive(run_dir, key, sha256):
    state = load(run_dir)
    state["archives"][key] = sha256
    save(run_dir, state)


def record_retired(run_dir, name, version):
    state = load(run_dir)
    retired = state["retired"].setdefault(name, [])
    if version not in retired:
        retired.append(version)
    save(run_dir, state)
