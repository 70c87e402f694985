"""What a server's run dir remembers across restarts: promoted defaults, rollout history, archives.

`state.json` in the run dir:
    {"defaults": {"fashion": "2.0"},            # the version each model serves unversioned traffic from
     "history": {"fashion": ["1.0", "2.0"]},    # defaults in promotion order; rollback goes back one
     "retired": {"fashion": ["1.0"]},           # unregistered by `rollout --retire`; not loaded on restart
     "archives": {"fashion-2.0": "<sha256>"}}   # the bytes each registered version was loaded from

`marforge serve` reads it, so a restart serves the last promoted default (TorchServe itself
forgets: it ignores `defaultVersion` in `models=` and loads the first version it finds).
Every change is written atomically: a crash mid-write leaves the previous state, never half a file.
"""

import json

from marforge import files

SECTIONS = ("defaults", "history", "retired", "archives")


def load(run_dir):
    """The state of a RunDir (empty sections when it has none yet)."""
    path = run_dir.state_file
    state = json.loads(path.read_text()) if path.exists() else {}
    for key in SECTIONS:
        state.setdefault(key, {})
    return state


def save(run_dir, state):
    files.write_atomic(run_dir.state_file, json.dumps(state, indent=2, sort_keys=True) + "\n")


def record_promotion(run_dir, name, previous, version):
    """`version` replaced `previous` as the default of `name`: both go on the rollback history."""
    state = load(run_dir)
    history = state["history"].setdefault(name, [])
    for v in (previous, version):
        if not history or history[-1] != v:
            history.append(v)
    state["defaults"][name] = version
    _unretire(state, name, version)
    save(run_dir, state)
    return state


def restore_default(run_dir, name, previous):
    """`previous` is the default of `name` again: the promotion after it is forgotten, it is not retired."""
    state = load(run_dir)
    history = state["history"].get(name, [])
    if history and history[-1] != previous:
        history.pop()
    state["defaults"][name] = previous
    _unretire(state, name, previous)
    save(run_dir, state)
    return state


def _unretire(state, name, version):
    retired = state["retired"].get(name, [])
    if version in retired:
        retired.remove(version)


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
