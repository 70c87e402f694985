"""First requests: what a user's first requests cost right after `make serve` says READY and right
after a rollout promotes a version, with the workers' warm-up (the handler option `warm_up`,
image_handler._warm_up) on, as shipped, and off.

Each point starts a fresh TorchServe as `make serve` runs it (marforge's settings, the version's
serving table) from archives built for it into a scratch model store: the version's own, and one
with `warm_up = false` in its handler section. Then, on the URL a client uses:

  start    the version alone; timing starts once every worker is READY
  rollout  the model's previous version served alone, then the candidate registered with its
           workers until READY (rollout.register_candidate, what `make rollout` runs) and made the
           default: the candidate's first requests are the promoted version's. `make rollout`'s gate
           and watch send their images to the candidate first and so warm it partly; left out here,
           this is the case where their images did not reach every worker and batch shape.

and for each: one client's first request and the median of its next NEXT requests (one at a time:
batches of one), then a first burst of BURST concurrent requests (the batch shapes beyond one) and
the median of the slowest request of BURSTS later bursts. Rounds alternate warm-up on and off, so a
drift of the machine falls on both.
"""

import dataclasses
import shutil
import statistics
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

from marforge.errors import MeasurementFailed
from marforge.measure import machine
from marforge.measure.experiments import images_of

NEXT, BURST, BURSTS = 30, 16, 5
SETTINGS = (("on (shipped)", True), ("off", False))


def _timed(session, url, body, headers, version=None):
    """Seconds one request took; it must succeed (and, given `version`, be answered by that version)."""
    started = time.perf_counter()
    answer = session.post(url, data=body, headers=headers, timeout=120)
    took = time.perf_counter() - started
    answer.raise_for_status()
    if version is not None and answer.json().get("version") != version:
        raise MeasurementFailed(f"{url} was answered by version {answer.json().get('version')!r}, not {version}")
    return took


def _burst(url, bodies, headers, size):
    """The slowest of `size` requests sent at once, each on its own connection, in seconds."""
    import requests

    def one(i):
        with requests.Session() as session:
            return _timed(session, url, bodies[i % len(bodies)], headers)

    with ThreadPoolExecutor(size) as pool:
        return max(pool.map(one, range(size)))


def first_requests(url, bodies, headers, version=None):
    """The figures of one point, in ms: first request (answered by `version` when given), the median of the next
    NEXT, the slowest of the first burst, the median over BURSTS later bursts of their slowest."""
    import requests

    with requests.Session() as session:
        first = _timed(session, url, bodies[0], headers, version)
        following = [_timed(session, url, bodies[(i + 1) % len(bodies)], headers) for i in range(NEXT)]
    burst = _burst(url, bodies, headers, BURST)
    later = [_burst(url, bodies, headers, BURST) for _ in range(BURSTS)]
    ms = lambda seconds: round(seconds * 1000, 2)  # noqa: E731
    return {"first_ms": ms(first), "next_median_ms": ms(statistics.median(following)),
            "burst_first_ms": ms(burst), "burst_later_ms": ms(statistics.median(later))}


def with_warm_up(mv, on):
    """`mv` with its handler's warm_up set to `on`."""
    return dataclasses.replace(mv, handler={**mv.handler, "warm_up": on})


@contextmanager
def _serving(project, versions, store):
    """marforge's TorchServe serving `versions` from `store` on free ports; yields the started Server."""
    from marforge.serve import launch, process
    from marforge.serve.rundir import RunDir

    run_dir = Path(tempfile.mkdtemp(prefix="marforge-first-"))
    try:
        yield launch.serve(dataclasses.replace(project, run_dir=run_dir, model_store=store), versions=versions,
                           ports=process.free_listeners())
    finally:
        process.stop(RunDir(run_dir))
        shutil.rmtree(run_dir, ignore_errors=True)


def _headers(started):
    return {"Authorization": f"Bearer {started.client.key('inference')}"}


def previous_of(project, mv):
    """The version of `mv`'s model registered before it, or None."""
    versions = list(project.registry.models[mv.name].versions.values())
    index = [v.version for v in versions].index(mv.version)
    return versions[index - 1] if index > 0 else None


def first(project, mv, rounds=2, log=print):
    """The start and (when the model has a version before `mv`) rollout points of `mv`, each with
    warm-up on and off, in `rounds` alternating rounds; a row per scenario, setting and round."""
    from marforge.archiving import archive
    from marforge.serve import rollout

    _, bodies = images_of(mv)
    previous = previous_of(project, mv)
    answered_by = None if mv.own_handler else mv.version  # marforge's answers name their version; a user's may not
    rows = []
    with tempfile.TemporaryDirectory(prefix="marforge-first-") as folder:
        stores = {}
        for name, on in SETTINGS:  # each setting's archives, built and verified once
            stores[on] = Path(folder) / name.split()[0]
            for version in [v for v in (previous, mv) if v is not None]:
                archive.build(with_warm_up(version, on), stores[on])
        for round_ in range(1, rounds + 1):
            for name, on in SETTINGS if round_ % 2 else SETTINGS[::-1]:
                candidate = with_warm_up(mv, on)
                t0 = time.monotonic()
                with _serving(project, [candidate], stores[on]) as started:
                    ready_s = time.monotonic() - t0
                    url = f"{started.client.endpoints.inference}/predictions/{mv.name}"
                    row = {"scenario": "start", "version": mv.key, "warm_up": name, "round": round_,
                           "ready_s": round(ready_s, 1),
                           **first_requests(url, bodies, _headers(started), answered_by)}
                rows.append(row)
                log(f"{row}")
                if previous is None:
                    continue
                with _serving(project, [with_warm_up(previous, on)], stores[on]) as started:
                    t0 = time.monotonic()
                    rollout.register_candidate(started.client, candidate, stores[on], started.run_dir,
                                               timeout=600)
                    ready_s = time.monotonic() - t0
                    started.client.set_default(mv.name, mv.version)
                    url = f"{started.client.endpoints.inference}/predictions/{mv.name}"
                    row = {"scenario": f"rollout from {previous.version}", "version": mv.key, "warm_up": name,
                           "round": round_, "ready_s": round(ready_s, 1),
                           **first_requests(url, bodies, _headers(started), answered_by)}
                rows.append(row)
                log(f"{row}")
    return {"machine": machine.describe(project.root), "model": mv.key, "serving": mv.serving, "rows": rows,
            "next": NEXT, "burst": BURST, "bursts": BURSTS}
