"""The text corpus of the own-handler example (debsections): Debian package descriptions and their sections.

Read offline from this machine's apt lists (`apt-cache dumpavail`), parsed with the standard library:
one record per package name (the first stanza seen), its Section without an area prefix (`contrib/`,
`non-free/`), its Description with the continuation lines (` .` is an empty line). Only the records
of SECTIONS are kept. A package is held out when the sha256 of its name says so (HELD_OUT_PERCENT),
whatever the order of the records; the held-out records are ordered by that hash too.

    corpus = debian_text.load()           # DataError when apt-cache is missing or lists nothing
    train, held_out = corpus.split()
"""

import hashlib
import json
import subprocess
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from marforge.errors import DataError

DATASET_NAME = "debian-descriptions"  # what a registry train table names for this corpus
# Twelve frequent sections of Debian's main archive that mean different things: six languages'
# ecosystems (their libraries' synopses often name them) and six subjects. Left out: libs, libdevel
# and doc (they span every subject and language), utils and misc (no subject of their own).
SECTIONS = ("admin", "fonts", "games", "golang", "haskell", "javascript", "net", "perl", "python", "ruby", "rust", "science")
HELD_OUT_PERCENT = 10
FIX_HINT = "run `apt-get update` (as root) so that apt-cache lists the archive's packages, then train again"


@dataclass(frozen=True)
class Record:
    package: str
    section: str  # one of SECTIONS
    text: str  # the Description: its synopsis line, then the long description's lines, if any


def split_key(package: str) -> str:
    """The hex sha256 of a package name: it decides the split and orders the held-out records."""
    return hashlib.sha256(package.encode()).hexdigest()


def is_held_out(package: str) -> bool:
    """Whether `package` belongs to the held-out split (HELD_OUT_PERCENT of the names, by their hash)."""
    return int(split_key(package)[:8], 16) % 100 < HELD_OUT_PERCENT


def stanzas(text: str) -> Iterator[dict[str, str]]:
    """The RFC822 stanzas of `text` as field -> value; a continuation line (leading space) is appended
    to the field's value after a newline, without its first space."""
    current: dict[str, str] = {}
    last = None
    for line in text.splitlines():
        if not line.strip():
            if current:
                yield current
            current, last = {}, None
        elif line[0] in " \t":
            if last is not None:
                current[last] += "\n" + line[1:]
        elif ":" in line:
            last, value = line.split(":", 1)
            current[last] = value.strip()
    if current:
        yield current


def description_text(value: str) -> str:
    """A Description field as text: ` .` continuation lines become empty lines, trailing spaces go."""
    lines = [line.rstrip() for line in value.split("\n")]
    return "\n".join("" if line.strip() == "." else line for line in lines).strip()


def parse(text: str, sections: tuple[str, ...] = SECTIONS) -> list[Record]:
    """The records of a dumpavail text in `sections`, one per package name (the first stanza), sorted by name."""
    seen: dict[str, Record | None] = {}
    for stanza in stanzas(text):
        package = stanza.get("Package")
        if not package or package in seen:
            continue
        section = stanza.get("Section", "").rsplit("/", 1)[-1]
        description = description_text(stanza.get("Description", ""))
        seen[package] = Record(package, section, description) if section in sections and description else None
    return sorted((r for r in seen.values() if r is not None), key=lambda r: r.package)


def records_sha256(records: list[Record]) -> str:
    """The sha256 of the records normalised: a JSON list of [package, section, text], sorted by package."""
    rows = sorted([r.package, r.section, r.text] for r in records)
    return hashlib.sha256(json.dumps(rows, ensure_ascii=False, separators=(",", ":")).encode()).hexdigest()


@dataclass(frozen=True)
class Corpus:
    records: list[Record]
    provenance: dict[str, Any] = field(default_factory=dict)

    def split(self) -> tuple[list[Record], list[Record]]:
        """(train records by package name, held-out records by split_key)."""
        train = [r for r in self.records if not is_held_out(r.package)]
        held_out = sorted((r for r in self.records if is_held_out(r.package)), key=lambda r: split_key(r.package))
        return train, held_out


def _run(command: list[str]) -> str:
    try:
        done = subprocess.run(command, capture_output=True, text=True, check=False)
    except FileNotFoundError:
        raise DataError(f"{command[0]} is not installed: the {DATASET_NAME} corpus is read from apt's package lists",
                        "train on a Debian or Ubuntu machine (apt-cache), after `apt-get update`") from None
    if done.returncode != 0:
        raise DataError(f"`{' '.join(command)}` failed (exit {done.returncode}): {done.stderr.strip()[:300]}", FIX_HINT)
    return done.stdout


def _release() -> dict[str, str]:
    release = {}
    version = Path("/etc/debian_version")
    if version.is_file():
        release["debian_version"] = version.read_text().strip()
    os_release = Path("/etc/os-release")
    if os_release.is_file():
        pairs = dict(line.split("=", 1) for line in os_release.read_text().splitlines() if "=" in line)
        release["os_release"] = pairs.get("PRETTY_NAME", "").strip('"')
    return release


def provenance(records: list[Record], policy: str = "") -> dict[str, Any]:
    """Where `records` came from: the command, the release, apt's origins (`apt-cache policy` text),
    their count per section and their sha256 (records_sha256)."""
    origins = [line.strip() for line in policy.splitlines() if line.strip().startswith(("release ", "origin "))]
    counts = Counter(r.section for r in records)
    return {"source": "apt-cache dumpavail", **_release(), "apt_origins": origins,
            "sections": list(SECTIONS), "records": len(records), "per_section": {s: counts[s] for s in SECTIONS},
            "sha256": records_sha256(records), "held_out_percent": HELD_OUT_PERCENT,
            "split": "held out when int(sha256(package name)[:8], 16) % 100 < held_out_percent"}


def load() -> Corpus:
    """This machine's corpus, with its provenance; DataError when apt-cache is missing or lists nothing."""
    records = parse(_run(["apt-cache", "dumpavail"]))
    if not records:
        raise DataError(f"apt-cache dumpavail lists no package of the sections {', '.join(SECTIONS)}: "
                        "apt's package lists are empty", FIX_HINT)
    return Corpus(records, provenance(records, _run(["apt-cache", "policy"])))
