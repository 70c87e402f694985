"""What kind of machine serves: a CPU machine or a GPU machine, and how many GPUs it has.

The registry's per-device settings (a `gpu` or `cpu` table inside `[serving]` or `[handler]`, a
`format = { cpu = ..., gpu = ... }`) and `workers = "auto"` follow it. It is found without torch
(the Makefile asks before the virtualenv exists): `MARFORGE_DEVICE` (`cpu` or `gpu`) when set, else
a GPU machine when the NVIDIA driver lists a GPU (/proc/driver/nvidia/gpus/, or `nvidia-smi -L`),
honouring CUDA_VISIBLE_DEVICES.
"""

import os
import shutil
import subprocess
from collections.abc import Mapping
from pathlib import Path

DEVICES = ("cpu", "gpu")
DRIVER = Path("/proc/driver/nvidia/gpus")


def gpu_count(environ: Mapping[str, str] | None = None) -> int:
    """GPUs this process may use (0 on a CPU machine)."""
    environ = os.environ if environ is None else environ
    count = len(list(DRIVER.iterdir())) if DRIVER.is_dir() else 0
    if not count and shutil.which("nvidia-smi"):
        try:
            listed = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=10)
            count = sum(line.startswith("GPU ") for line in listed.stdout.splitlines()) if listed.returncode == 0 else 0
        except (OSError, subprocess.TimeoutExpired):
            count = 0
    visible = environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        count = min(count, len([d for d in visible.split(",") if d.strip() not in ("", "-1")]))
    return count


def cpu_count() -> int:
    """CPU cores this process may run on."""
    return len(os.sched_getaffinity(0))


def auto_workers(cpus: int, gpus: int = 0) -> int:
    """Workers for `workers = "auto"` on a machine of `cpus` cores and `gpus` GPUs: one per GPU, else
    one per core (the defaults sweep, docs/performance.md, chose one single-threaded worker per core)."""
    return max(1, gpus or cpus)


def threads_per_worker(total_workers: int, cpus: int | None = None) -> int:
    """Intra-op threads for each worker: the cores (default: this machine's) shared out, at least one.

    PyTorch's default (every core in every worker) makes workers fight over the same cores; the
    benchmark's (b) row measures what that costs (docs/performance.md).
    """
    return max(1, (cpus or cpu_count()) // max(1, total_workers))


def detect(environ: Mapping[str, str] | None = None) -> str:
    """"gpu" or "cpu": MARFORGE_DEVICE when set, else whether a GPU is visible."""
    environ = os.environ if environ is None else environ
    chosen = environ.get("MARFORGE_DEVICE")
    if chosen:
        if chosen not in DEVICES:
            from marforge.errors import RegistryError

            raise RegistryError(f"MARFORGE_DEVICE={chosen!r} is not one of {', '.join(DEVICES)}",
                                "unset it to detect the machine, or set cpu or gpu")
        return chosen
    return "gpu" if gpu_count(environ) else "cpu"
