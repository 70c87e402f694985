"""Continuous client load for integration tests: N threads posting to one URL until stopped.

Bounded: each client stops at `max_seconds` even if the test never calls stop(). A client timeout
counts as a failure, so a hung request cannot pass unnoticed.
"""

import threading
import time
from dataclasses import dataclass, field

import requests


@dataclass
class Result:
    client: int
    started: float
    finished: float
    status: int  # HTTP status, or 0 for a timeout / connection failure
    version: str = None
    error: str = None


@dataclass
class Load:
    url: str
    body: bytes
    key: callable  # returns the current inference key
    clients: int = 4
    timeout: float = 15.0
    max_seconds: float = 600.0
    results: list = field(default_factory=list)

    def __post_init__(self):
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._threads = [threading.Thread(target=self._run, args=(i,), daemon=True) for i in range(self.clients)]

    def __enter__(self):
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc):
        self.stop()

    def stop(self):
        self._stop.set()
        for t in self._threads:
            t.join(self.timeout + 5)

    def _run(self, client):
        session = requests.Session()
        deadline = time.monotonic() + self.max_seconds
        while not self._stop.is_set() and time.monotonic() < deadline:
            started = time.monotonic()
            try:
                response = session.post(self.url, data=self.body, timeout=self.timeout,
                                        headers={"Authorization": f"Bearer {self.key()}"})
                version = response.json().get("version") if response.status_code == 200 else None
                result = Result(client, started, time.monotonic(), response.status_code, version,
                                None if response.status_code == 200 else response.text[:300])
            except (requests.RequestException, ValueError) as exc:
                result = Result(client, started, time.monotonic(), 0, None, f"{type(exc).__name__}: {exc}")
            with self._lock:
                self.results.append(result)

    def failures(self):
        return [r for r in self.results if r.status != 200]

    def versions_by_client(self):
        """Per client, the versions that answered, in order, with repeats collapsed."""
        runs = {}
        for r in sorted(self.results, key=lambda r: r.started):
            seq = runs.setdefault(r.client, [])
            if r.version and (not seq or seq[-1] != r.version):
                seq.append(r.version)
        return runs

    def wait_for(self, count, timeout=30.0):
        """Block until at least `count` more results have arrived (so the load really overlaps a step)."""
        target = len(self.results) + count
        deadline = time.monotonic() + timeout
        while len(self.results) < target and time.monotonic() < deadline:
            time.sleep(0.05)
