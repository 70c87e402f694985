"""What a server's run dir remembers across restarts: promoted defaults, rollout history, archives.

`state.json` in the run dir:
    {"defaults": {"fashion": "2.0"},            # the version each model serves unversioned traffic from
     "history": {"fashion": ["1.0", "2.0"]},    # defaults in promotion order; rollback goes back one
     "retired": {"fashion": ["1.0"]},           # unregistered by `rollout --retire`; not loaded on restart
     "archives": {"fashion-2.0": "<sha256>"}}   # the bytes each registered version was loaded from

`marforge serve` reads it, so a restart serves the last promoted default (TorchServe itself
forgets: it ignores `defaultVersion` in `models=` and loads the first version it finds).
Every change is written atomically: a crash mid-write leaves the previous state, never half a file.
Every change is also a read-modify-write under an exclusive lock on `state.json.lock` beside it, so
two rollouts of two models on one server at once both keep their promotion.
"""

import fcntl
import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from marforge import files

SECTIONS = ("defaults", "history", "retired", "archives")


def load(run_dir):
    """The state of a RunDir (empty sections when it has none yet)."""
    path = run_dir.state_file
    state = json.loads(path.read_text()) if path.exists() else {}
    for key in SECTIONS:
        state.setdefault(key, {})
    return state


def save(run_dir, state: dict[str, Any]) -> None:
    """Write `state` whole (a temporary file renamed into place). Changes go through `update`."""
    files.write_atomic(run_dir.state_file, json.dumps(state, indent=2, sort_keys=True) + "\n")


@contextmanager
def _locked(run_dir) -> Iterator[None]:
    lock_path = run_dir.state_file.with_name(run_dir.state_file.name + ".lock")
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_path, "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def update(run_dir, change: Callable[[dict[str, Any]], None]) -> dict[str, Any]:
    """Load the state, apply `change` to it in place and save it, all under the run dir's lock."""
    with _locked(run_dir):
        state = load(run_dir)
        change(state)
        save(run_dir, state)
    return state


def record_promotion(run_dir, name: str, previous: str, version: str) -> dict[str, Any]:
    """`version` replaced `previous` as the default of `name`: both go on the rollback history."""
    def change(state):
        history = state["history"].setdefault(name, [])
        for v in (previous, version):
            if not history or history[-1] != v:
                history.append(v)
        state["defaults"][name] = version
        _unretire(state, name, version)
    return update(run_dir, change)


def restore_default(run_dir, name: str, previous: str) -> dict[str, Any]:
    """`previous` is the default of `name` again: the promotion after it is forgotten, it is not retired."""
    def change(state):
        history = state["history"].get(name, [])
        if history and history[-1] != previous:
            history.pop()
        state["defaults"][name] = previous
        _unretire(state, name, previous)
    return update(run_dir, change)


def _unretire(state, name, version):
    retired = state["retired"].get(name, [])
    if version in retired:
        retired.remove(version)


def record_archive(run_dir, key: str, sha256: str) -> None:
    """The archive registered as `key` (name-version) was loaded from bytes hashing to `sha256`."""
    update(run_dir, lambda state: state["archives"].__setitem__(key, sha256))


def record_retired(run_dir, name: str, version: str) -> None:
    """`version` of `name` was unregistered by `rollout --retire`: a restart does not load it."""
    def change(state):
        retired = state["retired"].setdefault(name, [])
        if version not in retired:
            retired.append(version)
    update(run_dir, change)
