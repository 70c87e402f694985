"""What a rollout measures on the live server: the gate before promotion and the watch after it.

The gate sends the model's labelled eval set (eval/<name>/) to the candidate's and the current
default's versioned URLs, interleaved, and judges the candidate against the registry's rules
(accuracy floor, accuracy drop, p99 against the default's, no failed request). The watch probes
the unversioned URL after promotion: every answer must come from the new default, its workers
stay READY and the server's 5xx count stays put.
"""

import statistics
import time

from marforge import labelled
from marforge.errors import ApiError, DataError, Rejected
from marforge.serve.client import version_ready


def eval_set(model):
    """[(image bytes, label)] of the model's held-out eval images (not training data)."""
    try:
        pairs = labelled.read(model.eval_dir, f"eval set for {model.name}")
    except DataError as exc:
        raise Rejected(f"{exc.message}: the gate needs labelled held-out images",
                       f"put labelled images in {model.eval_dir}/ with a labels.json (file -> label)") from None
    return [(path.read_bytes(), label) for path, label in pairs]


def measure(client, name, versions, images):
    """Send every eval image to each version's URL, interleaved; accuracy, errors and latency per version."""
    results = {v: {"correct": 0, "errors": 0, "latencies_ms": []} for v in versions}
    for i, (image, label) in enumerate(images):
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
    return {v: _summarise(r, len(images)) for v, r in results.items()}


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
