"""Labelled image folders: a model's samples (samples/<name>/) and eval set (eval/<name>/).

A folder holds image files and a `labels.json` mapping each file name to its true label, in the
order the images are used. Verification, rollout gates, benchmarks, the soak and `make serve`'s
example all read them through `read`; training writes them with `write`.
"""

import json
from pathlib import Path
from typing import Any

from marforge.errors import DataError

LABELS_FILE = "labels.json"
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp")


def read(folder: str | Path, what: str, hint: str | None = None) -> list[tuple[Path, Any]]:
    """[(image path, label)] of a labelled folder, in labels.json's order; DataError naming `what` if absent."""
    folder = Path(folder)
    labels_file = folder / LABELS_FILE
    if not labels_file.is_file():
        raise DataError(f"{labels_file}: no {what}", hint)
    try:
        mapping = json.loads(labels_file.read_text())
    except json.JSONDecodeError as exc:
        raise DataError(f"{labels_file}: not valid JSON ({exc})", f"fix {labels_file}") from None
    if not isinstance(mapping, dict) or not mapping:
        raise DataError(f"{labels_file}: must map each image file name to its label", f"fix {labels_file}")
    missing = [name for name in mapping if not (folder / name).is_file()]
    if missing:
        raise DataError(f"{labels_file} names {len(missing)} file(s) that are not in {folder}: "
                        f"{', '.join(missing[:3])}", f"fix {labels_file}")
    return [(folder / name, label) for name, label in mapping.items()]


def exists(folder: str | Path) -> bool:
    """Whether `folder` is a labelled folder (it has a labels.json)."""
    return (Path(folder) / LABELS_FILE).is_file()


def write(folder: str | Path, mapping: dict[str, Any]) -> None:
    """Write labels.json (file name -> label) for the images already written to `folder`."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / LABELS_FILE).write_text(json.dumps(mapping, indent=2) + "\n")
