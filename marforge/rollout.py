"""Move a model's traffic to a new version safely, and back.

TorchServe's management API can hold several versions and move the default between them, but
set-default checks nothing, unregister drops in-flight requests and a restart forgets the
promotion. `rollout` wraps it in steps that each must pass:

    preflight  the archive is in the model store and verifies; the server answers; the version is
               not registered yet, or is, from the same archive bytes
    register   synchronous, explicit workers; wait until every worker is READY (else unregister it
               and report TorchServe's error with the tail of the model log)
    gate       the labelled eval set goes to the candidate's and the current default's versioned
               URLs, interleaved: accuracy and p50/p99 for both; reject below the floor, below the
               default minus a tolerance, or with p99 above ratio x default + slack
    promote    set-default
    watch      probe the unversioned URL for a while: every answer must come from the candidate,
               its workers stay READY and the server's 5xx count stays put; otherwise the previous
               default is restored at once
    retire     keep the previous version with one worker (instant rollback) or, with retire=True,
               unregister it once its queue has stayed empty (unregister drops in-flight requests)
    persist    the run dir's state.json, which `marforge serve` reads on restart

A rejected candidate leaves the server as it was (Rejected, exit 3); a candidate that failed the
watch has been rolled back (RolledBack, exit 4); ServerError (exit 2) is an infrastructure failure.
"""

import json
import statistics
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

from marforge import archive, state
from marforge.client import version_ready
from marforge.errors import ApiError, MarforgeError, ServerError
from marforge.server import log_tail
from marforge.weights import sha256_of


class Rejected(MarforgeError):
    """The candidate was refused; the server is as it was before the rollout."""

    exit_code = 3


class RolledBack(MarforgeError):
    """The candidate was promoted, failed the watch, and the previous default was restored."""

    exit_code = 4


@dataclass
class Report:
    model: str
    candidate: str  # the version that should end up the default
    previous: str = None  # the default before
    kind: str = "rollout"
    outcome: str = "running"
    steps: list = field(default_factory=list)
    gate: dict = None

    def to_json(self):
        return json.dumps(asdict(self), indent=2)

    def headline(self):
        if self.kind == "rollback":
            return f"{self.model}: rolled back from {self.previous} to {self.candidate}"
        return f"{self.model} {self.candidate}: {self.outcome}"


@contextmanager
def _step(report, name, log):
    """Time one step and record it; an exception marks it failed (and carries the report)."""
    entry = {"step": name, "seconds": 0.0, "ok": False, "detail": ""}
    report.steps.append(entry)
    start = time.monotonic()
    try:
        yield entry
        entry["ok"] = True
    except MarforgeError as exc:
        entry["detail"] = exc.message.splitlines()[0]
        exc.report = report
        raise
    finally:
        entry["seconds"] = round(time.monotonic() - start, 3)
        log(f"{name:<10} {entry['seconds']:7.2f}s  {'ok' if entry['ok'] else 'FAILED':<6} {entry['detail']}")


def load_eval_set(model):
    """[(image bytes, label)] from eval/<name>/labels.json: held-out test images, not training data."""
    labels_file = model.eval_dir / "labels.json"
    if not labels_file.is_file():
        raise Rejected(f"{labels_file}: no eval set for {model.name}; the gate needs labelled held-out images",
                       "python -m marforge.train --samples")
    return [((model.eval_dir / name).read_bytes(), label) for name, label in json.loads(labels_file.read_text()).items()]


def is_registered(client, name, version):
    try:
        client.describe(name, version)
        return True
    except ApiError as exc:
        if exc.status == 404:
            return False
        raise


def unregister_if_present(client, name, version):
    try:
        client.unregister(name, version)
    except ApiError as exc:
        if exc.status != 404:
            raise


def preflight(client, mv, model_store, run_dir):
    """Check the candidate before touching the server; returns True if it still has to be registered."""
    mar = mv.archive_path(model_store)
    if not mar.is_file():
        raise Rejected(f"{mar}: archive not built", f"make archive (or python -m marforge archive {mv.name} {mv.version})")
    try:
        archive.verify(mar, mv)
    except MarforgeError as exc:
        raise Rejected(f"{mar} fails verification: {exc.message}", exc.hint) from None
    client.list_models()  # the server answers, with the management key
    if not is_registered(client, mv.name, mv.version):
        return True
    loaded = state.load(run_dir)["archives"].get(mv.key)
    if loaded != sha256_of(mar):
        raise Rejected(f"{mv.name} {mv.version} is already registered from other archive bytes than {mar} "
                       "(rebuilt since it was loaded)", f"restart the server (make stop && make serve) to load the new archive")
    return False


def register_candidate(client, mv, model_store, run_dir, timeout):
    """Register with explicit workers and wait for READY; on failure leave nothing registered."""
    mar = mv.archive_path(model_store)
    try:
        client.register(mar.name, workers=mv.serving["workers"], batch_size=mv.serving["batch_size"],
                        max_batch_delay_ms=mv.serving["max_batch_delay_ms"],
                        response_timeout_s=mv.serving["response_timeout_s"], timeout=timeout)
        client.wait_ready([(mv.name, mv.version)], timeout=timeout)
    except (ApiError, ServerError) as exc:
        unregister_if_present(client, mv.name, mv.version)  # TorchServe sometimes leaves it, workerless
        tail = log_tail(Path(run_dir) / "logs" / "model_log.log", lines=15)
        raise Rejected(f"{mv.name} {mv.version} could not start its workers: {exc.message}\n"
                       f"--- tail of {run_dir}/logs/model_log.log ---\n{tail}",
                       "fix the archive, rebuild it (make archive) and roll out again") from None
    state.record_archive(run_dir, mv.key, sha256_of(mar))


def evaluate(client, name, versions, eval_set):
    """Send every eval image to each version's URL, interleaved; accuracy and latency per version."""
    results = {v: {"correct": 0, "errors": 0, "latencies_ms": []} for v in versions}
    for i, (image, label) in enumerate(eval_set):
        order = versions if i % 2 == 0 else list(reversed(versions))  # neither version always goes first
        for version in order:
            r = results[version]
            start = time.perf_counter()
            try:
                answer = client.predict(name, image, version=version)
                r["correct"] += answer["predictions"][0]["label"] == label
            except ApiError:
                r["errors"] += 1
            r["latencies_ms"].append((time.perf_counter() - start) * 1000)
    return {v: _summarise(r, len(eval_set)) for v, r in results.items()}


def _summarise(r, n):
    latencies = sorted(r["latencies_ms"])
    return {"n": n, "accuracy": round(r["correct"] / n, 4), "errors": r["errors"],
            "p50_ms": round(statistics.median(latencies), 2),
            "p99_ms": round(latencies[min(n - 1, int(0.99 * n))], 2)}


def judge(candidate, baseline, rules):
    """The reasons to reject a candidate given both versions' gate results (empty: it passes)."""
    reasons = []
    if candidate["errors"]:
        reasons.append(f"{candidate['errors']} of {candidate['n']} eval requests failed")
    if candidate["accuracy"] < rules["min_accuracy"]:
        reasons.append(f"accuracy {candidate['accuracy']:.4f} is below the floor {rules['min_accuracy']:.4f}")
    if baseline and candidate["accuracy"] < baseline["accuracy"] - rules["max_accuracy_drop"]:
        reasons.append(f"accuracy {candidate['accuracy']:.4f} is more than {rules['max_accuracy_drop']} below "
                       f"the current default's {baseline['accuracy']:.4f}")
    if baseline:
        limit = rules["max_p99_ratio"] * baseline["p99_ms"] + rules["p99_slack_ms"]
        if candidate["p99_ms"] > limit:
            reasons.append(f"p99 {candidate['p99_ms']:.1f} ms exceeds {limit:.1f} ms "
                           f"({rules['max_p99_ratio']} x the default's {baseline['p99_ms']:.1f} ms + {rules['p99_slack_ms']} ms)")
    return reasons


def server_5xx(client):
    """The server's Requests5XX counter from /metrics (0 when absent)."""
    total = 0.0
    for line in client.metrics().splitlines():
        if line.startswith("Requests5XX{"):
            total += float(line.rsplit(" ", 1)[1])
    return total


def watch(client, name, version, eval_set, seconds):
    """Probe the unversioned URL; returns a list of problems (empty when the new default behaves)."""
    problems, probes = [], 0
    errors_before = server_5xx(client)
    deadline = time.monotonic() + seconds
    next_describe = 0.0
    while time.monotonic() < deadline and not problems:
        image, _ = eval_set[probes % len(eval_set)]
        probes += 1
        try:
            answered = client.predict(name, image)["version"]
            if answered != version:
                problems.append(f"an unversioned request was answered by {name} {answered}, not {version}")
        except ApiError as exc:
            problems.append(f"an unversioned request failed: HTTP {exc.status} {exc.body.strip()[:200]}")
        if time.monotonic() >= next_describe:
            if not version_ready(client.describe(name, version)):
                problems.append(f"{name} {version} has workers that are not READY")
            next_describe = time.monotonic() + 1.0
        time.sleep(0.05)
    new_5xx = server_5xx(client) - errors_before
    if new_5xx > 0:
        problems.append(f"the server answered {new_5xx:.0f} requests with 5xx during the watch")
    return problems, probes


def drain_and_unregister(client, name, version, quiet_s=2.0, timeout=120.0):
    """Unregister once the version's queue has stayed empty for quiet_s (TorchServe drops in-flight work)."""
    deadline = time.monotonic() + timeout
    quiet_since = None
    while True:
        [description] = client.describe(name, version)
        if description.get("jobQueueStatus", {}).get("pendingRequests", 0) == 0:
            quiet_since = quiet_since or time.monotonic()
            if time.monotonic() - quiet_since >= quiet_s:
                client.unregister(name, version)
                return
        else:
            quiet_since = None
        if time.monotonic() > deadline:
            raise ServerError(f"{name} {version} still had queued requests after {timeout:.0f}s; not retired")
        time.sleep(0.1)


def rollout(client, registry, model_store, run_dir, name, version, retire=False, watch_s=None, log=print):
    """Promote `name` `version` through every step above; returns the Report (outcome "promoted")."""
    mv = registry.get(name, version)
    model = registry.models[name]
    rules = model.rollout
    report = Report(name, version)
    with _step(report, "preflight", log) as s:
        eval_set = load_eval_set(model)
        needs_register = preflight(client, mv, model_store, run_dir)
        report.previous = client.default_version(name)
        if report.previous == version:
            raise Rejected(f"{name} {version} is already the default", f"marforge status")
        s["detail"] = f"current default {report.previous}; {'registering' if needs_register else 'already registered'}"
    with _step(report, "register", log) as s:
        if needs_register:
            register_candidate(client, mv, model_store, run_dir, rules["ready_timeout_s"])
        client.wait_ready([(name, version)], timeout=rules["ready_timeout_s"])
        s["detail"] = f"{mv.serving['workers']} worker(s) READY"
    with _step(report, "gate", log) as s:
        results = evaluate(client, name, [version, report.previous], eval_set)
        report.gate = {"candidate": results[version], "default": results[report.previous], "rules": rules}
        c, d = results[version], results[report.previous]
        s["detail"] = (f"accuracy {c['accuracy']:.4f} vs {d['accuracy']:.4f}, p99 {c['p99_ms']:.1f} vs "
                       f"{d['p99_ms']:.1f} ms on {c['n']} eval images")
        reasons = judge(c, d, rules)
        if reasons:
            if needs_register:
                client.unregister(name, version)
            report.outcome = "rejected"
            raise Rejected(f"{name} {version} rejected: " + "; ".join(reasons))
    with _step(report, "promote", log) as s:
        client.set_default(name, version)
        state.record_default(run_dir, name, report.previous, push=True)  # history starts with the old default
        state.record_default(run_dir, name, version, push=True)
        s["detail"] = f"default {report.previous} -> {version}"
    with _step(report, "watch", log) as s:
        problems, probes = watch(client, name, version, eval_set, rules["watch_s"] if watch_s is None else watch_s)
        s["detail"] = f"{probes} probes"
        if problems:
            client.set_default(name, report.previous)
            _forget_last(run_dir, name, report.previous)
            report.outcome = "rolled back"
            raise RolledBack(f"{name} {version} failed the watch and {report.previous} is the default again: "
                             + "; ".join(problems))
    with _step(report, "retire", log) as s:
        if retire:
            drain_and_unregister(client, name, report.previous)
            state.record_retired(run_dir, name, report.previous)
            s["detail"] = f"{report.previous} drained and unregistered"
        else:
            client.scale(name, report.previous, workers=1)
            s["detail"] = f"{report.previous} kept registered with 1 worker for instant rollback"
    report.outcome = "promoted"
    return report


def _forget_last(run_dir, name, previous):
    """Make `previous` the recorded default again: drop the promotion after it, un-retire it."""
    current = state.load(run_dir)
    history = current["history"].get(name, [])
    if history and history[-1] != previous:
        history.pop()
    current["defaults"][name] = previous
    if previous in current["retired"].get(name, []):
        current["retired"][name].remove(previous)
    state.save(run_dir, current)


def rollback(client, registry, model_store, run_dir, name, log=print):
    """Make the version promoted before the current default the default again (re-registering it if retired)."""
    history = state.load(run_dir)["history"].get(name, [])
    current = client.default_version(name)
    if len(history) < 2 or history[-1] != current:
        raise Rejected(f"no earlier version of {name} to roll back to (history: {history or 'empty'}, default {current})",
                       "marforge status")
    target = history[-2]
    mv = registry.get(name, target)
    report = Report(name, target, previous=current, kind="rollback")
    with _step(report, "register", log) as s:
        s["detail"] = f"{target} still registered"
        if not is_registered(client, name, target):
            register_candidate(client, mv, model_store, run_dir, registry.models[name].rollout["ready_timeout_s"])
            s["detail"] = f"{target} registered again (it was retired)"
        client.scale(name, target, workers=mv.serving["workers"])  # retire left it one worker
        client.wait_ready([(name, target)], timeout=registry.models[name].rollout["ready_timeout_s"])
    with _step(report, "promote", log) as s:
        client.set_default(name, target)
        _forget_last(run_dir, name, target)
        s["detail"] = f"default {current} -> {target}"
    report.outcome = "rolled back"
    return report
