"""What an archive is built from, written down so that `make` rebuilds exactly when it changes.

The Makefile's archive rules depend on the code that builds and serves (handlers/, marforge/archiving/),
on the version's weights and metadata, and on one stamp per version,
`<model_store>/.inputs/<key>.json`: the version's own registry entry (its model definition and that
file's hash, its format, its handler options) and the hashes of its sample and eval images. The
stamp is rewritten only when its content changes, so a change to another version, to a rollout
threshold or to serving settings in models.toml rebuilds nothing. Standard library only.
"""

import hashlib
import json
from pathlib import Path

from marforge import files

STAMP_DIR = ".inputs"


def stamp_path(model_store, mv):
    return Path(model_store) / STAMP_DIR / f"{mv.key}.json"


def _folder_digest(folder):
    """sha256 over a labelled folder's file names and contents ('' when the folder does not exist)."""
    folder = Path(folder)
    if not folder.is_dir():
        return ""
    digest = hashlib.sha256()
    for path in sorted(p for p in folder.iterdir() if p.is_file()):
        digest.update(path.name.encode() + b"\0" + files.sha256(path).encode())
    return digest.hexdigest()


def inputs_of(mv):
    """The version's archive inputs that the Makefile cannot name as file prerequisites."""
    return {
        "key": mv.key,
        "model_def": str(mv.model_def),
        "model_def_sha256": files.sha256(mv.model_def) if Path(mv.model_def).is_file() else None,
        "format": mv.format,
        "handler": mv.handler,
        "samples": _folder_digest(mv.samples),
        "eval": _folder_digest(mv.eval_dir),
    }


def _stamp_text(mv):
    return json.dumps(inputs_of(mv), indent=2, sort_keys=True) + "\n"


def write_stamp(model_store, mv):
    """Write the version's stamp if its content changed; True when it was (re)written."""
    path = stamp_path(model_store, mv)
    text = _stamp_text(mv)
    if path.is_file() and path.read_text() == text:
        return False
    files.write_atomic(path, text)
    return True


def stale(model_store, mv, archive):
    """Why `archive` (one of `mv`'s, in `model_store`) is older than what make builds it from, or None
    when it is not: its weights or metadata changed since, or the version's inputs no longer match the
    stamp (or the stamp was rewritten since). An archive built without a stamp (`python -m marforge
    archive`) is judged by its weights alone."""
    archive = Path(archive)
    built = archive.stat().st_mtime
    for source in (mv.weights, mv.metadata):
        if Path(source).is_file() and Path(source).stat().st_mtime > built:
            return f"{source} changed after it was built"
    stamp = stamp_path(model_store, mv)
    if not stamp.is_file():
        return None
    if stamp.read_text() != _stamp_text(mv):
        return f"{mv.key}'s registry entry, model definition, samples or eval images changed after it was built"
    if stamp.stat().st_mtime > built:
        return f"{stamp} changed after it was built"
    return None


def unfit(model_store, archives):
    """(version, format, path, why) for each (version, format) of `archives` whose archive in
    `model_store` is missing or stale (`stale`), in order."""
    found = []
    for mv, fmt in archives:
        path = mv.archive_path(model_store, fmt)
        why = "not built" if not path.is_file() else stale(model_store, mv, path)
        if why:
            found.append((mv, fmt, path, why))
    return found
