"""The markdown of each kind of result: `make bench`'s table, the format comparison, the sweep, the
queue, the experiments run in alternating rounds (`bench --jvm`, `bench --protocols`) and a soak's
report and summary, `bench-kserve`'s report (first.py and lone.py write their own). report.py
writes them (MARKDOWN names which is which)."""

from marforge.measure import answers, machine

SOAK_ROWS = 13  # rows of windows in a soak's table


def _cpu(row):
    return ", ".join(f"{k} {v}" for k, v in sorted(row["server_cpu"].items()))


def head(title, results, columns):
    """A report's first lines: what ran and on which machine, then a table header; `columns` are
    (name, align) with align "l" or "r"."""
    return [f"{title}. {machine.headline(results['machine'])}.", "",
            "| " + " | ".join(name for name, _ in columns) + " |",
            "|" + "".join(" --- |" if align == "l" else " ---: |" for _, align in columns)]


def bench_markdown(results):
    gpu = any("gpu_util_pct" in r for r in results["rows"])  # a GPU machine: its utilisation and memory too
    lines = head(f"`make bench`: {results['model']} served as {results.get('format', '?')}, "
                  f"{results.get('images', 'its eval images')}, {results['seconds']:g} s per row", results,
                  [("row", "l"), ("conc.", "r"), ("req/s", "r"), ("p50 ms", "r"), ("p90 ms", "r"), ("p99 ms", "r"),
                   ("errors", "r"), ("loadgen CPU", "r"), ("server CPU (cores)", "l"), ("peak RSS MB", "r")]
                  + ([("GPU util %", "r"), ("GPU MB", "r")] if gpu else []))
    for r in results["rows"]:
        extra = f" {r.get('gpu_util_pct', '')} | {r.get('gpu_memory_mb', '')} |" if gpu else ""
        if r["concurrency"] is None:
            lines.append(f"| {r['row']} ({r['processes']} processes, img/s) | - | {r['throughput']} | | | | | | | |"
                         + (" | |" if gpu else ""))
            continue
        lines.append(f"| {r['row']} | {r['concurrency']} | {r['throughput']} | {r['p50_ms']} | {r['p90_ms']} | "
                     f"{r['p99_ms']} | {r['errors']} | {r['loadgen_cpu']} | {_cpu(r)} | {r['peak_rss_mb']} |{extra}")
    by_pair = {}
    for name, value in results["ratios"].items():
        pair, concurrency = name.split(" at ")
        by_pair.setdefault(pair, {})[int(concurrency)] = value
    concurrencies = sorted({c for by in by_pair.values() for c in by})
    lines += ["", "| ratio | " + " | ".join(f"at {c}" for c in concurrencies) + " |",
              "| --- |" + " ---: |" * len(concurrencies)]
    for pair, by in by_pair.items():
        lines.append(f"| {pair} | " + " | ".join(str(by.get(c, "-")) for c in concurrencies) + " |")
    lines += ["", "| target | value | bound | met |", "| --- | ---: | ---: | --- |"]
    for name, check in results["targets"].items():
        lines.append(f"| {name} | {check['value']} | {check['target']} | {'yes' if check['met'] else 'NO'} |")
    return "\n".join(lines + answers.markdown_lines(results) + cost_lines(results)) + "\n"


def cost_lines(results):
    """Where the CPU of one request goes when (c) is busiest: the table that explains the (c)/(a) ratio."""
    ceiling = next((r for r in results["rows"] if r["concurrency"] is None), None)
    busiest = max((r for r in results["rows"] if r["row"].startswith("(c) ")), key=lambda r: r["concurrency"], default=None)
    if not ceiling or not busiest or not busiest["throughput"]:
        return []
    def per_request(cores):  # ms of CPU per request
        return round(cores / busiest["throughput"] * 1000, 3)

    pipeline = round(results["machine"]["cpus"] / ceiling["throughput"] * 1000, 3)  # the ceiling's ms per image
    worker = per_request(busiest["server_cpu"].get("worker", 0.0))
    lines = ["", f"CPU per request of (c) at {busiest['concurrency']} clients ({busiest['throughput']} req/s):", "",
             "| part | cores busy | ms of CPU per request |", "| --- | ---: | ---: |",
             f"| decode + preprocess + model (the ceiling's cost) | | {pipeline} |",
             f"| the rest of the workers (TorchServe's protocol, batching, answers) | | {round(worker - pipeline, 3)} |"]
    for role, cores in sorted(busiest["server_cpu"].items()):
        lines.append(f"| {role} | {cores} | {per_request(cores)} |")
    lines.append(f"| load generator | {busiest['loadgen_cpu']} | {per_request(busiest['loadgen_cpu'])} |")
    return lines


def formats_markdown(results):
    lines = head(f"`make bench-formats`: {results['seconds']:g} s per row", results,
                  [("version", "l"), ("format", "l"), ("conc.", "r"), ("req/s", "r"), ("p50 ms", "r"), ("p99 ms", "r"),
                   ("errors", "r"), ("server CPU (cores)", "l"), ("peak RSS MB", "r")])
    for r in results["rows"]:
        lines.append(f"| {r['version']} | {r['format']} | {r['concurrency']} | {r['throughput']} | {r['p50_ms']} | "
                     f"{r['p99_ms']} | {r['errors']} | {_cpu(r)} | {r['peak_rss_mb']} |")
    lines += ["", "Fastest format per version (models.toml `format` serves it as <name>-<version>.mar):", ""]
    lines += [f"- {key}: {fmt}" for key, fmt in results["winners"].items()]
    if results.get("starts"):  # runs before the start figures were taken have none
        lines += ["", "How each server started, before any other load: seconds until every worker was READY (its "
                  "warm-up included), a lone client's first request and the median of its next, the slowest of 16 "
                  "clients' first requests at once and of later such bursts (ms):", "",
                  "| version | format | READY s | first | next (median) | first burst | later bursts |",
                  "| --- | --- | ---: | ---: | ---: | ---: | ---: |"]
        lines += [f"| {r['version']} | {r['format']} | {r['ready_s']} | {r['first_ms']} | {r['next_median_ms']} | "
                  f"{r['burst_first_ms']} | {r['burst_later_ms']} |" for r in results["starts"]]
    return "\n".join(lines) + "\n"


def sweep_markdown(results):
    """One line per setting, in the order swept: throughput, p50 and p99 at each concurrency."""
    knobs = ("workers", "threads", "batch_size", "max_batch_delay_ms")
    settings = {}
    for r in results["rows"]:
        settings.setdefault(tuple(r[k] for k in knobs), {})[r["concurrency"]] = r
    concurrencies = sorted({r["concurrency"] for r in results["rows"]})
    columns = ["workers", "threads/worker", "batch", "delay ms"]
    for c in concurrencies:
        columns += [f"req/s @{c}", f"p50 ms @{c}", f"p99 ms @{c}"]
    lines = head(f"`bench --sweep`: {results['model']}, {results['seconds']:g} s per point", results,
                 [(name, "r") for name in columns + ["errors"]])
    for knob_values, by_concurrency in settings.items():
        cells = [str(v) for v in knob_values]
        for c in concurrencies:
            r = by_concurrency.get(c)
            cells += [str(r["throughput"]), str(r["p50_ms"]), str(r["p99_ms"])] if r else ["-"] * 3
        cells.append(str(sum(r["errors"] for r in by_concurrency.values())))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def queue_markdown(results):
    """One line per queue size and client count: what was refused (503) and how long the rest waited."""
    lines = head(f"`bench --queue`: {results['model']}, {results['seconds']:g} s per point", results,
                  [(name, "r") for name in ("job_queue_size", "clients", "req/s", "p50 ms", "p99 ms", "refused (503)",
                                            "other failures")])
    for r in results["rows"]:
        failed = {int(k): v for k, v in r["failed_statuses"].items()}
        refused = failed.pop(503, 0)
        lines.append(f"| {r['job_queue_size']} | {r['concurrency']} | {r['throughput']} | {r['p50_ms']} | "
                     f"{r['p99_ms']} | {refused} | {sum(failed.values())} |")
    return "\n".join(lines) + "\n"


def rounds_lines(results, extra, ratios):
    """The table of an experiment in alternating rounds (rows with a "round"): every row, each
    setting's mean over the rounds, and for each (setting, reference, heading) of `ratios` the
    setting's means over the reference's. `extra`: (column, row key) measured beyond latency."""
    lines = [f"| {r['row']} | {r['round']} | {r['concurrency']} | {r['throughput']} | {r['p50_ms']} | {r['p99_ms']} | "
             f"{r['errors']} |" + "".join(f" {r[key]} |" for _, key in extra) for r in results["rows"]]
    means, mean = {}, {}
    for r in results["rows"]:
        means.setdefault((r["row"], r["concurrency"]), []).append(r)
    lines += ["", "| setting | conc. | mean req/s | mean p99 ms | worst p99 ms |" + "".join(f" mean {c} |" for c, _ in extra),
              "| --- | ---: | ---: | ---: | ---: |" + " ---: |" * len(extra)]
    for (name, concurrency), rows in means.items():
        keys = ("throughput", "p99_ms", *(key for _, key in extra))
        mean[name, concurrency] = [sum(r[k] for r in rows) / len(rows) for k in keys]
        lines.append(f"| {name} | {concurrency} | {mean[name, concurrency][0]:.1f} | {mean[name, concurrency][1]:.2f} | "
                     f"{max(r['p99_ms'] for r in rows)} |" + "".join(f" {v:.1f} |" for v in mean[name, concurrency][2:]))
    concurrencies = sorted({c for _, c in means})
    for name, reference, heading in ratios:
        lines += ["", f"| {heading} | " + " | ".join(f"at {c}" for c in concurrencies) + " |",
                  "| --- |" + " ---: |" * len(concurrencies)]
        for index, what in enumerate(("req/s", "p99", *(c.removesuffix(" MB") for c, _ in extra))):
            lines.append(f"| {what} | " + " | ".join(f"{mean[name, c][index] / mean[reference, c][index]:.2f}"
                                                     for c in concurrencies) + " |")
    return lines


ROUND_COLUMNS = [("setting", "l"), ("round", "r"), ("conc.", "r"), ("req/s", "r"), ("p50 ms", "r"), ("p99 ms", "r"),
                 ("errors", "r")]


def jvm_markdown(results):
    """`bench --jvm`: every round, the means, and the bounded server's ratio to the defaults."""
    from marforge.measure.tuning import JVM_BOUNDED, JVM_DEFAULTS

    extra = [("frontend RSS MB", "frontend_rss_mb")]
    return "\n".join(head(f"`bench --jvm`: {results['model']}, {results['seconds']:g} s per point; bounded: "
                           f"`{results['vmargs']}` and {results['env']}", results, ROUND_COLUMNS + [(extra[0][0], "r")])
                     + rounds_lines(results, extra, [(JVM_BOUNDED, JVM_DEFAULTS, "bounded / defaults")])) + "\n"


def protocols_markdown(results):
    """`bench --protocols`: every round, the means, and gRPC's and v2 JSON's ratios to the bytes."""
    from marforge.measure.experiments import PROTOCOL_ROWS

    (c, _), *others = PROTOCOL_ROWS
    return "\n".join(head(f"`bench --protocols`: {results['model']}, {results['seconds']:g} s per point", results,
                           ROUND_COLUMNS) + rounds_lines(results, [], [(o, c, f"{o.split()[0]} / {c.split()[0]}")
                                                                       for o, _ in others])) + "\n"


def _mean(values):
    return round(sum(values) / len(values), 2) if values else float("nan")


def kserve_markdown(results):
    """`bench-kserve`'s report: what ran where, time to first answer per pass, each row, and the means over passes."""
    load = ", ".join(f"{v:g}" for v in results["load_at_start"])
    lines = [f"`{results['command']}`: {results['model']}, {results['images']} images, {results['seconds']:g} s per row, "
             f"{results['passes']} alternating pass(es). {machine.headline(results['machine'])}. Load average at the "
             f"start: {load} (1, 5, 15 min).", "", f"Compared: {results['compared']}.", "",
             "| pod: route | " + " | ".join(f"first answer s, pass {p}" for p in range(1, results["passes"] + 1)) + " |",
             "| --- |" + " ---: |" * results["passes"]]
    paths = list(dict.fromkeys(r["row"] for r in results["rows"])) or list(dict.fromkeys(
        f"{f['runtime']}: {f['route']}" for f in results["first_answer"]))
    for path in paths:
        by_pass = {f["pass"]: f["seconds"] for f in results["first_answer"] if f"{f['runtime']}: {f['route']}" == path}
        lines.append(f"| {path} | " + " | ".join(str(by_pass.get(p, "-")) for p in range(1, results["passes"] + 1)) + " |")
    lines += ["", "| pod: route | protocol | conc. | mean req/s | mean p50 ms | mean p99 ms | worst p99 ms | errors |",
              "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for path in paths:
        for protocol in dict.fromkeys(r["protocol"] for r in results["rows"]):
            for concurrency in results["concurrencies"]:
                same = [r for r in results["rows"] if (r["row"], r["protocol"], r["concurrency"]) == (path, protocol, concurrency)]
                lines.append(f"| {path} | {protocol} | {concurrency} | {_mean([r['throughput'] for r in same])} | "
                             f"{_mean([r['p50_ms'] for r in same])} | {_mean([r['p99_ms'] for r in same])} | "
                             f"{max((r['p99_ms'] for r in same), default='-')} | {sum(r['errors'] for r in same)} |")
    lines += ["", "<details><summary>every pass</summary>", "",
              "| pod: route | protocol | pass | conc. | req/s | p50 ms | p99 ms | errors |",
              "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    lines += [f"| {r['row']} | {r['protocol']} | {r['pass']} | {r['concurrency']} | {r['throughput']} | {r['p50_ms']} | "
              f"{r['p99_ms']} | {r['errors']} |" for r in results["rows"]]
    return "\n".join([*lines, "", "</details>"]) + "\n"


def soak_markdown(results):
    """What a soak ran and showed: windows (at most SOAK_ROWS of them, evenly spread), each process's
    memory trend, the verdict."""
    windows = results["windows"]
    step = max(1, -(-len(windows) // SOAK_ROWS))
    shown = windows[::step] if windows[-1] in windows[::step] else windows[::step] + [windows[-1]]
    frontend = next((k for k in windows[0]["rss_mb"] if k.startswith("frontend")), None) if windows else None
    lines = head(f"`make soak`: {results['model']}, {results['minutes']:g} minutes, {results['concurrency']} "
                  f"connections, {results['window_s']:g} s windows, {sum(w['requests'] for w in windows)} requests",
                  results, [(name, "r") for name in ("minute", "req/s", "p50 ms", "p99 ms", "errors", "frontend RSS MB",
                                                     "post-GC heap MB", "JVM committed (NMT) MB")])
    for w in shown:
        jvm = w.get("jvm") or {}
        nmt = round(sum(jvm["nmt_mb"].values()), 1) if jvm.get("nmt_mb") else "-"
        lines.append(f"| {w['minute']} | {w['throughput']} | {w['p50_ms']} | {w['p99_ms']} | {w['errors']} | "
                     f"{w['rss_mb'].get(frontend, '-')} | {jvm.get('heap_used_mb', '-')} | {nmt} |")
    lines += ["", "| process | first MB | settled MB | last third from MB | end MB | last third rise MB | "
              "settled slope MB/h |", "| --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for process, t in results["trends"].items():
        lines.append(f"| {process} | {t['first_mb']} | {t['settled_mb']} | {t['last_third_start_mb']} | "
                     f"{t['end_mb']} | {t['last_third_rise_mb']} | {t['settled_slope_mb_per_hour']} |")
    lines += _nmt_lines(windows, results)
    verdict = ["soak FAILED: " + "; ".join(results["problems"])] if results["problems"] else [
        "soak passed: no errors, memory on a plateau once settled, no p99 drift"]
    return "\n".join(lines + [""] + [f"- {note}" for note in results["notes"]] + verdict) + "\n"


def soak_summary_markdown(results):
    """A soak in a few lines, for the README: what ran, how the frontend's and the workers' memory
    moved once settled, the verdict (the whole report is in docs/operations.md)."""
    windows, trends = results["windows"], results["trends"]
    lines = [f"`make soak`: {results['model']}, {results['minutes']:g} minutes, {sum(w['requests'] for w in windows)} "
             f"requests, {sum(w['errors'] for w in windows)} failed. {machine.headline(results['machine'])}.", "",
             "| memory | settled MB | end MB | last third rise MB | settled slope MB/h |",
             "| --- | ---: | ---: | ---: | ---: |"]
    workers = [t for name, t in trends.items() if name.startswith("worker")]
    shown = [(name, t) for name, t in trends.items() if not name.startswith("worker")]
    if workers:
        shown.append((f"the worker that rose most (of {len(workers)})", max(workers, key=lambda t: t["last_third_rise_mb"])))
    for name, t in shown:
        name = "frontend RSS" if name.startswith("frontend") else name
        lines.append(f"| {name} | {t['settled_mb']} | {t['end_mb']} | {t['last_third_rise_mb']} | "
                     f"{t['settled_slope_mb_per_hour']} |")
    verdict = ("soak FAILED: " + "; ".join(results["problems"]) if results["problems"] else
               "soak passed: no errors, memory on a plateau once settled, no p99 drift")
    return "\n".join(lines + ["", verdict]) + "\n"


def _nmt_lines(windows, results):
    """The JVM's committed memory by category (Native Memory Tracking) at the first window, once
    settled and at the end, for the categories of a megabyte or more; [] without NMT figures."""
    nmt = [(w.get("jvm") or {}).get("nmt_mb") for w in windows]
    if not windows or None in nmt:
        return []
    settled = windows[max(1, len(windows) // 3)] if len(windows) >= 3 else windows[-1]
    first, middle, end = nmt[0], settled["jvm"]["nmt_mb"], nmt[-1]
    lines = ["", f"JVM committed memory by category (Native Memory Tracking), MB: at minute {windows[0]['minute']}, "
             f"once settled (minute {settled['minute']}) and at the end (minute {windows[-1]['minute']}):", "",
             "| category | first | settled | end |", "| --- | ---: | ---: | ---: |"]
    for category in sorted(end, key=lambda c: -end[c]):
        if max(first.get(category, 0), end[category]) >= 1:
            lines.append(f"| {category} | {first.get(category, '-')} | {middle.get(category, '-')} | {end[category]} |")
    lines.append(f"| total | {round(sum(first.values()), 1)} | {round(sum(middle.values()), 1)} | "
                 f"{round(sum(end.values()), 1)} |")
    return lines
