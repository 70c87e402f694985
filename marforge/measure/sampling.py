"""One load run against one URL, with what each process of the server used while it ran.

`measure` drives the asyncio load generator (loadgen.py) in this process and returns a result row:
throughput, p50/p90/p99 latency, errors, the load generator's CPU (in cores), the CPU each server
process used (in cores, by role) and the peak RSS of the server's process tree.
"""

import asyncio
import threading
import time

import psutil

from marforge.measure.loadgen import run_load


class ProcessWatch:
    """Samples the RSS of a process tree while a run goes on, and the CPU each process used."""

    def __init__(self, root_pid, roles):
        self.root = psutil.Process(root_pid)
        self.roles = roles  # pid -> role name, for the processes whose CPU is reported by name
        self.peak_mb = 0.0
        self._stop = threading.Event()
        self._cpu0 = self._cpu()

    def _tree(self):
        try:
            return [self.root] + self.root.children(recursive=True)
        except psutil.NoSuchProcess:
            return []

    def _cpu(self):
        times = {}
        for p in self._tree():
            try:
                t = p.cpu_times()
                times[p.pid] = t.user + t.system
            except psutil.NoSuchProcess:
                continue
        return times

    def _sample(self):
        while not self._stop.wait(0.25):
            total = 0
            for p in self._tree():
                try:
                    total += p.memory_info().rss
                except psutil.NoSuchProcess:
                    continue
            self.peak_mb = max(self.peak_mb, total / 2**20)

    def __enter__(self):
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        self._gpu = GpuWatch().start() if GpuWatch.available() else None
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        if self._gpu:
            self._gpu.stop()

    def gpu(self):
        """{"gpu_util_pct": mean, "gpu_memory_mb": peak} over the run, or {} without a GPU."""
        return self._gpu.summary() if self._gpu else {}

    def cpu_cores(self, seconds):
        """CPU used per role during the run, in cores (1.0 = one core busy all the time); processes
        without a role count as "worker"."""
        used = {}
        for pid, t in self._cpu().items():
            role = self.roles.get(pid, "worker")
            used[role] = used.get(role, 0.0) + (t - self._cpu0.get(pid, 0.0)) / seconds
        return {k: round(v, 2) for k, v in used.items()}


class GpuWatch:
    """Samples every GPU's utilisation and memory in use (nvidia-smi) while a run goes on."""

    QUERY = ("nvidia-smi", "--query-gpu=utilization.gpu,memory.used", "--format=csv,noheader,nounits")

    @staticmethod
    def available():
        import shutil

        return shutil.which("nvidia-smi") is not None

    def start(self):
        self.samples, self._stop = [], threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self):
        import subprocess

        while not self._stop.wait(0.5):
            try:
                out = subprocess.run(self.QUERY, capture_output=True, text=True, timeout=5).stdout
                gpus = [[float(v) for v in line.split(",")] for line in out.strip().splitlines()]
                self.samples.append((max(g[0] for g in gpus), sum(g[1] for g in gpus)))
            except (OSError, ValueError, subprocess.TimeoutExpired):
                continue

    def stop(self):
        self._stop.set()
        self._thread.join()

    def summary(self):
        if not self.samples:
            return {}
        return {"gpu_util_pct": round(sum(s[0] for s in self.samples) / len(self.samples), 1),
                "gpu_memory_mb": max(s[1] for s in self.samples)}


def measure(label, url, bodies, concurrency, seconds, pid, roles, headers=None, load=None):
    """One load run against `url` from `concurrency` clients for `seconds`; a result row. `load`, when
    given, replaces the HTTP load generator: a coroutine function of (concurrency, seconds) giving a
    LoadResult (the gRPC rows)."""
    with ProcessWatch(pid, roles) as watch:
        cpu0 = time.process_time()
        result = asyncio.run(load(concurrency, seconds) if load else run_load(url, bodies, concurrency, seconds,
                                                                              headers=headers))
        loadgen = (time.process_time() - cpu0) / result.seconds
    return {"row": label, "concurrency": concurrency, "throughput": round(result.throughput(), 1),
            "p50_ms": round(result.percentile(50), 2), "p90_ms": round(result.percentile(90), 2),
            "p99_ms": round(result.percentile(99), 2), "errors": result.errors, "requests": len(result.samples),
            "failed_statuses": result.failed_statuses(),
            "loadgen_cpu": round(loadgen, 2), "server_cpu": watch.cpu_cores(result.seconds),
            "peak_rss_mb": round(watch.peak_mb, 1), **watch.gpu()}


def warm_up(url, bodies, concurrency, seconds, headers=None):
    """Unrecorded load before a server's rows, so that its JIT (the Java frontend's above all) and
    caches reach steady state first."""
    if seconds > 0:
        asyncio.run(run_load(url, bodies, concurrency, seconds, headers=headers))
