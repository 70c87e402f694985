"""A version's requirements file, checked against the serving environment before the version is archived.

TorchServe installs a model's requirements only with install_py_dep_per_model=true, at model load,
which is slow and impossible offline. marforge archives no requirements for TorchServe to install:
every requirement must already be satisfied by the environment marforge runs in (the KServe image
installs SERVE_REQUIREMENTS). The file is read as pip reads a simple requirements file: one PEP 508
requirement a line, blank lines and `#` comments ignored, a trailing backslash joining the next line,
`-r other.txt` including a file relative to this one; any other option is refused.

    unmet(Path("model_defs/mine/requirements.txt"))   # ["scipy>=2.0: installed 1.4.1 does not satisfy >=2.0"]
"""

import re
from collections.abc import Iterator
from importlib import metadata
from pathlib import Path

from packaging.requirements import InvalidRequirement, Requirement
from packaging.utils import canonicalize_name

from marforge.errors import ArchiveError, RegistryError

SERVE_REQUIREMENTS = "requirements-serve.txt"  # what the serving environment and the KServe image install
_COMMENT = re.compile(r"(^|\s+)#.*$")  # pip's own rule: a `#` at the start or after whitespace
_INCLUDE = re.compile(r"^(?:-r\s*|--requirement(?:\s*=\s*|\s+))(?P<file>\S.*)$")  # -r FILE, -rFILE, --requirement[=]FILE


def unmet(requirements_file: Path) -> list[str]:
    """One line per requirement of `requirements_file` (and the files it includes) that the running
    environment does not satisfy: "name: not installed" or "name>=2.0: installed 1.4.1 does not
    satisfy >=2.0". A requirement whose marker does not hold here does not apply. RegistryError
    naming the file and line for a line that does not parse or an option other than -r."""
    found: list[str] = []
    for path, number, text in _lines(Path(requirements_file), ()):
        try:
            requirement = Requirement(text)
        except InvalidRequirement as exc:
            raise RegistryError(f"{path}:{number}: not a requirement: {text!r} ({exc})", f"fix line {number} of {path}") from None
        if requirement.marker is not None and not requirement.marker.evaluate():
            continue
        extras = f"[{','.join(sorted(requirement.extras))}]" if requirement.extras else ""
        wanted = f"{requirement.name}{extras}{requirement.specifier}"
        try:
            installed = metadata.version(canonicalize_name(requirement.name))
        except metadata.PackageNotFoundError:
            found.append(f"{wanted}: not installed")
            continue
        if not requirement.specifier.contains(installed, prereleases=True):  # pip's rule for what is installed
            found.append(f"{wanted}: installed {installed} does not satisfy {requirement.specifier}")
    return found


def check(requirements_file: Path, key: str) -> None:
    """Nothing when the serving environment satisfies every requirement of `requirements_file`, else an
    ArchiveError naming the version (`key`), the file and each unmet requirement."""
    problems = unmet(requirements_file)
    if problems:
        raise ArchiveError(f"{key}: requirements in {requirements_file} are not met by the serving environment: {'; '.join(problems)}",
                           f"install them into the serving environment: .venv/bin/pip install -r {requirements_file}, and add "
                           f"them to {SERVE_REQUIREMENTS} so that the KServe image gets them too "
                           "(TorchServe will not install them at model load)")


def _lines(path: Path, including: tuple[Path, ...]) -> Iterator[tuple[Path, int, str]]:
    """(file, line number, requirement text) for every requirement line of `path` and of the files it
    includes, in order; `including` is the chain of files that included this one (a cycle is refused)."""
    if path.resolve() in including:
        chain = " -> ".join(map(str, (*including, path.resolve())))
        raise RegistryError(f"{path}: included by itself ({chain})", f"remove the -r line that closes the cycle in {including[-1]}")
    try:
        raw = path.read_text().splitlines()
    except OSError as exc:
        raise RegistryError(f"{path}: cannot read the requirements file ({exc.strerror})", f"create {path} or fix its name") from None
    for number, text in _joined(raw):
        text = _COMMENT.sub("", text).strip()
        if not text:
            continue
        if include := _INCLUDE.match(text):
            included = path.parent / include["file"].strip()
            if not included.is_file():
                raise RegistryError(f"{path}:{number}: includes {included}, which does not exist", f"fix line {number} of {path}")
            yield from _lines(included, (*including, path.resolve()))
        elif text.startswith("-") or re.search(r"\s--?[A-Za-z]", text):
            raise RegistryError(f"{path}:{number}: {text!r}: options other than -r are not supported (the serving "
                                "environment is installed ahead, so marforge only checks what it holds)",
                                f"fix line {number} of {path}")
        else:
            yield path, number, text


def _joined(raw: list[str]) -> Iterator[tuple[int, str]]:
    """(number of its first line, text) of each logical line: a line ending in a backslash continues on the next."""
    start = 0
    parts: list[str] = []
    for number, line in enumerate(raw, 1):
        start = start or number
        if line.endswith("\\"):
            parts.append(line[:-1])
            continue
        yield start, "".join([*parts, line])
        start, parts = 0, []
    if parts:
        yield start, "".join(parts)
