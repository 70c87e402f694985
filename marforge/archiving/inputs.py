"""What an archive is built from, written down so that `make` rebuilds exactly when it changes.

The Makefile's archive rules depend on the code that builds and serves (`BUILD_CODE`: handlers/,
marforge/archiving/ and the modules they read; the Makefile takes the list from `python -m marforge
build-code`), on the version's weights and metadata, and on one stamp per version,
`<model_store>/.inputs/<key>.json`: the version's own registry entry (its format, its handler options),
the hashes of its model files (its weights or exported file, its model definition, its own handler's
files) and of its sample and eval files. The
stamp is rewritten only when its content changes, so a change to another version, to a rollout
threshold or to serving settings in models.toml rebuilds nothing. Standard library only.
"""

import hashlib
import json
from pathlib import Path

from marforge import files, shipped

STAMP_DIR = ".inputs"
CHECKOUT = Path(__file__).resolve().parents[2]  # the code's own checkout: handlers/ beside marforge/
BUILD_CODE = (*(f"handlers/{name}" for name in (shipped.HANDLER_FILE, *shipped.MODULES)),
              "marforge/archiving/*.py", "marforge/registry.py", "marforge/project.py",
              "marforge/shipped.py", "marforge/labelled.py", "marforge/files.py")


def build_code(checkout=CHECKOUT):
    """The files of `BUILD_CODE` in `checkout`, relative to it and sorted: what every archive is built from."""
    return sorted(p.relative_to(checkout) for pattern in BUILD_CODE for p in Path(checkout).glob(pattern))


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


def _file_digest(path):
    """{path: sha256} of a file (None when it is missing)."""
    return {str(path): files.sha256(path) if Path(path).is_file() else None}


def inputs_of(mv):
    """The version's archive inputs that the Makefile cannot name as file prerequisites: its registry
    entry, and the hashes of its model file (a model definition or exported file), its own handler's
    files, and its samples (with their expected answers) and eval images."""
    sources = [mv.weights, *([mv.model_def] if mv.model_def else [])]
    own = [mv.handler_file, *mv.extra_files, *([mv.requirements] if mv.requirements else [])] if mv.own_handler else []
    return {
        "key": mv.key,
        "model": {k: v for path in sources for k, v in _file_digest(path).items()},
        "exported": mv.exported,
        "own_handler": {k: v for path in own for k, v in _file_digest(path).items()},
        "answers": mv.answers,
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


def stale(model_store, mv, archive, checkout=CHECKOUT):
    """Why `archive` (one of `mv`'s, in `model_store`) is older than what make builds it from, or None
    when it is not: its weights or metadata changed since, or the version's inputs no longer match the
    stamp (or the stamp was rewritten since), or the code that builds it (`build_code` of `checkout`)
    changed since. An archive built without a stamp (`python -m marforge archive`) is judged by its
    weights and the code alone."""
    archive = Path(archive)
    built = archive.stat().st_mtime
    for source in (mv.weights, mv.metadata):
        if Path(source).is_file() and Path(source).stat().st_mtime > built:
            return f"{source} changed after it was built"
    stamp = stamp_path(model_store, mv)
    if stamp.is_file() and stamp.read_text() != _stamp_text(mv):
        return f"{mv.key}'s registry entry, model definition, samples or eval images changed after it was built"
    if stamp.is_file() and stamp.stat().st_mtime > built:
        return f"{stamp} changed after it was built"
    changed = [str(path) for path in build_code(checkout) if (Path(checkout) / path).stat().st_mtime > built]
    if changed:
        return f"the code that builds it changed after it was built ({', '.join(changed[:3])}{', ...' if len(changed) > 3 else ''})"
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
