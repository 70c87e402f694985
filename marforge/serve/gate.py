"""What a rollout measures on the live server: the gate before promotion and the watch after it.

The gate sends the same images to the candidate's and the current default's versioned URLs,
interleaved, and judges the candidate by the registry's rules. Its images are the model's labelled
eval set (eval/<name>/), or, when it has none, the version's samples; what it checks follows:

    always               no failed request; p99 at most max_p99_ratio x the default's + p99_slack_ms
    labelled, one label  accuracy >= min_accuracy, and at most max_accuracy_drop below the default's
    labelled, several    mean AUROC >= min_auroc, and at most max_auroc_drop below the default's
    own handler          accuracy of the answers' `decision` field (registry `answers`), as one label
    unlabelled           the same decision as the default (top-1 label, or set of positive labels;
                         an own handler's decision field, or its whole answer without ignored
                         fields) on at least min_agreement of the images

and every check it could not run is reported with the reason. The watch probes the unversioned URL
after promotion: every answer must come from the new default, its workers stay READY and the
server's 5xx count stays put.
"""

import statistics
import time

from marforge import labelled, shipped, tasks
from marforge.archiving import expected
from marforge.archiving.mar import model_config_of
from marforge.archiving.verify import sample_files
from marforge.errors import ApiError, DataError, Rejected
from marforge.serve.client import version_ready
from marforge.tasks import custom


def images_for(model, mv):
    """(images [(bytes, label)], what they are, labelled?) for gating `mv` of `model`."""
    try:
        if labelled.exists(model.eval_dir):
            pairs, source = labelled.read(model.eval_dir, f"eval set for {model.name}"), f"eval images ({model.eval_dir.name}/)"
        else:
            pairs, source = sample_files(mv), f"samples (no eval set in eval/{model.name}/)"
    except DataError as exc:
        raise Rejected(f"{exc.message}: the gate needs images to send", exc.hint) from None
    is_labelled = all(label is not None for _, label in pairs) and labelled.exists(model.eval_dir)
    return [(path.read_bytes(), label) for path, label in pairs], source, is_labelled


def config_of(mar_path):
    """The HandlerConfig of the archive the server serves (its task, labels, thresholds), as its handler
    section says: the archive, not weights/, which may have changed since it was built. An own
    handler's archive: the comparison its stamp records (tasks/custom.py AnswersConfig)."""
    contract, config = shipped.contract(), model_config_of(mar_path)
    stamp = config.get(contract.STAMP_SECTION) or {}
    if stamp.get("own_handler"):
        return custom.config_from(stamp, f"{mar_path} ({contract.CONFIG_FILE})")
    return contract.HandlerConfig.from_dict(config.get("handler"))


def measure(client, name, versions, images, config):
    """Send every image to each version's URL, interleaved; per version its answers (None for a
    failed request), errors and latency, summarised with the task's decisions and metric."""
    results = {v: {"answers": [], "errors": 0, "latencies_ms": []} for v in versions}
    for i, (image, _) in enumerate(images):
        order = versions if i % 2 == 0 else list(reversed(versions))  # neither version always goes first
        for version in order:
            r = results[version]
            start = time.perf_counter()
            try:
                r["answers"].append(client.predict(name, image, version=version))
            except ApiError:
                r["errors"] += 1
                r["answers"].append(None)
            r["latencies_ms"].append((time.perf_counter() - start) * 1000)
    return {v: _summarise(r, images, config) for v, r in results.items()}


def _summarise(r, images, config):
    n, task = len(images), tasks.of(config.task)
    latencies = sorted(r["latencies_ms"])
    truth = [label for _, label in images]
    metric, _, _ = task.gate_metric(config.task)
    summary = {"n": n, "errors": r["errors"], "p50_ms": round(statistics.median(latencies), 2),
               "p99_ms": round(latencies[min(n - 1, int(0.99 * n))], 2),
               "decisions": [None if a is None else task.decision(a, config) for a in r["answers"]], metric: None,
               "answers": r["answers"]}
    if all(label is not None for label in truth) and not r["errors"]:
        value = task.quality(config, r["answers"], truth).get(metric)
        summary[metric] = None if value is None else round(value, 4)
    return summary


def judge(candidate, baseline, rules, is_labelled, config):
    """(reasons to reject, checks): every check with whether it ran and passed, and its detail (why it
    failed, or why it did not run). With no labelled eval set it also sets candidate["agreement"]."""
    checks, reasons = [], []
    metric, stem, shown = tasks.of(config.task).gate_metric(config.task)

    def check(name, ran, failed=None, why=""):
        checks.append({"check": name, "ran": ran, "passed": ran and not failed, "detail": failed or why})
        if ran and failed:
            reasons.append(failed)

    check("no failed request", True, candidate["errors"] and f"{candidate['errors']} of {candidate['n']} eval requests failed")
    if config.task == tasks.CUSTOM and not config.comparison.decision:
        is_labelled = False  # an own handler's answers meet the labels only through their decision field
    if is_labelled:
        _floor_and_drop(check, metric, shown, candidate, baseline, rules[f"min_{stem}"], rules[f"max_{stem}_drop"])
    else:
        check(shown, False, why="no labelled eval set: the images' true labels are not known")
        same = sum(c == d for c, d in zip(candidate["decisions"], baseline["decisions"]) if c is not None)
        agreement = round(same / candidate["n"], 4)
        candidate["agreement"] = agreement
        check("agreement with the default", True, agreement < rules["min_agreement"] and (
            f"the same decision as the default on {agreement:.4f} of the images, below {rules['min_agreement']}"))
    limit = rules["max_p99_ratio"] * baseline["p99_ms"] + rules["p99_slack_ms"]
    check("p99", True, candidate["p99_ms"] > limit and (
        f"p99 {candidate['p99_ms']:.1f} ms exceeds {limit:.1f} ms ({rules['max_p99_ratio']} x the default's "
        f"{baseline['p99_ms']:.1f} ms + {rules['p99_slack_ms']} ms)"))
    return reasons, checks


def _floor_and_drop(check, metric, name, candidate, baseline, floor, drop):
    value, theirs = candidate[metric], baseline[metric]
    if value is None:
        check(name, False, why=f"the {name} could not be computed (every label needs a positive and a negative image)")
        return
    check(f"{name} floor", True, value < floor and f"{name} {value:.4f} is below the floor {floor:.4f}")
    check(f"{name} drop", theirs is not None, theirs is not None and value < theirs - drop and (
        f"{name} {value:.4f} is more than {drop} below the current default's {theirs:.4f}"))


def watch(client, name, version, images, seconds, config=None, answers=None):
    """Probe the unversioned URL; returns (problems, probes sent); no problems: the new default behaves.
    An answer names the version that gave it; an own handler's does not, so with its AnswersConfig
    (`config`) each answer must agree with the new default's own answer to the image in the gate (`answers`)."""
    problems, probes = [], 0
    errors_before = client.metric_total("Requests5XX")
    deadline = time.monotonic() + seconds
    next_describe = 0.0
    while time.monotonic() < deadline and not problems:
        index = probes % len(images)
        image, _ = images[index]
        probes += 1
        try:
            answer = client.predict(name, image)
            if getattr(config, "task", None) == tasks.CUSTOM:
                if answers and answers[index] is not None and not expected.agrees(answer, answers[index], config.comparison):
                    problems.append(f"an unversioned request was answered otherwise than {name} {version} answered "
                                    f"the same input in the gate (compared by {expected.described(config.comparison)})")
            elif answer["version"] != version:
                problems.append(f"an unversioned request was answered by {name} {answer['version']}, not {version}")
        except ApiError as exc:
            problems.append(f"an unversioned request failed: HTTP {exc.status} {exc.body.strip()[:200]}")
        if time.monotonic() >= next_describe:
            if not version_ready(client.describe(name, version)):
                problems.append(f"{name} {version} has workers that are not READY")
            next_describe = time.monotonic() + 1.0
        time.sleep(0.05)
    new_5xx = client.metric_total("Requests5XX") - errors_before
    if new_5xx > 0:
        problems.append(f"the server answered {new_5xx:.0f} requests with 5xx during the watch")
    return problems, probes
