"""Endurance run against the running server: minutes of moderate load, then a verdict.

It sends real sample images to one model's URL in windows (30 s by default), after a warm-up
window that lets allocators and caches settle, and reports per window the throughput, p50/p99 and
errors, and for the Java frontend and every worker the resident memory (RSS) after the warm-up and
at the end. It passes when there were no errors, no process grew by more than `rss_margin` and the
last window's p99 is within `p99_margin` of the first one's.

    python -m marforge soak fashion --minutes 5
"""

import asyncio
from dataclasses import asdict, dataclass, field
from pathlib import Path

import psutil

from marforge.errors import ServerError
from marforge.measure.loadgen import run_load


@dataclass
class SoakReport:
    model: str
    windows: list = field(default_factory=list)
    rss_start_mb: dict = field(default_factory=dict)
    rss_end_mb: dict = field(default_factory=dict)
    problems: list = field(default_factory=list)

    def to_dict(self):
        return asdict(self)


def server_rss_mb(frontend_pid):
    """RSS in MB of the Java frontend and each of its worker processes, by role and pid."""
    frontend = psutil.Process(frontend_pid)
    rss = {f"frontend {frontend_pid}": frontend.memory_info().rss / 2**20}
    for child in frontend.children(recursive=True):
        try:
            rss[f"worker {child.pid}"] = child.memory_info().rss / 2**20
        except psutil.NoSuchProcess:
            continue
    return {k: round(v, 1) for k, v in rss.items()}


def _window(client, url, bodies, concurrency, seconds):
    key = client.key("inference")
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    result = asyncio.run(run_load(url, bodies, concurrency, seconds, headers=headers))
    return {"requests": len(result.samples), "errors": result.errors, "throughput": round(result.throughput(), 1),
            "p50_ms": round(result.percentile(50), 2), "p99_ms": round(result.percentile(99), 2)}


def soak(client, run_dir, name, images, minutes=5.0, concurrency=4, window_s=30.0, warmup_s=10.0,
         rss_margin=0.10, p99_margin=0.5, log=print):
    """Run the soak; returns a SoakReport whose `problems` is empty when it passed."""
    frontend_pid = run_dir.pid()
    if frontend_pid is None:
        raise ServerError(f"no server was started from {run_dir.path}", "make serve")
    url = f"{client.endpoints.inference}/predictions/{name}"
    bodies = [Path(p).read_bytes() for p in images]
    report = SoakReport(name)
    if client.key("API"):  # a fresh inference key lasts token_expiration_min (60): soak for less than that
        client.refresh_key("inference")
    warm = _window(client, url, bodies, concurrency, warmup_s)
    log(f"warm-up   {warm}")
    report.rss_start_mb = server_rss_mb(frontend_pid)
    windows = max(1, round(minutes * 60 / window_s))
    for i in range(windows):
        report.windows.append(_window(client, url, bodies, concurrency, window_s))
        log(f"window {i + 1:>2}/{windows} {report.windows[-1]}")
    report.rss_end_mb = server_rss_mb(frontend_pid)
    errors = sum(w["errors"] for w in report.windows) + warm["errors"]
    if errors:
        report.problems.append(f"{errors} requests failed")
    for process, start in report.rss_start_mb.items():
        end = report.rss_end_mb.get(process)
        if end is None:
            report.problems.append(f"{process} is gone (it crashed or was restarted)")
        elif end > start * (1 + rss_margin):
            report.problems.append(f"{process} grew from {start} MB to {end} MB (more than {rss_margin:.0%})")
    first, last = report.windows[0]["p99_ms"], report.windows[-1]["p99_ms"]
    if last > first * (1 + p99_margin):
        report.problems.append(f"p99 drifted from {first} ms to {last} ms (more than {p99_margin:.0%})")
    return report
