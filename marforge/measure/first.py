"""First requests: what a user's first requests cost right after `make serve` says the server is up
and right after a rollout promotes a version, with warm-up on, as shipped, and off. On: each worker's
own warm-up before it is READY (the handler option `warm_up`, image_handler._warm_up) and, at a
start, the samples `marforge serve` sends each version before it says the server is up
(launch.warm); off: neither.

Each point starts a fresh TorchServe as `make serve` runs it (marforge's settings, the version's
serving table) from archives built for it into a scratch model store: the version's own, and one
with `warm_up = false` in its handler section. Then, on the URL a client uses:

  start    the version alone; timing starts when `marforge serve` would say it is up ("READY s":
           from the start, warm traffic included)
  rollout  the model's previous version served alone, under SERVING_CLIENTS clients for SERVING_S
           seconds (a server at work, its frontend warm), then the candidate registered with its
           workers until READY (rollout.register_candidate, what `make rollout` runs) and made the
           default: the candidate's first requests are the promoted version's. `make rollout`'s gate
           and watch send their images to the candidate first and so warm it partly; left out here,
           this is the case where their images did not reach every worker and batch shape.

and for each: one client's first request and the median of its next NEXT requests (one at a time:
batches of one), then a first burst of BURST concurrent requests (the batch shapes beyond one) and
the median of the slowest request of BURSTS later bursts; each client on a keep-alive connection
opened before its first request; and last, after SERVING_S seconds of load, the lone client's
median again: what the same requests cost once the server is at work (the frontend's JIT warm).
Rounds alternate warm-up on and off, so a drift of the machine falls on both.
"""

import asyncio
import dataclasses
import json
import statistics
import tempfile
import time
from pathlib import Path
from urllib.parse import urlsplit

from marforge.errors import MeasurementFailed
from marforge.measure import fixtures, machine, tables
from marforge.measure.experiments import images_of
from marforge.measure.loadgen import Connection, request_head
from marforge.measure.sampling import warm_up

NEXT, BURST, BURSTS = 30, 16, 5
SERVING_CLIENTS, SERVING_S = 4, 8.0  # the load the previous version serves before a rollout: a frontend at work
SETTINGS = (("on (shipped)", True), ("off", False))


async def _send(connection, url, body, headers, version):
    """Seconds one request took on `connection`; it must succeed (and, given `version`, be answered by it)."""
    head = request_head(url, len(body), "application/octet-stream", headers)
    started = time.perf_counter()
    status, answer = await connection.request(head, body, timeout=120)
    took = time.perf_counter() - started
    if status != 200:
        raise MeasurementFailed(f"{url} answered {status}: {answer[:300]!r}")
    if version is not None and json.loads(answer).get("version") != version:
        raise MeasurementFailed(f"{url} was answered by version {json.loads(answer).get('version')!r}, not {version}")
    return took


async def _points(url, bodies, headers, version):
    parts = urlsplit(url)
    lone = Connection(parts.hostname, parts.port)
    burst = [Connection(parts.hostname, parts.port) for _ in range(BURST)]
    for connection in [lone, *burst]:  # connected first: the figures are the requests', not the handshakes'
        connection.reader, connection.writer = await asyncio.open_connection(parts.hostname, parts.port)
    try:
        first = await _send(lone, url, bodies[0], headers, version)
        following = [await _send(lone, url, bodies[(i + 1) % len(bodies)], headers, version) for i in range(NEXT)]
        waves = []
        for _ in range(1 + BURSTS):
            waves.append(max(await asyncio.gather(*(_send(c, url, bodies[i % len(bodies)], headers, version)
                                                    for i, c in enumerate(burst)))))
    finally:
        for connection in [lone, *burst]:
            connection.close()
    return first, following, waves[0], waves[1:]


def _ms(seconds):
    return round(seconds * 1000, 2)


def cold(url, bodies, headers, version=None):
    """A fresh server's first requests, in ms: a lone client's first request, the median of its next
    NEXT, the slowest of a first burst of BURST clients at once, the median over BURSTS later bursts of
    their slowest; every request answered (by `version` when given), each client on a keep-alive
    connection opened beforehand (marforge/measure/loadgen.py's, as `make bench` sends)."""
    first, following, burst, later = asyncio.run(_points(url, bodies, headers, version))
    return {"first_ms": _ms(first), "next_median_ms": _ms(statistics.median(following)),
            "burst_first_ms": _ms(burst), "burst_later_ms": _ms(statistics.median(later))}


def first_requests(url, bodies, headers, version=None):
    """The figures of one point (`cold`'s), then, after SERVING_S seconds of SERVING_CLIENTS clients,
    the median of NEXT lone requests again: the server at work."""
    figures = cold(url, bodies, headers, version)
    warm_up(url, bodies, SERVING_CLIENTS, SERVING_S, headers=headers)  # then the same lone client, at work
    _, at_work, _, _ = asyncio.run(_points(url, bodies, headers, version))
    return {**figures, "at_work_median_ms": _ms(statistics.median(at_work))}


def with_warm_up(mv, on):
    """`mv` with its handler's warm_up set to `on`."""
    return dataclasses.replace(mv, handler={**mv.handler, "warm_up": on})


def _serving(project, mv, store):
    """marforge's TorchServe serving `mv` alone from `store` (fixtures.torchserve)."""
    return fixtures.torchserve(dataclasses.replace(project, model_store=store), mv)


def previous_of(project, mv):
    """The version of `mv`'s model registered before it, or None."""
    versions = list(project.registry.models[mv.name].versions.values())
    index = [v.version for v in versions].index(mv.version)
    return versions[index - 1] if index > 0 else None


def first(project, mv, rounds=2, log=print):
    """The start and (when the model has a version before `mv`) rollout points of `mv`, each with
    warm-up on and off, in `rounds` alternating rounds; a row per scenario, setting and round."""
    from marforge.archiving import archive
    from marforge.serve import launch, rollout

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
                with _serving(project, candidate, stores[on]) as target:
                    started = target.server
                    if on:  # as `marforge serve` does before it says the server is up
                        launch.warm(started, [candidate])
                    ready_s = time.monotonic() - t0
                    url = f"{started.client.endpoints.inference}/predictions/{mv.name}"
                    row = {"scenario": "start", "version": mv.key, "warm_up": name, "round": round_,
                           "ready_s": round(ready_s, 1),
                           **first_requests(url, bodies, target.headers(), answered_by)}
                rows.append(row)
                log(f"{row}")
                if previous is None:
                    continue
                with _serving(project, with_warm_up(previous, on), stores[on]) as target:
                    started = target.server
                    url = f"{started.client.endpoints.inference}/predictions/{mv.name}"
                    warm_up(url, bodies, SERVING_CLIENTS, SERVING_S, headers=target.headers())  # a server at work
                    t0 = time.monotonic()
                    rollout.register_candidate(started.client, candidate, stores[on], started.run_dir,
                                               timeout=600)
                    ready_s = time.monotonic() - t0
                    started.client.set_default(mv.name, mv.version)
                    row = {"scenario": f"rollout from {previous.version}", "version": mv.key, "warm_up": name,
                           "round": round_, "ready_s": round(ready_s, 1),
                           **first_requests(url, bodies, target.headers(), answered_by)}
                rows.append(row)
                log(f"{row}")
    return {"machine": machine.describe(project.root), "model": mv.key, "serving": mv.serving, "rows": rows,
            "next": NEXT, "burst": BURST, "bursts": BURSTS, "serving_s": SERVING_S, "serving_clients": SERVING_CLIENTS}


def markdown(results):
    """One line per scenario, warm-up setting and round: a lone client's first request against its
    next ones, then a first burst against later ones; then each setting's mean ratios."""
    lines = tables.head(f"`bench --first`: {results['model']} ({results['serving']['workers']} worker(s), batches of "
                  f"{results['serving']['batch_size']} within {results['serving']['max_batch_delay_ms']} ms): a lone "
                  f"client's first request and the median of its next {results['next']}, then the slowest of a first "
                  f"burst of {results['burst']} clients and the median of the slowest of {results['bursts']} later bursts; "
                  f"then the lone client's median again after {results['serving_s']:g} s of {results['serving_clients']} "
                  "clients (at work)",
                  results, [("scenario", "l"), ("warm-up", "l"), ("round", "r"), ("READY s", "r"), ("first ms", "r"),
                            ("next ms", "r"), ("first / next", "r"), ("first burst ms", "r"), ("later bursts ms", "r"),
                            ("first / later", "r"), ("at work ms", "r"), ("next / at work", "r")])
    means: dict = {}
    for r in results["rows"]:
        lone, burst = r["first_ms"] / r["next_median_ms"], r["burst_first_ms"] / r["burst_later_ms"]
        means.setdefault((r["scenario"], r["warm_up"]), []).append((lone, burst, r["first_ms"] / r["at_work_median_ms"]))
        lines.append(f"| {r['scenario']} | {r['warm_up']} | {r['round']} | {r['ready_s']} | {r['first_ms']} | "
                     f"{r['next_median_ms']} | {lone:.1f}x | {r['burst_first_ms']} | {r['burst_later_ms']} | {burst:.1f}x | "
                     f"{r['at_work_median_ms']} | {r['next_median_ms'] / r['at_work_median_ms']:.1f}x |")
    lines += ["", "| scenario | warm-up | mean first / next | mean first burst / later | mean first / at work |",
              "| --- | --- | ---: | ---: | ---: |"]
    for (scenario, setting), ratios in means.items():
        lines.append(f"| {scenario} | {setting} | " + " | ".join(
            f"{statistics.mean(r[k] for r in ratios):.1f}x" for k in range(3)) + " |")
    return "\n".join(lines) + "\n"
