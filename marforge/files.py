"""Small file helpers every layer uses: content hashes and atomic writes."""

import hashlib
import os
import shutil
from pathlib import Path


def sha256(path: str | Path) -> str:
    """The hex sha256 of a file's bytes (weights, checkpoints, archives)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def write_atomic(path: str | Path, data: str | bytes) -> None:
    """Write `data` (str or bytes) to `path` so that a reader sees the old file or the new one, never half."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    partial.write_bytes(data.encode() if isinstance(data, str) else data)
    os.replace(partial, path)


def copy_atomic(source: str | Path, target: str | Path) -> None:
    """Copy `source` to `target` atomically (an archive into the model store, say)."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(target.name + ".partial")
    shutil.copyfile(source, partial)
    os.replace(partial, target)


def utc_now() -> str:
    """The time now in UTC, to the second, as ISO 8601 with a Z: when weights were made or imported."""
    from datetime import UTC, datetime

    return datetime.now(UTC).replace(microsecond=0).isoformat().replace("+00:00", "Z")
