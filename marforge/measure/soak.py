"""`make soak`: minutes of steady load on the running server, and a verdict on what matters over weeks.

Sample images go to one model's URL from a few keep-alive connections, in windows (30 s by
default) after a warm-up. After every window it records the window's throughput, p50/p99 and
errors, the resident memory (RSS) of the Java frontend and of every worker, and from the frontend's
JVM (through `jcmd`, where the JDK has it) the heap in use right after a full GC and, when the JVM
runs with Native Memory Tracking (`-XX:NativeMemoryTracking=summary` in `vmargs`), the memory it
has committed per category.

A server settles for a while after it starts (the JIT compiles, pools and caches fill), so growth
against a baseline taken early says nothing. The verdict looks at what keeps moving once settled:
the soak fails on any failed request, on a process whose RSS rose by more than `max_rise_mb` over
the last third of the windows, on post-GC heap that rose by more than `max_heap_rise_mb` over it,
or on a last third whose median p99 is more than `p99_margin` above the middle third's. Every
figure is reported either way.

    python -m marforge soak fashion --minutes 30
"""

import asyncio
import re
import shutil
import statistics
import subprocess
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import psutil

from marforge.errors import ServerError
from marforge.measure.loadgen import run_load

NMT_LINE = re.compile(r"^-\s+(?P<category>[\w ]+?) \(reserved=\d+KB, committed=(?P<committed>\d+)KB\)", re.M)


@dataclass
class SoakReport:
    model: str
    minutes: float
    concurrency: int
    window_s: float
    windows: list = field(default_factory=list)  # one dict per window, figures taken at its end
    trends: dict = field(default_factory=dict)  # per process and for the heap: start, settled, end, rise
    problems: list = field(default_factory=list)
    notes: list = field(default_factory=list)

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


def jvm_memory(pid):
    """{"heap_used_mb": after a full GC, "heap_committed_mb", "nmt_mb": {category: committed} or None},
    or None without jcmd."""
    if not shutil.which("jcmd"):
        return None
    subprocess.run(["jcmd", str(pid), "GC.run"], capture_output=True, timeout=60)
    heap = subprocess.run(["jcmd", str(pid), "GC.heap_info"], capture_output=True, text=True, timeout=60).stdout
    generations = re.findall(r"total (\d+)K, used (\d+)K", heap)  # one line for G1, young and old for Serial
    total = (sum(int(t) for t, _ in generations), sum(int(u) for _, u in generations)) if generations else None
    nmt = subprocess.run(["jcmd", str(pid), "VM.native_memory", "summary"], capture_output=True, text=True,
                         timeout=60).stdout
    categories = {m["category"].strip(): round(int(m["committed"]) / 1024, 1) for m in NMT_LINE.finditer(nmt)}
    return {"heap_used_mb": round(total[1] / 1024, 1) if total else None,
            "heap_committed_mb": round(total[0] / 1024, 1) if total else None,
            "nmt_mb": categories or None}


def _window(client, url, bodies, concurrency, seconds):
    key = client.key("inference")
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    result = asyncio.run(run_load(url, bodies, concurrency, seconds, headers=headers))
    return {"requests": len(result.samples), "errors": result.errors, "throughput": round(result.throughput(), 1),
            "p50_ms": round(result.percentile(50), 2), "p99_ms": round(result.percentile(99), 2)}


def soak(client, run_dir, name, images, minutes=5.0, concurrency=4, window_s=30.0, warmup_s=10.0,
         max_rise_mb=8.0, max_heap_rise_mb=16.0, p99_margin=0.5, log=print):
    """Run the soak against the server of `run_dir` (a RunDir); a SoakReport whose `problems` is
    empty when it passed."""
    frontend_pid = run_dir.pid()
    if frontend_pid is None:
        raise ServerError(f"no server was started from {run_dir.path}", "make serve")
    url = f"{client.endpoints.inference}/predictions/{name}"
    bodies = [Path(p).read_bytes() for p in images]
    report = SoakReport(name, minutes, concurrency, window_s)
    if client.key("API"):  # a fresh inference key lasts token_expiration_min (60): refresh it on the way
        client.refresh_key("inference")
    warm = _window(client, url, bodies, concurrency, warmup_s)
    log(f"warm-up      {warm}")
    started = time.monotonic()
    for i in range(max(1, round(minutes * 60 / window_s))):
        if client.key("API") and i and i % max(1, round(1800 / window_s)) == 0:
            client.refresh_key("inference")  # every 30 minutes: a long soak outlives a key
        window = _window(client, url, bodies, concurrency, window_s)
        window["minute"] = round((time.monotonic() - started) / 60, 2)
        window["rss_mb"] = server_rss_mb(frontend_pid)
        window["jvm"] = jvm_memory(frontend_pid)
        report.windows.append(window)
        log(f"window {i + 1:>3} {_line(window)}")
    judge(report, warm, max_rise_mb, max_heap_rise_mb, p99_margin)
    return report


def _line(window):
    frontend = next(v for k, v in window["rss_mb"].items() if k.startswith("frontend"))
    heap = (window["jvm"] or {}).get("heap_used_mb")
    return (f"{window['minute']:6.2f} min  {window['throughput']:8.1f} req/s  p99 {window['p99_ms']:6.2f} ms  "
            f"errors {window['errors']}  frontend RSS {frontend} MB" + (f"  post-GC heap {heap} MB" if heap else ""))


def thirds(values):
    """The indexes that start the middle and last thirds of a list (at least one window each)."""
    n = len(values)
    return max(1, n // 3), max(1, n - n // 3) if n >= 3 else n - 1


def judge(report, warm, max_rise_mb, max_heap_rise_mb, p99_margin):
    """Fill `report.trends`, `problems` and `notes` from its windows."""
    windows = report.windows
    errors = warm["errors"] + sum(w["errors"] for w in windows)
    if errors:
        report.problems.append(f"{errors} requests failed")
    if len(windows) < 3:
        report.notes.append(f"{len(windows)} window(s): too few to judge memory trends or p99 drift")
        return
    middle, last = thirds(windows)
    for process in windows[0]["rss_mb"]:
        series = [w["rss_mb"].get(process) for w in windows]
        if None in series:
            report.problems.append(f"{process} is gone (it crashed or was restarted)")
            continue
        trend = _trend(series, middle, last, windows)
        report.trends[process] = trend
        if trend["last_third_rise_mb"] > max_rise_mb:
            report.problems.append(f"{process} RSS rose {trend['last_third_rise_mb']} MB over the last third of the "
                                   f"soak (from {trend['last_third_start_mb']} to {trend['end_mb']} MB; limit "
                                   f"{max_rise_mb} MB)")
    heap = [(w["jvm"] or {}).get("heap_used_mb") for w in windows]
    if None not in heap:
        report.trends["post-GC heap"] = trend = _trend(heap, middle, last, windows)
        if trend["last_third_rise_mb"] > max_heap_rise_mb:
            report.problems.append(f"the frontend's post-GC heap rose {trend['last_third_rise_mb']} MB over the last "
                                   f"third (limit {max_heap_rise_mb} MB): a leak on the Java heap")
    else:
        report.notes.append("no post-GC heap figures (jcmd is not on PATH: a JRE without the JDK's tools)")
    settled, final = (statistics.median(w["p99_ms"] for w in part) for part in (windows[middle:last], windows[last:]))
    if final > settled * (1 + p99_margin):
        report.problems.append(f"p99 drifted from a median of {settled} ms in the middle third to {final} ms in the "
                               f"last (more than {p99_margin:.0%})")


def _trend(series, middle, last, windows):
    """How one figure moved: at the first window, once settled (the middle third's start), at the start
    of the last third and at the end; the rise over the last third; MB per hour over the settled part."""
    minutes = [w["minute"] for w in windows][middle:]
    values = series[middle:]
    mean_t, mean_v = statistics.fmean(minutes), statistics.fmean(values)
    spread = sum((t - mean_t) ** 2 for t in minutes)
    slope = sum((t - mean_t) * (v - mean_v) for t, v in zip(minutes, values)) / spread * 60 if spread else 0.0
    return {"first_mb": series[0], "settled_mb": series[middle], "last_third_start_mb": series[last],
            "end_mb": series[-1], "last_third_rise_mb": round(series[-1] - series[last], 1),
            "settled_slope_mb_per_hour": round(slope, 1)}
