"""Expected answers per sample, for a version served by the user's own handler, and how they are compared.

marforge cannot interpret the answers of a handler it did not write, so such a version's samples
(samples/<name>/, listed by labels.json) carry the answers its archive must reproduce, one JSON file
per version, `samples/<name>/expected-<version>.json` (sample file name -> the JSON body the handler
returns), recorded by `python -m marforge expect <name> <version>` or written by the user. A
registry table (`Comparison`) says how two answers are compared: numbers within an absolute
`tolerance`, the field paths to `ignore`, and the `decision` field a rollout gate compares.

    comparison = Comparison.from_table({"tolerance": 1e-5, "ignore": ["took_ms"]}, "[models.x.compare]", path)
    check(read(mv.samples, mv.version, names), answers, comparison, source=expected_file(mv.samples, mv.version))
"""

import json
import math
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from marforge.errors import ArchiveError, DataError, RegistryError
from marforge.files import write_atomic

ROOT = "(the answer)"  # how a mismatch of the whole answer names its field
ANY = "*"  # an `ignore` path segment that matches any one segment (a list position, typically)
SHOWN = 5  # mismatches an ArchiveError lists; the rest are counted
_PREFIX, _SUFFIX = "expected-", ".json"
_WIDEST = 60  # characters of a value a mismatch shows


@dataclass(frozen=True)
class Comparison:
    """How a version's answers are compared with the expected ones (and with another version's)."""

    tolerance: float = 0.0  # numbers may differ by at most this, absolute; 0 means exact
    ignore: tuple[str, ...] = ()  # field paths never compared ("took_ms", "predictions.*.took_ms")
    decision: str | None = None  # the field a rollout gate compares and a label is checked against

    @classmethod
    def from_table(cls, table: dict[str, Any], where: str, path: str | Path) -> "Comparison":
        """A Comparison from the registry table `where` of the file `path`; RegistryError naming both
        and the key for an unknown key or a value of the wrong type."""
        unknown = sorted(set(table) - set(KEYS))
        if unknown:
            raise RegistryError(f"{path}: unknown key(s) {', '.join(unknown)} in {where} (allowed: {', '.join(KEYS)})",
                                f"fix {where} in {path}")
        values = {**DEFAULTS, **table}
        tolerance, ignore, decision = values["tolerance"], values["ignore"], values["decision"]
        if isinstance(tolerance, bool) or not isinstance(tolerance, int | float) or not 0 <= tolerance < math.inf:
            _wrong(path, where, "tolerance", "a number >= 0", tolerance)
        if not isinstance(ignore, list | tuple) or not all(isinstance(p, str) and _valid(p) for p in ignore):
            _wrong(path, where, "ignore", "a list of field paths", ignore)
        if decision is not None and not (isinstance(decision, str) and _valid(decision) and ANY not in split(decision)):
            _wrong(path, where, "decision", "a field path", decision)
        return cls(tolerance=float(tolerance), ignore=tuple(ignore), decision=decision)


KEYS = tuple(f.name for f in fields(Comparison))
DEFAULTS: dict[str, Any] = {f.name: f.default for f in fields(Comparison)}


def _wrong(path: str | Path, where: str, key: str, wanted: str, value: object) -> None:
    raise RegistryError(f"{path}: {where} {key} must be {wanted}, not {value!r}", f"fix {where} in {path}")


def _valid(path: str) -> bool:
    return all(split(path))


# -- field paths -------------------------------------------------------------------------------------------
def split(path: str) -> list[str]:
    """The segments of a dot-separated field path ("predictions.0.label" -> ["predictions", "0", "label"])."""
    return path.split(".")


def _join(segments: list[str]) -> str:
    return ".".join(segments) if segments else ROOT


def field(answer: Any, path: str) -> Any:
    """The value at `path` in `answer`: a segment names a key of an object, or (an integer) a position
    in a list; DataError saying which segment is absent."""
    value = answer
    for i, segment in enumerate(split(path)):
        at = _join(split(path)[:i])
        if isinstance(value, dict):
            if segment not in value:
                raise DataError(f"the answer has no field {path}: {at} has no key {segment!r} (keys: {', '.join(map(str, value))})",
                                "check the comparison's field paths against the handler's answer")
            value = value[segment]
        elif isinstance(value, list):
            if not (segment.isascii() and segment.isdigit()) or int(segment) >= len(value):
                raise DataError(f"the answer has no field {path}: {at} is a list of {len(value)} item(s), it has no item {segment!r}",
                                "check the comparison's field paths against the handler's answer")
            value = value[int(segment)]
        else:
            raise DataError(f"the answer has no field {path}: {at} is {_kind(value)} {_show(value)}, not an object or a list",
                            "check the comparison's field paths against the handler's answer")
    return value


# -- comparing two answers -----------------------------------------------------------------------------
class _Absent:
    def __repr__(self) -> str:
        return "ABSENT"


ABSENT: Any = _Absent()  # the value a Mismatch has on the side that lacks the field


@dataclass(frozen=True)
class Mismatch:
    """One field in which a sample's answer differs from the expected one, and why."""

    sample: str
    field: str  # its path, or ROOT
    expected: Any  # ABSENT when only the answer has it
    got: Any  # ABSENT when the answer lacks it
    why: str  # "differs by 3.0e-04 > tolerance 1.0e-05", "missing", "unexpected", "list length 3 != 5", ...

    def __str__(self) -> str:
        return f"sample {self.sample}: field {self.field}: expected {_show(self.expected)}, got {_show(self.got)} ({self.why})"


def _show(value: Any) -> str:
    text = "nothing" if value is ABSENT else json.dumps(value)
    return text if len(text) <= _WIDEST else text[:_WIDEST - 3] + "..."


def _kind(value: Any) -> str:
    """The JSON type of a value, for a mismatch of types."""
    if value is None:
        return "null"
    for types, name in ((bool, "a boolean"), (int | float, "a number"), (str, "a string"), (list, "a list"), (dict, "an object")):
        if isinstance(value, types):
            return name
    return type(value).__name__


def _ignored(segments: list[str], ignore: tuple[str, ...]) -> bool:
    return any(len(p := split(pattern)) == len(segments) and all(a in (b, ANY) for a, b in zip(p, segments)) for pattern in ignore)


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def mismatches(expected: Any, got: Any, comparison: Comparison, sample: str) -> list[Mismatch]:
    """Every field in which `got` differs from `expected` (two JSON values): objects key by key (a
    missing or an extra key is a mismatch), lists position by position (a length that differs is one
    mismatch), numbers within `comparison.tolerance`, anything else exactly; `comparison.ignore`d
    fields are skipped."""
    found: list[Mismatch] = []
    _compare(expected, got, [], comparison, sample, found)
    return found


def _compare(expected: Any, got: Any, at: list[str], comparison: Comparison, sample: str, found: list[Mismatch]) -> None:
    def differ(why: str) -> None:
        found.append(Mismatch(sample, _join(at), expected, got, why))

    if _ignored(at, comparison.ignore):
        return
    if expected is ABSENT or got is ABSENT:
        differ("missing" if got is ABSENT else "unexpected")
    elif _number(expected) and _number(got):
        gap = abs(expected - got)
        if expected != got and not (math.isnan(expected) and math.isnan(got)) and not gap <= comparison.tolerance:
            differ(f"differs by {gap:.1e} > tolerance {comparison.tolerance:.1e}")
    elif _kind(expected) != _kind(got):
        differ(f"{_kind(got)} instead of {_kind(expected)}")
    elif isinstance(expected, dict):
        for key in [*expected, *(k for k in got if k not in expected)]:
            _compare(expected.get(key, ABSENT), got.get(key, ABSENT), [*at, str(key)], comparison, sample, found)
    elif isinstance(expected, list):
        if len(expected) != len(got):
            differ(f"list length {len(expected)} != {len(got)}")
        else:
            for i, (e, g) in enumerate(zip(expected, got)):
                _compare(e, g, [*at, str(i)], comparison, sample, found)
    elif expected != got:
        differ("differs")


def agrees(a: Any, b: Any, comparison: Comparison) -> bool:
    """Whether two answers agree, for a rollout gate: on their `decision` field, exactly, when the
    comparison names one (DataError when an answer lacks it), else in every compared field."""
    if comparison.decision is None:
        return not mismatches(a, b, comparison, "")
    return not mismatches(field(a, comparison.decision), field(b, comparison.decision), Comparison(), "")


def check(expected: dict[str, Any], got: dict[str, Any], comparison: Comparison, *, source: Path | None = None) -> None:
    """Nothing when every sample's answer in `got` matches `expected` (sample name -> answer), else an
    ArchiveError listing the first SHOWN mismatches across all samples and counting the rest.
    `source`, the expected file (expected_file), is named in the message and its re-recording command."""
    found = [m for sample in [*expected, *(s for s in got if s not in expected)]
             for m in mismatches(expected.get(sample, ABSENT), got.get(sample, ABSENT), comparison, sample)]
    if not found:
        return
    samples = len({m.sample for m in found})
    more = f"\n  ... and {len(found) - SHOWN} more" if len(found) > SHOWN else ""
    against = f"the expected answers in {source}" if source else "the expected answers"
    command = (expect_command(source.parent.name, source.name.removeprefix(_PREFIX).removesuffix(_SUFFIX))
               if source else expect_command("<name>", "<version>"))
    listed = "\n  ".join(map(str, found[:SHOWN]))
    raise ArchiveError(f"{len(found)} mismatch(es) in {samples} sample(s) with {against}:\n  {listed}{more}",
                       f"fix the handler or the model; if the change is intended, re-record the expected answers: {command}")


# -- the file of expected answers ---------------------------------------------------------------------
def expected_file(samples_dir: Path, version: str) -> Path:
    """The file of `version`'s expected answers in its model's samples folder (samples/<name>/)."""
    return Path(samples_dir) / f"{_PREFIX}{version}{_SUFFIX}"


def expect_command(name: str, version: str) -> str:
    """The command that records a version's expected answers."""
    return f"python -m marforge expect {name} {version}"


def read(samples_dir: Path, version: str, sample_names: list[str]) -> dict[str, Any]:
    """{sample name: expected answer} for each of `sample_names`, in their order; DataError when the
    file is missing, is not a JSON object, or lacks an answer for any of them (entries for other
    samples are left out)."""
    path = expected_file(samples_dir, version)
    command = expect_command(Path(samples_dir).name, version)
    if not path.is_file():
        raise DataError(f"{path}: no expected answers for version {version}", f"record them: {command}")
    try:
        answers = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: not valid JSON ({exc})", f"fix {path}, or re-record it: {command}") from None
    if not isinstance(answers, dict):
        raise DataError(f"{path}: must map each sample file name to its expected answer", f"fix {path}, or re-record it: {command}")
    missing = [name for name in sample_names if name not in answers]
    if missing:
        raise DataError(f"{path}: no expected answer for {len(missing)} sample(s): {', '.join(missing)}",
                        f"record them: {command}")
    return {name: answers[name] for name in sample_names}


def write(samples_dir: Path, version: str, answers: dict[str, Any]) -> Path:
    """Write `version`'s expected answers (sample name -> answer) atomically: indented, keys sorted; the file."""
    path = expected_file(samples_dir, version)
    write_atomic(path, json.dumps(answers, indent=2, sort_keys=True) + "\n")
    return path


def comparison_of(mv: Any) -> Comparison:
    """The Comparison of a registry version's `answers` table (the model's, overridden by the version's)."""
    return Comparison.from_table(dict(mv.answers), f"[models.{mv.name}] answers", "models.toml")


def described(comparison: Comparison) -> str:
    """The comparison in a few words, for reports: e.g. `numbers within 1e-05, ignoring took_ms`."""
    how = f"numbers within {comparison.tolerance:g}" if comparison.tolerance else "exactly"
    ignoring = f", ignoring {', '.join(comparison.ignore)}" if comparison.ignore else ""
    return how + ignoring


def without_ignored(answer: Any, comparison: Comparison, at: tuple[str, ...] = ()) -> Any:
    """`answer` with every field `comparison` ignores left out (what a gate compares when it names no decision)."""
    if _ignored(list(at), comparison.ignore):
        return ABSENT
    if isinstance(answer, dict):
        kept = {k: without_ignored(v, comparison, (*at, str(k))) for k, v in answer.items()}
        return {k: v for k, v in kept.items() if v is not ABSENT}
    if isinstance(answer, list):
        return [without_ignored(v, comparison, (*at, str(i))) for i, v in enumerate(answer)]
    return answer
