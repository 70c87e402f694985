"""Move a model's traffic to a new version safely, and back.

TorchServe's management API can hold several versions and move the default between them, but
set-default checks nothing, unregister drops in-flight requests and a restart forgets the
promotion. `rollout` wraps it in steps that each must pass:

    preflight  the archive is in the model store and verifies; the server answers; the version is
               not registered yet, or is, from the same archive bytes
    register   synchronous, explicit workers; wait until every worker is READY (else unregister it
               and report TorchServe's error with the tail of the model log)
    gate       gate.py: the labelled eval set on the candidate and the current default, judged by
               the registry's rules
    promote    set-default, recorded in the run dir's state.json (which `marforge serve` reads on
               restart)
    watch      gate.py: probe the unversioned URL for a while; a problem restores the previous
               default at once
    retire     keep the previous version with one worker (instant rollback) or, with retire=True,
               unregister it once its queue has stayed empty (unregister drops in-flight requests)

A rejected candidate leaves the server as it was (errors.Rejected, exit 3); a candidate that failed
the watch has been rolled back (errors.RolledBack, exit 4); errors.ServerError (exit 2) is an
infrastructure failure. Each of them carries the report so far as `report`.
"""

import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field

from marforge import files
from marforge.archiving import verify
from marforge.errors import ApiError, MarforgeError, Rejected, RolledBack, ServerError
from marforge.serve import gate, state
from marforge.serve.rundir import RunDir


@dataclass
class RolloutReport:
    model: str
    candidate: str  # the version that should end up the default
    previous: str | None = None  # the default before
    kind: str = "rollout"
    outcome: str = "running"
    steps: list = field(default_factory=list)
    gate: dict | None = None

    def to_dict(self):
        return asdict(self)

    def headline(self):
        if self.kind == "rollback":
            return f"{self.model}: rolled back from {self.previous} to {self.candidate}"
        return f"{self.model} {self.candidate}: {self.outcome}"


@contextmanager
def _step(report, name, log):
    """Time one step and record it; a MarforgeError marks it failed and is raised again as the same error
    built with the report (`with_report`)."""
    entry = {"step": name, "seconds": 0.0, "ok": False, "detail": ""}
    report.steps.append(entry)
    start = time.monotonic()
    try:
        yield entry
        entry["ok"] = True
    except MarforgeError as exc:
        entry["detail"] = exc.message.splitlines()[0]
        raise exc.with_report(report) from exc
    finally:
        entry["seconds"] = round(time.monotonic() - start, 3)
        log(f"{name:<10} {entry['seconds']:7.2f}s  {'ok' if entry['ok'] else 'FAILED':<6} {entry['detail']}")


def preflight(client, mv, model_store, run_dir):
    """Check the candidate before touching the server; returns True if it still has to be registered."""
    mar = mv.archive_path(model_store)
    if not mar.is_file():
        raise Rejected(f"{mar}: archive not built", f"make archive (or python -m marforge archive {mv.name} {mv.version})")
    try:
        verify.check(mar, mv)
    except MarforgeError as exc:
        raise Rejected(f"{mar} fails verification: {exc.message}", exc.hint) from None
    client.list_models()  # the server answers, with the management key
    if not client.is_registered(mv.name, mv.version):
        return True
    if state.load(run_dir)["archives"].get(mv.key) != files.sha256(mar):
        raise Rejected(f"{mv.name} {mv.version} is already registered from other archive bytes than {mar} "
                       "(rebuilt since it was loaded)", "restart the server (make stop && make serve) to load the new archive")
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
        client.unregister_if_present(mv.name, mv.version)  # TorchServe sometimes leaves it, workerless
        raise Rejected(f"{mv.name} {mv.version} could not start its workers: {exc.message}\n"
                       f"--- tail of {run_dir.log('model')} ---\n{run_dir.log_tail('model', lines=15)}",
                       "fix the archive, rebuild it (make archive) and roll out again") from None
    state.record_archive(run_dir, mv.key, files.sha256(mar))


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


def gate_detail(c, d, source, checks):
    """The gate step's line: the figures compared, on what, and the checks that could not run."""
    if c.get("accuracy") is not None:
        figures = f"accuracy {c['accuracy']:.4f} vs {d['accuracy']:.4f}, "
    elif c.get("mean_auroc") is not None:
        figures = f"mean AUROC {c['mean_auroc']:.4f} vs {d['mean_auroc']}, "
    else:
        figures = f"agreement {c.get('agreement', 0):.4f} with the default, "
    skipped = [f"{ch['check']} ({ch['detail']})" for ch in checks if not ch["ran"]]
    return (f"{figures}p99 {c['p99_ms']:.1f} vs {d['p99_ms']:.1f} ms on {c['n']} {source}"
            + (f"; not run: {'; '.join(skipped)}" if skipped else ""))


def rollout(client, project, name, version, retire=False, watch_s=None, log=print):
    """Promote `name` `version` of `project` through every step above; returns the RolloutReport."""
    registry, model_store, run_dir = project.registry, project.model_store, RunDir(project.run_dir)
    mv = registry.get(name, version)
    rules = registry.models[name].rollout
    report = RolloutReport(name, version)
    with _step(report, "preflight", log) as s:
        images, source, is_labelled = gate.images_for(registry.models[name], mv)
        needs_register = preflight(client, mv, model_store, run_dir)
        config = gate.config_of(mv.archive_path(model_store))
        report.previous = client.default_version(name)
        if report.previous == version:
            raise Rejected(f"{name} {version} is already the default", "marforge status")
        s["detail"] = f"current default {report.previous}; {'registering' if needs_register else 'already registered'}"
    with _step(report, "register", log) as s:
        if needs_register:
            register_candidate(client, mv, model_store, run_dir, rules["ready_timeout_s"])
        client.wait_ready([(name, version)], timeout=rules["ready_timeout_s"])
        s["detail"] = f"{mv.serving['workers']} worker(s) READY"
    with _step(report, "gate", log) as s:
        results = gate.measure(client, name, [version, report.previous], images, config)
        c, d = results[version], results[report.previous]
        reasons, checks = gate.judge(c, d, rules, is_labelled, config)
        answers = c["answers"]  # the watch compares an own handler's answers with them
        for summary in (c, d):
            summary.pop("decisions"), summary.pop("answers")  # judged; not worth a line each in the report
        report.gate = {"images": source, "candidate": c, "default": d, "rules": rules, "checks": checks}
        s["detail"] = gate_detail(c, d, source, checks)
        if reasons:
            if needs_register:
                client.unregister(name, version)
            report.outcome = "rejected"
            raise Rejected(f"{name} {version} rejected: " + "; ".join(reasons))
    with _step(report, "promote", log) as s:
        client.set_default(name, version)
        state.record_promotion(run_dir, name, report.previous, version)
        s["detail"] = f"default {report.previous} -> {version}"
    with _step(report, "watch", log) as s:
        problems, probes = gate.watch(client, name, version, images, rules["watch_s"] if watch_s is None else watch_s,
                                      config, answers)
        s["detail"] = f"{probes} probes"
        if problems:
            client.set_default(name, report.previous)
            state.restore_default(run_dir, name, report.previous)
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


def rollback(client, project, name, log=print):
    """Make the version promoted before the current default the default again (re-registering it if retired)."""
    registry, model_store, run_dir = project.registry, project.model_store, RunDir(project.run_dir)
    history = state.load(run_dir)["history"].get(name, [])
    current = client.default_version(name)
    if len(history) < 2 or history[-1] != current:
        raise Rejected(f"no earlier version of {name} to roll back to (history: {history or 'empty'}, default {current})",
                       "marforge status")
    target = history[-2]
    mv = registry.get(name, target)
    timeout = registry.models[name].rollout["ready_timeout_s"]
    report = RolloutReport(name, target, previous=current, kind="rollback")
    with _step(report, "register", log) as s:
        s["detail"] = f"{target} still registered"
        if not client.is_registered(name, target):
            register_candidate(client, mv, model_store, run_dir, timeout)
            s["detail"] = f"{target} registered again (it was retired)"
        client.scale(name, target, workers=mv.serving["workers"])  # retire left it one worker
        client.wait_ready([(name, target)], timeout=timeout)
    with _step(report, "promote", log) as s:
        client.set_default(name, target)
        state.restore_default(run_dir, name, target)
        s["detail"] = f"default {current} -> {target}"
    report.outcome = "rolled back"
    return report
