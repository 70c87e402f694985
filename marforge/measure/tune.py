"""`make tune`: one version's serving settings chosen by measurement on this machine, as Triton's
Model Analyzer chooses a model's instances and batching, for what "auto" means (marforge/tuned.py).

Only the keys models.toml leaves "auto" vary; a number written there is the user's and is kept. Each
candidate is served alone by a fresh TorchServe as `make serve` runs it (fixtures.torchserve), warmed
up, then loaded with the version's images at every concurrency of CONCURRENCIES (`bench`'s
load generator, experiments.rows_of). The search goes in stages, each starting from the best so far:

  1. placement   (workers, threads per worker): every way of sharing the cores out (placements)
  2. batch size  BATCH_SIZES
  3. window      WINDOWS_MS, the batch window (max_batch_delay_ms)

A candidate's score is its worst ratio, over the concurrencies, to the best throughput any candidate
of its stage reached there: a setting fast for 64 clients and slow for one scores low. A candidate
replaces the current setting (measured first) only when it scores MARGIN more: short rows drift by
a few percent, and a change must be worth more than that.
Then the rule (what "auto" meant before the tune, tuned.rule) and the winner are served in turn for
CONFIRM_ROUNDS alternating rounds, so that a drift of the machine falls on both. The winner is kept
only when its throughput is ahead of the rule's overall (the geometric mean of its ratios over the
concurrencies) and no concurrency falls more than MARGIN behind; else the tuned table is the rule's
own values, the search's winner recorded as rejected. A search that keeps the rule confirms nothing.
An own handler's threads are not varied: its workers take OMP_NUM_THREADS's share (tuned.resolve).
"""

import dataclasses
import statistics

from marforge.device import cpu_count, gpu_count, threads_per_worker
from marforge.measure import fixtures, machine, tables
from marforge.measure.experiments import images_of, rows_of
from marforge.tuned import TUNABLE, rule

CONCURRENCIES = (1, 16, 64)
SECONDS = 3.0  # per candidate and concurrency: a stage compares candidates measured alike
CONFIRM_SECONDS = 5.0
CONFIRM_ROUNDS = 2
BATCH_SIZES = (1, 4, 16, 32)
WINDOWS_MS = (0, 1, 2, 5)
MARGIN = 0.05  # what a change must gain (a candidate over the current setting), or may lose at one concurrency
RULE_NAME, TUNED_NAME = "rule (untuned)", "search's winner"


def placements(cores, gpus=0):
    """(workers, threads) pairs that share `cores` out without oversubscribing them: every power of two
    of workers up to the cores (a worker per GPU and one more on a GPU machine) with the cores split
    between them, and each with one thread."""
    counts = [gpus, 2 * gpus] if gpus else sorted({1 << i for i in range(cores.bit_length()) if 1 << i <= cores} | {cores})
    pairs = [(w, max(1, cores // w)) for w in counts] + [(w, 1) for w in counts]
    return list(dict.fromkeys(pairs))


def settings_of(mv, cores, gpus):
    """The version's serving settings before the tune: its own numbers, the rule for its "auto" keys
    (threads resolved to the share the server would give: threads_per_worker)."""
    setting = {key: mv.serving[key] if key not in mv.auto else rule(key, cores, gpus) for key in TUNABLE}
    if setting["threads"] is None:
        setting["threads"] = threads_per_worker(setting["workers"], cores)
    return setting


def stages(mv, cores, gpus):
    """The candidates of each stage that varies something, as functions of the best setting so far."""
    auto, own = mv.auto, mv.own_handler
    out = []
    if "workers" in auto or ("threads" in auto and not own):
        def placement(best):
            pairs = placements(cores, gpus)
            if "workers" not in auto:  # the user's number of workers: only their threads vary
                pairs = [(best["workers"], t) for t in (max(1, cores // best["workers"]), 1)]
            workers = list(dict.fromkeys(w for w, _ in pairs))
            if own:  # an own handler's workers take the server's share of the cores
                pairs = [(w, threads_per_worker(w, cores)) for w in workers]
            elif "threads" not in auto:
                pairs = [(w, best["threads"]) for w in workers]
            return [{**best, "workers": w, "threads": t} for w, t in dict.fromkeys(pairs)]
        out.append(("placement", placement))
    if "batch_size" in auto:
        out.append(("batch size", lambda best: [{**best, "batch_size": b} for b in BATCH_SIZES]))
    if "max_batch_delay_ms" in auto:
        out.append(("window", lambda best: [{**best, "max_batch_delay_ms": d} for d in WINDOWS_MS]))
    return out


def serving_of(mv, setting):
    """The version with `setting`: the threads as the handler is told them (None for an own handler)."""
    return dataclasses.replace(mv, serving={**mv.serving, **setting, "threads": None if mv.own_handler else setting["threads"]})


def served(project, mv, setting, bodies, concurrencies, seconds, log):
    """A row per concurrency of a fresh marforge TorchServe serving `mv` with `setting`."""
    with fixtures.torchserve(project, serving_of(mv, setting)) as target:
        rows = rows_of("tune", target, bodies, concurrencies, seconds)
    for row in rows:
        row.update(setting)
        log(f"{row}")
    return rows


def score(rows_by_candidate):
    """Each candidate's worst ratio, over the concurrencies, to the best throughput of any candidate."""
    best = {}
    for rows in rows_by_candidate:
        for r in rows:
            best[r["concurrency"]] = max(best.get(r["concurrency"], 0.0), r["throughput"])
    return [min(r["throughput"] / best[r["concurrency"]] if best[r["concurrency"]] else 0.0 for r in rows)
            for rows in rows_by_candidate]


def tune(project, mv, concurrencies=None, seconds=None, confirm_rounds=None, confirm_seconds=None, log=print):
    """Search the version's "auto" settings (stages) and confirm the winner against the rule; returns
    the results: every candidate's rows and score, the chosen `tuned` table, the confirmation rows.
    The lengths left None are this module's (CONCURRENCIES, SECONDS, CONFIRM_ROUNDS, CONFIRM_SECONDS)."""
    concurrencies, seconds = concurrencies or CONCURRENCIES, seconds or SECONDS
    confirm_rounds, confirm_seconds = confirm_rounds or CONFIRM_ROUNDS, confirm_seconds or CONFIRM_SECONDS
    cores, gpus = cpu_count(), (max(1, gpu_count()) if project.device == "gpu" else 0)
    _, bodies = images_of(mv)
    start = settings_of(mv, cores, gpus)
    best, rows, seen = dict(start), [], {}
    for stage, candidates_of in stages(mv, cores, gpus):
        candidates = [dict(best)] + [c for c in {tuple(sorted(c.items())): c for c in candidates_of(best)}.values() if c != best]
        measured = []
        for candidate in candidates:
            key = tuple(sorted(candidate.items()))
            if key not in seen:
                seen[key] = served(project, mv, candidate, bodies, concurrencies, seconds, log)
            measured.append(seen[key])
        scores = score(measured)
        for candidate_rows, candidate_score in zip(measured, scores):
            rows += [{**r, "stage": stage, "score": round(candidate_score, 3)} for r in candidate_rows]
        top = max(range(len(candidates)), key=lambda i: (scores[i], -i))
        best = dict(candidates[top if scores[top] > scores[0] + MARGIN else 0])
        log(f"{stage}: {best}")
    confirm = []
    for round_ in range(1, confirm_rounds + 1 if best != start else 1):
        pair = [(RULE_NAME, start), (TUNED_NAME, best)]
        for name, setting in pair if round_ % 2 else pair[::-1]:
            for r in served(project, mv, setting, bodies, concurrencies, confirm_seconds, log):
                confirm.append({**r, "setting": name, "round": round_})
    by_concurrency = ratios(confirm)
    keep = kept(by_concurrency)
    return {"model": mv.key, "format": mv.format, "device": project.device, "cores": cores, "gpus": gpus,
            "machine": machine.describe(project.root), "seconds": seconds, "confirm_seconds": confirm_seconds,
            "auto": sorted(mv.auto), "start": start, "winner": best, "kept": keep,
            "tuned": {"cores": cores, **(best if keep else start)}, "rows": rows, "confirm": confirm, "ratios": by_concurrency}


def kept(by_concurrency):
    """The confirmation's verdict on the winner: ahead of the rule overall (the geometric mean of its
    ratios), and nowhere more than MARGIN behind."""
    values = [r for r in by_concurrency.values() if r]
    return bool(values) and statistics.geometric_mean(values) > 1.0 and min(values) >= 1.0 - MARGIN


def ratios(confirm):
    """The search winner's mean throughput over the rule's, per concurrency, over the rounds."""
    out = {}
    for c in dict.fromkeys(r["concurrency"] for r in confirm):
        mean = {name: statistics.mean(r["throughput"] for r in confirm if r["concurrency"] == c and r["setting"] == name)
                for name in (RULE_NAME, TUNED_NAME)}
        out[str(c)] = round(mean[TUNED_NAME] / mean[RULE_NAME], 3) if mean[RULE_NAME] else None
    return out


def markdown(results):
    """The chosen setting, the confirmation against the rule, then every candidate of every stage."""
    t = results["tuned"]
    lines = tables.head(f"`make tune`: {results['model']} served as {results['format']} on {results['cores']} cores "
                        f"({results['device']}), varying {', '.join(results['auto']) or 'nothing'}", results,
                        [("setting", "l"), ("round", "r"), ("conc.", "r"), ("req/s", "r"), ("p50 ms", "r"), ("p99 ms", "r")])
    start, winner = results["start"], results["winner"]
    chosen = (f"Chosen: {t['workers']} worker(s) of {t['threads']} thread(s), batches of up to {t['batch_size']} within "
              f"{t['max_batch_delay_ms']} ms")
    if winner == start:
        chosen += ": the rule's setting, which no candidate beat by the margin."
    else:
        verdict = ("kept" if results["kept"] else f"rejected (the rule's setting kept: {winner['workers']} x "
                   f"{winner['threads']}, {winner['batch_size']} within {winner['max_batch_delay_ms']} ms was the search's winner)")
        chosen += (f" (the rule: {start['workers']} x {start['threads']}, {start['batch_size']} within "
                   f"{start['max_batch_delay_ms']} ms). Winner / rule throughput, alternating rounds: "
                   + ", ".join(f"{c} client(s) {r}" for c, r in results["ratios"].items()) + f"; {verdict}.")
    lines[2:2] = [chosen, ""]
    lines += [f"| {r['setting']} | {r['round']} | {r['concurrency']} | {r['throughput']} | {r['p50_ms']} | {r['p99_ms']} |"
              for r in results["confirm"]] or ["| (none: the search kept the rule's setting) | | | | | |"]
    lines += ["", "| stage | workers | threads | batch | delay ms | conc. | req/s | p99 ms | score |",
              "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    lines += [f"| {r['stage']} | {r['workers']} | {r['threads']} | {r['batch_size']} | {r['max_batch_delay_ms']} | "
              f"{r['concurrency']} | {r['throughput']} | {r['p99_ms']} | {r['score']} |" for r in results["rows"]]
    return "\n".join(lines) + "\n"
