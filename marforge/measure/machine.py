"""What a measurement ran on, for every report to name: cores, processor, accelerator, software."""

import os
import platform
import subprocess
import time


def describe(root=None):
    """A dict naming the machine, the software and the commit measured."""
    import torch

    info = {"cpus": len(os.sched_getaffinity(0)), "cpu_model": _cpu_model(), "python": platform.python_version(),
            "torch": torch.__version__, "date": time.strftime("%Y-%m-%d %H:%M %Z"), "commit": _commit(root),
            "gpu": None}
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        info["gpu"] = {"name": props.name, "count": torch.cuda.device_count(), "cuda": torch.version.cuda,
                       "memory_gib": round(props.total_memory / 2**30, 1), "driver": _nvidia_driver()}
    return info


def headline(info):
    """One line: the device, the cores and the commit."""
    device = (f"{info['gpu']['count']} x {info['gpu']['name']} (CUDA {info['gpu']['cuda']}, driver "
              f"{info['gpu']['driver']})" if info.get("gpu") else "no GPU")
    return (f"{info['cpus']} CPUs ({info['cpu_model']}), {device}; torch {info['torch']}, "
            f"commit {info['commit']}, {info['date']}")


def _cpu_model():
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _nvidia_driver():
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=10)
        return out.stdout.strip().splitlines()[0] if out.returncode == 0 and out.stdout.strip() else "unknown"
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"


# What a run writes itself (the generated blocks): a change there is not a change to what is measured.
GENERATED = ("docs", "README.md")


def _commit(root):
    """The commit measured, "+changes" when tracked files other than GENERATED differ from it."""
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=root, timeout=10)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--", ".",
                                *(f":(exclude){path}" for path in GENERATED)], capture_output=True,
                               text=True, cwd=root, timeout=10)
        return out.stdout.strip() + ("+changes" if dirty.stdout.strip() else "") if out.returncode == 0 else "unknown"
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
