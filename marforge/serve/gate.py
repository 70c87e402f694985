"""What a rollout measures on the live server: the gate before promotion and the watch after it.

The gate sends the same images to the candidate's and the current default's versioned URLs,
interleaved, and judges the candidate by the registry's rules. Its images are the model's labelled
eval set (eval/<name>/), or, when it has none, the version's samples; what it checks follows:

    always               no failed request; p99 at most max_p99_ratio x the default's + p99_slack_ms
    labelled, one label  accuracy >= min_accuracy, and at most max_accuracy_drop below the default's
    labelled, several    mean AUROC >= min_auroc, and at most max_auroc_drop below the default's
    unlabelled           the same decision as the default (top-1 label, or set of positive labels)
                         on at least min_agreement of the images

and every check it could not run is reported with the reason. The watch probes the unversioned URL
after promotion: every answer must come from the new default, its workers stay READY and the
server's 5xx count stays put.
"""

import statistics
import time

from marforge import labelled, scores, shipped
from marforge.archiving.mar import model_config_of
from marforge.archiving.verify import sample_files
from marforge.errors import ApiError, DataError, Rejected
from marforge.serve.client import version_ready


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


def task_of(mar_path):
    """The task of the archive the server serves ("multiclass" or "multilabel"), as its handler section says:
    the archive, not weights/, which may have changed since it was built."""
    return (model_config_of(mar_path).get("handler") or {}).get("task", "multiclass")


def measure(client, name, versions, images, task="multiclass"):
    """Send every image to each version's URL, interleaved; per version its answers' decisions (top-1
    label, or sorted positive labels), probabilities, errors and latency."""
    results = {v: {"decisions": [], "probabilities": [], "errors": 0, "latencies_ms": [], "labels": None}
               for v in versions}
    classification = shipped.module("classification")
    for i, (image, _) in enumerate(images):
        order = versions if i % 2 == 0 else list(reversed(versions))  # neither version always goes first
        for version in order:
            r = results[version]
            start = time.perf_counter()
            try:
                answer = client.predict(name, image, version=version)
                r["decisions"].append(classification.stated_labels(answer, task))
                if task == "multilabel":
                    r["probabilities"].append([p["probability"] for p in answer["predictions"]])
                    r["labels"] = [p["label"] for p in answer["predictions"]]
            except ApiError:
                r["errors"] += 1
                r["decisions"].append(None)
                r["probabilities"].append(None)
            r["latencies_ms"].append((time.perf_counter() - start) * 1000)
    return {v: _summarise(r, images, task) for v, r in results.items()}


def _summarise(r, images, task):
    n = len(images)
    latencies = sorted(r["latencies_ms"])
    truth = [label for _, label in images]
    summary = {"n": n, "errors": r["errors"], "p50_ms": round(statistics.median(latencies), 2),
               "p99_ms": round(latencies[min(n - 1, int(0.99 * n))], 2), "decisions": r["decisions"],
               "accuracy": None, "mean_auroc": None}
    if all(label is not None for label in truth):
        if task == "multilabel" and not r["errors"]:
            summary["mean_auroc"] = scores.mean_auroc(r["probabilities"], truth, r["labels"])[0]
        elif task != "multilabel":
            summary["accuracy"] = round(scores.accuracy(r["decisions"], truth), 4)
    return summary


def judge(candidate, baseline, rules, is_labelled, task="multiclass"):
    """(reasons to reject, checks): every check with whether it ran and passed, and its detail (why it
    failed, or why it did not run). With no labelled eval set it also sets candidate["agreement"]."""
    checks, reasons = [], []

    def check(name, ran, failed=None, why=""):
        checks.append({"check": name, "ran": ran, "passed": ran and not failed, "detail": failed or why})
        if ran and failed:
            reasons.append(failed)

    check("no failed request", True, candidate["errors"] and f"{candidate['errors']} of {candidate['n']} eval requests failed")
    if is_labelled and task != "multilabel":
        _floor_and_drop(check, "accuracy", candidate, baseline, rules["min_accuracy"], rules["max_accuracy_drop"])
    elif is_labelled:
        _floor_and_drop(check, "mean_auroc", candidate, baseline, rules["min_auroc"], rules["max_auroc_drop"])
    else:
        why = "no labelled eval set: the images' true labels are not known"
        check("accuracy" if task != "multilabel" else "mean AUROC", False, why=why)
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


def _floor_and_drop(check, metric, candidate, baseline, floor, drop):
    name = metric.replace("_", " ").replace("mean auroc", "mean AUROC")
    value, theirs = candidate[metric], baseline[metric]
    if value is None:
        check(name, False, why=f"the {name} could not be computed (every label needs a positive and a negative image)")
        return
    check(f"{name} floor", True, value < floor and f"{name} {value:.4f} is below the floor {floor:.4f}")
    check(f"{name} drop", theirs is not None, theirs is not None and value < theirs - drop and (
        f"{name} {value:.4f} is more than {drop} below the current default's {theirs:.4f}"))


def watch(client, name, version, images, seconds):
    """Probe the unversioned URL; returns (problems, probes sent); no problems: the new default behaves."""
    problems, probes = [], 0
    errors_before = client.metric_total("Requests5XX")
    deadline = time.monotonic() + seconds
    next_describe = 0.0
    while time.monotonic() < deadline and not problems:
        image, _ = images[probes % len(images)]
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
    new_5xx = client.metric_total("Requests5XX") - errors_before
    if new_5xx > 0:
        problems.append(f"the server answered {new_5xx:.0f} requests with 5xx during the watch")
    return problems, probes
