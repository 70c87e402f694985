"""What "auto" means for a version's `workers`, `threads`, `batch_size` and `max_batch_delay_ms` (all
"auto" unless models.toml sets a number): the values `make tune` measured for that version on a
machine of this kind and size, else the rule below.

`make tune` (marforge/measure/tune.py) writes a version's `tuned` table into models.toml, one table
per kind of machine, with the number of cores it was measured on:

    tuned = { cpu = { cores = 2, workers = 1, threads = 2, batch_size = 4, max_batch_delay_ms = 5 } }

It applies on a machine of that kind with as many cores (device.cpu_count) as it was tuned on: what
is best on 2 cores says nothing of 64. The rule, for an untuned version or another machine: a worker
per core (per GPU on a GPU machine), each with the server's share of the cores (threads None:
OMP_NUM_THREADS, launch.py), batches of up to 16 within 1 ms (the defaults sweep, docs/performance.md).
A number written in models.toml is the user's choice: neither the tune nor the rule replaces it, and
the tune does not vary it. Standard library only, as the registry.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from marforge.device import DEVICES, auto_workers
from marforge.errors import RegistryError

Table = dict[str, Any]

AUTO = "auto"
TUNABLE = ("workers", "threads", "batch_size", "max_batch_delay_ms")  # the serving keys "auto" resolves
RULE: Table = {"batch_size": 16, "max_batch_delay_ms": 1}  # and workers, threads: rule() below
TUNED_KEYS = {"cores", *TUNABLE}
LEAST = {"cores": 1, "workers": 1, "threads": 1, "batch_size": 1, "max_batch_delay_ms": 0}


def check(table: object, where: str, path: Path) -> Table:
    """A version's `tuned` table, validated: {device: {cores, workers, ...}}, whole numbers each."""
    if not isinstance(table, dict) or set(table) - set(DEVICES):
        raise RegistryError(f"{path}: {where} tuned must be a table of {' and '.join(DEVICES)} tables", "make tune")
    for device, settings in table.items():
        if not isinstance(settings, dict) or set(settings) != TUNED_KEYS or any(
                not isinstance(v, int) or isinstance(v, bool) or v < LEAST[k] for k, v in settings.items()):
            raise RegistryError(f"{path}: {where} tuned.{device} must set each of {', '.join(sorted(TUNED_KEYS))} "
                                f"to a whole number, not {settings!r}", "rerun make tune for it")
    return table


def applies(tuned: Table, cores: int) -> bool:
    """A tuned table (one device's) holds for a machine of `cores` cores."""
    return bool(tuned) and tuned["cores"] == cores


def rule(key: str, cores: int, gpus: int) -> int | None:
    """"auto" for an untuned version: device.auto_workers, the server's share of threads (None), RULE."""
    if key == "workers":
        return auto_workers(cores, gpus)
    return None if key == "threads" else int(RULE[key])


def meaning(key: str, tuned: Table, cores: int, gpus: int) -> int | None:
    """What "auto" means for `key` on a machine of `cores` cores and `gpus` GPUs: the tuned value when
    `tuned` (this device's table) applies there, else the rule."""
    return tuned[key] if applies(tuned, cores) else rule(key, cores, gpus)


def resolve(serving: Table, tuned: Table, cores: int, gpus: int, where: str, path: Path,
            own_handler: bool = False) -> frozenset[str]:
    """Fill each "auto" key of `serving` (in place) from `tuned` (this device's table) when it applies
    to a machine of `cores` cores and `gpus` GPUs, else from the rule; returns the keys that were "auto"."""
    auto = frozenset(key for key in TUNABLE if serving.get(key, AUTO) == AUTO)
    for key in TUNABLE:
        value = serving.get(key, AUTO)
        if key in auto:
            serving[key] = meaning(key, tuned, cores, gpus)
        elif not isinstance(value, int) or isinstance(value, bool) or value < LEAST[key]:
            raise RegistryError(f"{path}: {where} serving.{key} must be a whole number of at least {LEAST[key]} "
                                f"or \"auto\", not {value!r}")
    if own_handler and "threads" not in auto:
        raise RegistryError(f"{path}: {where} serving.threads is marforge's handler's setting; an own handler's "
                            "workers use the server's share of the cores (OMP_NUM_THREADS)", "remove it")
    if own_handler:
        serving["threads"] = None
    return auto
