"""`bench-kserve`: marforge's own KServe runtime against the stock runtime's path, pod against pod.

Each runtime's pod is started from its bundle as its container starts (marforge/deploy/pod.py, which
the command hands in: measure does not import deploy) and measured in turn, in `passes` passes, the
order reversed in every other pass (A B, B A, ...), each pod started anew, so that a drift of the
machine falls on both alike, as `bench --jvm` alternates its settings. For each pod and route:

    first answer   seconds from the container's process start to the first 200 on the v1 route
                   (the routes of one pod are polled in turn: TorchServe's own, then the proxy's)
    rows           after the readiness check passes and unrecorded warm-up load: v1 and v2 JSON
                   (the image as base64) at each concurrency, from the one load generator (loadgen.py)

A pod hands in: `routes` ({route: base URL} serving /v1/models/<name>:predict and
/v2/models/<name>/infer), `started` (time.monotonic() of its process start), `pid`, `check_alive()`
and `wait_ready()`.
"""

import asyncio
import os
import time
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from typing import Any

from marforge.errors import ServerError
from marforge.measure import machine
from marforge.measure.experiments import images_of, v1_bodies, v1_url, v2_bodies, v2_url, warm_up_seconds
from marforge.measure.sampling import measure

FIRST_ANSWER_S = 300.0  # the longest wait for a first answer (the stock proxy's load() alone sleeps 30 s twice)
PROTOCOLS: dict[str, tuple[Callable[[str, str], str], Callable[[list[bytes]], list[bytes]]]] = {
    "v1": (v1_url, v1_bodies), "v2": (v2_url, v2_bodies)}

PodStarter = Callable[[], AbstractContextManager[Any]]


def first_answer(url: str, body: bytes, pod: Any, timeout: float = FIRST_ANSWER_S) -> float:
    """Seconds from `pod.started` until `url` first answers `body` 200 (polled every 50 ms)."""
    import requests

    session = requests.Session()
    while True:
        try:
            if session.post(url, data=body, headers={"Content-Type": "application/json"}, timeout=10).status_code == 200:
                return round(time.monotonic() - pod.started, 2)
        except requests.RequestException:
            pass
        pod.check_alive()
        if time.monotonic() - pod.started > timeout:
            raise ServerError(f"{url} did not answer 200 within {timeout:.0f} s of the start", "read the pod's logs")
        time.sleep(0.05)


def _rows(runtime_name: str, pod: Any, name: str, images: list[bytes], concurrencies: Sequence[int], seconds: float,
          pass_: int, log: Callable[[str], None]) -> list[dict]:
    from marforge.measure.loadgen import run_load

    rows = []
    for route, base in pod.routes.items():
        for protocol, (url_of, bodies_of) in PROTOCOLS.items():
            url, bodies = url_of(base, name), bodies_of(images)

            def load(concurrency: int, duration: float, url: str = url, bodies: list[bytes] = bodies) -> Any:
                return run_load(url, bodies, concurrency, duration, content_type="application/json")

            asyncio.run(load(max(concurrencies), warm_up_seconds(seconds)))
            for concurrency in concurrencies:
                row = measure(f"{runtime_name}: {route}", url, bodies, concurrency, seconds, pod.pid,
                              {pod.pid: "frontend"}, load=load)
                rows.append({"runtime": runtime_name, "route": route, "protocol": protocol, "pass": pass_,
                             **{k: row[k] for k in ("row", "concurrency", "throughput", "p50_ms", "p99_ms", "errors",
                                                    "requests", "failed_statuses")}})
                log(f"{rows[-1]}")
    return rows


def compare(project: Any, mv: Any, pods: Sequence[tuple[str, PodStarter]], compared: str, command: str,
            concurrencies: Sequence[int], seconds: float, passes: int, log: Callable[[str], None] = print) -> dict:
    """Every pod of `pods` ((runtime name, () -> a context manager giving a started pod)) measured in
    `passes` alternating passes, `seconds` per row at each of `concurrencies`; `compared` says what
    the stock side is, `command` what was run (both go into the report)."""
    load_at_start = [round(v, 2) for v in os.getloadavg()]
    _, images = images_of(mv)
    first_body = v1_bodies(images[:1])[0]
    rows, firsts = [], []
    for pass_ in range(1, passes + 1):
        for runtime_name, start in (pods if pass_ % 2 else list(reversed(pods))):
            with start() as pod:
                for route, base in pod.routes.items():
                    firsts.append({"runtime": runtime_name, "route": route, "pass": pass_,
                                   "seconds": first_answer(v1_url(base, mv.name), first_body, pod)})
                    log(f"{firsts[-1]}")
                pod.wait_ready()
                rows += _rows(runtime_name, pod, mv.name, images, concurrencies, seconds, pass_, log)
    return {"model": mv.key, "seconds": seconds, "passes": passes, "concurrencies": list(concurrencies),
            "compared": compared, "command": command, "load_at_start": load_at_start,
            "machine": machine.describe(project.root), "images": len(images), "first_answer": firsts, "rows": rows}
