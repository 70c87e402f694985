"""The model registry: `models.toml` lists every model name and version marforge builds and serves.

Each version names what it is built from (a model definition, whose weights are weights/<key>.pt, or
an exported file, weights/<key><suffix>), what serves it (marforge's handler, or the user's own), how
TorchServe serves it and (for `marforge train`) how it is trained. Files follow from `<name>-<version>`,
the version's key (marforge/project.py's folders): weights/<key>.json for provenance, samples/<name>/,
eval/<name>/, and <key>.mar in the model store (the version's `format`), <key>-<format>.mar for others.
Every default is written once: here (SERVING_DEFAULTS, ROLLOUT_DEFAULTS) or in handlers/contract.py
(HandlerConfig); models.toml only overrides them. Unknown keys are errors. Only the standard library
is used (and handlers/contract.py, stdlib-only at import): the Makefile asks it before the venv exists.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

from marforge import shipped
from marforge.device import DEVICES, cpu_count, gpu_count
from marforge.errors import RegistryError
from marforge.tuned import AUTO, TUNABLE
from marforge.tuned import check as check_tuned
from marforge.tuned import resolve as resolve_auto

if TYPE_CHECKING:
    from marforge.project import Project

Table = dict[str, Any]  # a models.toml table, parsed

# "auto": as `make tune` measured the version on this machine, else the rule (marforge/tuned.py)
SERVING_DEFAULTS: Table = {**dict.fromkeys(TUNABLE, AUTO), "response_timeout_s": 30}
SERVING_KEYS = set(SERVING_DEFAULTS)
HANDLER_DEFAULTED = ("top_k", "max_pixels", "min_side")  # filled from handlers/contract.py's HandlerConfig
TRAIN_KEYS = {"dataset", "epochs", "batch_size", "lr", "seed", "min_accuracy",  # + composed scenes' (train/scene_recipe.py)
              "task", "scenes_per_epoch", "weight_decay", "min_map", "min_miou", "ngrams", "vocab_size"}  # + text_recipe.py's
ROLLOUT_DEFAULTS: dict[str, float] = {
    "min_accuracy": 0.0,  # the candidate's accuracy on the eval set must reach this floor ...
    "max_accuracy_drop": 0.02,  # ... and be at most this far below the current default's
    "min_auroc": 0.0,  # several labels per image: the same for the mean AUROC on a labelled eval set
    "max_auroc_drop": 0.02,
    "min_map": 0.0, "max_map_drop": 0.02,  # a detector: the same for its mAP@0.5 (marforge/tasks/detection.py)
    "min_miou": 0.0, "max_miou_drop": 0.02,  # a segmenter: the same for its mean IoU
    "min_agreement": 0.9,  # no labelled eval set: the share of images decided as the default decides them
    "max_p99_ratio": 3.0,  # candidate p99 <= ratio * default p99 + slack
    "p99_slack_ms": 25.0,
    "watch_s": 10.0,  # after promotion, probe the unversioned URL this long
    "ready_timeout_s": 180.0,  # how long new workers may take to become READY
}
# exported: built from an exported file of that kind, no model_def; handler_file: served by the user's
# own handler, with its extra files and requirements; its `handler` table is passed on as written.
SOURCE_KEYS = {"exported", "handler_file", "extra_files", "requirements"}
ANSWER_KEYS = {"tolerance", "ignore", "decision"}  # `answers`: how expected answers compare (archiving/expected.py)
VERSION_KEYS = {"model_def", "format", "serving", "handler", "train", "answers", "tuned"} | SOURCE_KEYS
MODEL_KEYS = {"default_version", "format", "versions", "serving", "handler", "rollout", "answers"}
TOP_KEYS = {"paths", "serving", "handler", "rollout", "models"}
PER_DEVICE = {"serving", "handler"}  # sections that may hold a `cpu` and a `gpu` table of overrides


def handler_defaults() -> dict[str, object]:
    """The handler options every archive gets unless models.toml overrides them: HandlerConfig's own
    field defaults (handlers/contract.py), written nowhere else."""
    return {f.name: f.default for f in fields(shipped.contract().HandlerConfig) if f.name in HANDLER_DEFAULTED}


class HandlerOptions(dict[str, object]):
    """A version's handler options as models.toml sets them; an unset HANDLER_DEFAULTED key reads as its default."""

    def __missing__(self, key: str) -> object:  # KeyError for any other key, as a dict's
        return handler_defaults()[key]


def handler_keys() -> set[str]:
    """The registry's handler options (the contract says which; the rest come from the weights' metadata)."""
    return set(shipped.contract().option_keys())


@dataclass(frozen=True)
class ModelVersion:
    """One servable version: what to build it from and how to serve it."""

    name: str
    version: str
    model_def: Path | None  # None: an exported version (its weights file is the exported model)
    weights: Path  # the state_dict (weights/<key>.pt), or the exported file (weights/<key><its kind's suffix>)
    samples: Path
    serving: Table
    handler: HandlerOptions  # a HandlerOptions: unset defaulted keys read as the contract's defaults
    eval_dir: Path  # the model's labelled held-out images (eval/<name>/)
    format: str  # the archive format the server loads (one of contract.FORMATS)
    train: Table = field(default_factory=dict)
    auto: frozenset[str] = frozenset(TUNABLE)  # the serving keys models.toml leaves "auto" (tuned.py)
    tuned: Table = field(default_factory=dict)  # `make tune`'s table for this kind of machine ({}: untuned)
    exported: str | None = None  # the kind of exported file it is built from (archiving/exported.py KINDS)
    handler_file: Path | None = None  # the user's own handler module; None: marforge's image handler
    extra_files: tuple[Path, ...] = ()  # the own handler's files, shipped flat beside it
    requirements: Path | None = None  # the own handler's requirements file, checked before archiving
    answers: Table = field(default_factory=dict)  # how its expected answers are compared (ANSWER_KEYS)

    @property
    def own_handler(self) -> bool:
        """Served by the user's own handler, whose answers only the expected answers describe."""
        return self.handler_file is not None

    @property
    def auto_workers(self) -> bool:
        """serving.workers is "auto": as tuned, or one per core (per GPU) of the machine that serves it."""
        return "workers" in self.auto

    @property
    def key(self) -> str:
        """`<name>-<version>`: the stem of the weights, metadata and archive files."""
        return f"{self.name}-{self.version}"

    @property
    def metadata(self) -> Path:
        """The provenance file that sits beside the weights: weights/<key>.json."""
        return self.weights.with_name(f"{self.key}.json")

    def archive_path(self, model_store: str | Path, fmt: str | None = None) -> Path:
        """`<key>.mar` for the registry's own format (what the server loads), `<key>-<fmt>.mar` otherwise."""
        fmt = fmt or self.format
        return Path(model_store) / (f"{self.key}.mar" if fmt == self.format else f"{self.key}-{fmt}.mar")


@dataclass(frozen=True)
class Model:
    name: str
    default_version: str
    versions: dict[str, ModelVersion]  # version string -> ModelVersion, in registry order
    rollout: Table  # gate and watch thresholds (ROLLOUT_DEFAULTS, overridden by the registry)
    eval_dir: Path  # labelled held-out images for the rollout gate


@dataclass(frozen=True)
class Registry:
    path: Path  # models.toml
    models: dict[str, Model]  # name -> Model, in registry order
    device: str = "cpu"  # the machine the settings were resolved for (marforge/device.py)

    def get(self, name: str, version: str | None = None) -> ModelVersion:
        """The ModelVersion for name/version (the model's default version when version is None)."""
        model = self.models.get(name)
        if model is None:
            raise RegistryError(f"{self.path}: no model named {name!r} (known: {', '.join(self.models)})",
                                f"add a [models.{name}] table to {self.path.name}")
        version = version or model.default_version
        if version not in model.versions:
            raise RegistryError(f"{self.path}: model {name!r} has no version {version!r} (known: {', '.join(model.versions)})",
                                f'add a [models.{name}.versions."{version}"] table to {self.path.name}')
        return model.versions[version]

    def all_versions(self) -> list[ModelVersion]:  # in registry order
        return [v for m in self.models.values() for v in m.versions.values()]

    def by_key(self, key: str) -> ModelVersion:
        """The version whose files are named `key` (`<name>-<version>`), as the Makefile names them."""
        for mv in self.all_versions():
            if mv.key == key:
                return mv
        raise RegistryError(f"{self.path}: no version is named {key!r} (known: {', '.join(v.key for v in self.all_versions())})",
                            f"use one of those keys (<name>-<version>), or add the version to {self.path.name}")

    def select(self, name: str | None = None, version: str | None = None) -> list[ModelVersion]:
        """The versions to act on: all of them, every version of one model, or one version."""
        if name is None:
            return self.all_versions()
        if version is None:
            return list(self.models[self.get(name).name].versions.values())
        return [self.get(name, version)]


def _check_keys(table: Table, allowed: set[str], where: str, path: Path) -> None:
    if unknown := sorted(set(table) - allowed):
        raise RegistryError(f"{path}: unknown key(s) {', '.join(unknown)} in {where} (allowed: {', '.join(sorted(allowed))})")


def _layered(base: Table, table: Table, section: str, where: str, path: Path, allowed: dict[str, set[str]]) -> Table:
    """`base` overridden by `table[section]`, with unknown keys refused; its per-device tables (`cpu`,
    `gpu`) are merged the same way, key by key."""
    mine: Table = table.get(section, {})
    merged = {**base, **mine}
    label = f"{where}.{section}" if where else f"[{section}]"
    keys = allowed[section] | (set(DEVICES) if section in PER_DEVICE else set())
    _check_keys(merged, keys, label, path)
    for device in DEVICES:
        if device in merged:
            if not isinstance(merged[device], dict):
                raise RegistryError(f"{path}: {label}.{device} must be a table of {section} settings")
            _check_keys(merged[device], allowed[section], f"{label}.{device}", path)
            merged[device] = {**base.get(device, {}), **mine.get(device, {})}
    return merged


def _for_device(settings: Table, device: str) -> Table:
    """Settings with the table of `device` applied and every per-device table removed."""
    chosen = {k: v for k, v in settings.items() if k not in DEVICES}
    chosen.update(settings.get(device, {}))
    return chosen


def _require(table: Table, key: str, where: str, path: Path) -> Any:
    if key not in table:
        raise RegistryError(f"{path}: {where} needs a {key!r} key")
    return table[key]


def _format(table: Table, default: str, where: str, path: Path, device: str = "cpu") -> str:
    """The archive format: one name, or a table with one per device ({cpu = "onnx", gpu = "eager"})."""
    fmt = table.get("format", default)
    if isinstance(fmt, dict):
        _check_keys(fmt, set(DEVICES), f"{where} format", path)
        fmt = fmt.get(device, shipped.contract().DEFAULT_FORMAT)
    formats: tuple[str, ...] = shipped.contract().FORMATS
    if fmt not in formats:
        raise RegistryError(f"{path}: {where} format {fmt!r} is not one of {', '.join(formats)}")
    return str(fmt)


def load(path: str | Path) -> Registry:
    """The registry in the models.toml at `path` (its project's paths ignore the environment)."""
    from marforge.project import Project
    return Project.at(path).registry


def from_project(project: Project) -> Registry:
    """Validate the project's models.toml into a Registry; file paths come from the project's folders."""
    data, path = project.data, project.registry_file
    allowed = {"serving": SERVING_KEYS, "handler": handler_keys(), "rollout": set(ROLLOUT_DEFAULTS), "train": TRAIN_KEYS,
               "answers": ANSWER_KEYS}
    _check_keys(data, TOP_KEYS, "the top level", path)
    top = {section: _layered(defaults, data, section, "", path, allowed)
           for section, defaults in (("serving", SERVING_DEFAULTS), ("handler", {}), ("rollout", ROLLOUT_DEFAULTS))}
    default_format: str = shipped.contract().DEFAULT_FORMAT
    device = project.device
    machine = (cpu_count(), max(1, gpu_count()) if device == "gpu" else 0)  # cores and GPUs, for "auto"
    models: dict[str, Model] = {}
    for name, mtable in data.get("models", {}).items():
        where = f"[models.{name}]"
        _check_keys(mtable, MODEL_KEYS, where, path)
        layer = {section: _layered(top[section], mtable, section, where, path, allowed) for section in top}
        answers = _layered({}, mtable, "answers", where, path, allowed)
        model_format = _format(mtable, default_format, where, path, device)
        eval_dir = project.eval_root / name
        versions: dict[str, ModelVersion] = {}
        for version, vtable in _require(mtable, "versions", where, path).items():
            vwhere = f'[models.{name}.versions."{version}"]'
            _check_keys(vtable, VERSION_KEYS, vwhere, path)
            source = _source(project, f"{name}-{version}", vtable, vwhere, path)
            serving = _for_device(_layered(layer["serving"], vtable, "serving", vwhere, path, allowed), device)
            handler = (dict(vtable.get("handler", {})) if source["handler_file"] else
                       _for_device(_layered(layer["handler"], vtable, "handler", vwhere, path, allowed), device))
            mine = check_tuned(vtable.get("tuned", {}), vwhere, path).get(device, {})
            auto = resolve_auto(serving, mine, *machine, vwhere, path, own_handler=source["handler_file"] is not None)
            fmt = source.pop("format") or _format(vtable, model_format, vwhere, path, device)
            versions[version] = ModelVersion(
                name=name, version=version, samples=project.samples_dir / name, eval_dir=eval_dir,
                serving=serving, handler=HandlerOptions(handler), format=fmt,
                train=_layered({}, vtable, "train", vwhere, path, allowed), auto=auto, tuned=mine,
                answers={**answers, **_layered({}, vtable, "answers", vwhere, path, allowed)}, **source)
        default = _require(mtable, "default_version", where, path)
        if default not in versions:
            raise RegistryError(f"{path}: {where} default_version {default!r} is not one of its versions")
        models[name] = Model(name=name, default_version=default, versions=versions, rollout=layer["rollout"], eval_dir=eval_dir)
    return Registry(path=path, models=models, device=device)


def _source(project: Project, key: str, vtable: Table, where: str, path: Path) -> Table:
    """What a version is built from and served by: its model_def or exported kind (and the format that
    kind fixes), its weights file, and its own handler's files (ModelVersion's fields, by name)."""
    from marforge.export_kinds import KINDS

    kind = vtable.get("exported")
    if kind is not None and kind not in KINDS:
        raise RegistryError(f"{path}: {where} exported {kind!r} is not one of {', '.join(KINDS)}")
    if kind is not None and "model_def" in vtable:
        raise RegistryError(f"{path}: {where} has both model_def and exported: an exported model needs no model definition",
                            "remove one of them")
    if kind is not None and "format" in vtable:
        raise RegistryError(f"{path}: {where} is an exported {kind} file: it is archived as it is, in format "
                            f"{KINDS[kind].format}; formats built from the Python module are unavailable for it",
                            "remove its format key")
    own = vtable.get("handler_file")
    for entry in ("extra_files", "requirements"):
        if entry in vtable and own is None:
            raise RegistryError(f"{path}: {where} {entry} belong to a version's own handler, and it names no handler_file",
                                "add handler_file = \"handlers/<your handler>.py\", or remove the key")
    extra = vtable.get("extra_files", [])
    bad: list[str] = [e for e in ("handler_file", "requirements") if e in vtable and not isinstance(vtable[e], str)]
    if bad or not (isinstance(extra, list) and all(isinstance(item, str) for item in extra)):
        raise RegistryError(f"{path}: {where} {(bad or ['extra_files'])[0]} must be a path (extra_files: a list of paths)")
    return {
        "exported": kind,
        "model_def": None if kind else project.root / _require(vtable, "model_def", where, path),
        "weights": project.weights_dir / (f"{key}{KINDS[kind].suffix}" if kind else f"{key}.pt"),
        "format": KINDS[kind].format if kind else None,
        "handler_file": project.root / own if own else None,
        "extra_files": tuple(project.root / item for item in extra),
        "requirements": project.root / vtable["requirements"] if "requirements" in vtable else None,
    }
