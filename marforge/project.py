"""Where a project's files are: one object that resolves every path once.

A project is the folder that holds `models.toml`, the registry. `Project.locate` finds it and
settles each configurable path by one rule, first match wins:

    path          flag             environment             models.toml [paths]   default
    registry      --registry       MARFORGE_REGISTRY       -                     nearest models.toml at or above the current folder
    model_store   --model-store    MARFORGE_MODEL_STORE    model_store           model_store
    run_dir       --run-dir        MARFORGE_RUN_DIR        run_dir               .run
    config        --config         MARFORGE_CONFIG         config                config.properties
    bench_results --out            MARFORGE_BENCH_RESULTS  bench_results         bench-results

A flag's path means what the shell means by it (relative to the current folder); every other
relative path is relative to the project root, wherever marforge is started from. The folders
named after the registry's keys are fixed beside models.toml: weights/, samples/, eval/, docs/.
Nothing else in marforge spells these names.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

from marforge.errors import RegistryError

if TYPE_CHECKING:
    from marforge.registry import Registry

REGISTRY_FILE = "models.toml"
LOG_CONFIG = "log4j2.xml"  # the frontend's logging, read from beside the base config when it is there
SETTINGS = {  # key: (environment variable, default relative to the root)
    "model_store": ("MARFORGE_MODEL_STORE", "model_store"),
    "run_dir": ("MARFORGE_RUN_DIR", ".run"),
    "config": ("MARFORGE_CONFIG", "config.properties"),
    "bench_results": ("MARFORGE_BENCH_RESULTS", "bench-results"),
}


@dataclass
class Project:
    root: Path
    registry_file: Path
    model_store: Path
    run_dir: Path
    config: Path  # the base TorchServe config.properties
    bench_results: Path
    data: dict[str, Any] = field(repr=False)  # models.toml, parsed
    device: str = "cpu"  # "cpu" or "gpu": the machine the registry's per-device settings are resolved for

    @classmethod
    def locate(cls, registry: str | Path | None = None, environ: Mapping[str, str] | None = None,
               cwd: str | Path | None = None, device: str | None = None, **flags: str | Path | None) -> Project:
        """The project for these flags (`model_store=`, `run_dir=`, `config=`, `bench_results=`; None
        means not given), the environment (default: os.environ) and the current folder. `device`
        (cpu or gpu) is the flag for marforge/device.py's choice."""
        environ = os.environ if environ is None else environ
        cwd = Path(cwd or os.getcwd())
        if set(flags) - set(SETTINGS):
            raise TypeError(f"unknown project setting(s): {', '.join(sorted(set(flags) - set(SETTINGS)))}")
        if registry is None and environ.get("MARFORGE_REGISTRY"):
            registry = Path(environ["MARFORGE_REGISTRY"])
            registry = registry if registry.is_absolute() else cwd / registry
        registry_file = (cwd / registry).resolve() if registry is not None else _nearest_registry(cwd)
        data = _read(registry_file)
        table = data.get("paths", {})
        unknown = sorted(set(table) - set(SETTINGS))
        if unknown:
            raise RegistryError(f"{registry_file}: unknown key(s) {', '.join(unknown)} in [paths] "
                                f"(allowed: {', '.join(sorted(SETTINGS))})")
        root = registry_file.parent
        paths: dict[str, Path] = {}
        for key, (variable, default) in SETTINGS.items():
            if flags.get(key) is not None:
                paths[key] = (cwd / str(flags[key])).resolve()
            else:
                paths[key] = (root / (environ.get(variable) or table.get(key) or default)).resolve()
        from marforge.device import detect

        return cls(root=root, registry_file=registry_file, data=data, device=device or detect(environ), **paths)

    @classmethod
    def at(cls, registry_file: str | Path, **flags: Any) -> Project:
        """The project of a given models.toml, ignoring the paths' environment variables (tests,
        library callers); the device is this machine's, as marforge/device.py finds it."""
        from marforge.device import detect

        return cls.locate(registry=Path(registry_file).resolve(), environ={}, device=flags.pop("device", None) or detect(),
                          **flags)

    # -- fixed folders -------------------------------------------------------------------------------
    @property
    def weights_dir(self) -> Path:
        return self.root / "weights"

    @property
    def samples_dir(self) -> Path:
        return self.root / "samples"

    @property
    def eval_root(self) -> Path:
        return self.root / "eval"

    @property
    def docs_dir(self) -> Path:
        return self.root / "docs"

    @property
    def log_config(self) -> Path | None:
        """log4j2.xml beside the base config, or None to keep TorchServe's own."""
        path = self.config.with_name(LOG_CONFIG)
        return path if path.is_file() else None

    def relative(self, path: str | Path) -> str:
        """`path` relative to the project root when it is inside it (for messages and metadata)."""
        path = Path(path).resolve()
        return path.relative_to(self.root).as_posix() if path.is_relative_to(self.root) else str(path)

    @cached_property
    def registry(self) -> Registry:
        """The validated registry (marforge.registry.Registry) of this project."""
        from marforge import registry

        return registry.from_project(self)


def _nearest_registry(cwd: Path) -> Path:
    for folder in (cwd, *cwd.parents):
        if (folder / REGISTRY_FILE).is_file():
            return (folder / REGISTRY_FILE).resolve()
    raise RegistryError(f"no {REGISTRY_FILE} in {cwd} or any folder above it",
                        f"run marforge inside a project, or pass --registry path/to/{REGISTRY_FILE}")


def _read(path: Path) -> dict[str, Any]:
    try:
        return tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise RegistryError(f"{path}: registry file not found",
                            f"run marforge inside a project, or pass --registry path/to/{REGISTRY_FILE}") from None
    except tomllib.TOMLDecodeError as exc:
        raise RegistryError(f"{path}: not valid TOML: {exc}") from None
