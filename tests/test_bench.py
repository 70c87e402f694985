"""The benchmark's arithmetic and reports: ratios, targets, the format winner, the tables and the
generated blocks of docs/performance.md. (The benchmark itself is `make bench`, not part of `make test`.)"""

import subprocess

import pytest

from marforge.errors import DataError
from marforge.measure import experiments, first, lone, report, tables, targets

MACHINE = {"cpus": 2, "cpu_model": "Test CPU", "gpu": None, "torch": "2.x", "commit": "abc1234", "date": "today"}


def row(label, concurrency, throughput, p99=10.0, **extra):
    return {"row": label, "concurrency": concurrency, "throughput": throughput, "p50_ms": p99 / 2,
            "p90_ms": p99 * 0.8, "p99_ms": p99, "errors": 0, "loadgen_cpu": 0.2,
            "server_cpu": {"frontend": 0.5, "worker": 1.0}, "peak_rss_mb": 1400.0, **extra}


ROWS = [{"row": "(a) ceiling", "concurrency": None, "throughput": 8000.0, "processes": 2},
        row("(b) torchserve stock", 16, 100.0), row("(b) torchserve stock", 64, 110.0),
        row("(b') torchserve stock, eager archive", 16, 50.0),
        row("(c) marforge", 16, 2000.0, p99=60.0), row("(c) marforge", 64, 4000.0),
        row("(d) flask", 16, 400.0), row("(d) flask", 64, 420.0),
        row("(e) marforge onnx", 16, 9999.0)]  # (e) rows are never taken for (c)


def test_ratios_compare_marforge_with_each_row():
    ratios = targets.ratios(ROWS, [16, 64])
    assert ratios == {"(c)/(a) at 16": 0.25, "(c)/(b) at 16": 20.0, "(c)/(b') at 16": 40.0, "(c)/(d) at 16": 5.0,
                      "(c)/(a) at 64": 0.5, "(c)/(b) at 64": 36.36, "(c)/(d) at 64": 9.52}


def test_targets_are_checked_against_their_bounds():
    checks = targets.check(ROWS)
    assert checks == {
        "(c)/(b) at 16": {"value": 20.0, "target": 10.0, "met": True},
        "(c)/(d) at 16": {"value": 5.0, "target": 4.0, "met": True},
        "(c)/(a) at 64": {"value": 0.5, "target": 0.6, "met": False},  # the ceiling counts at any concurrency
        "(c) p99 at 16 <= 50 ms": {"value": 60.0, "target": 50.0, "met": False},
    }


def test_a_missing_row_fails_its_target_instead_of_passing():
    checks = targets.check([row("(c) marforge", 16, 2000.0)])
    assert {name: check["met"] for name, check in checks.items()} == {
        "(c)/(b) at 16": False, "(c)/(d) at 16": False, "(c)/(a) at 64": False, "(c) p99 at 16 <= 50 ms": True}
    assert checks["(c)/(b) at 16"]["value"] is None


def test_the_bench_table_shows_rows_ratios_and_targets():
    results = {"model": "fashion-2.0", "format": "onnx", "seconds": 6, "machine": MACHINE, "rows": ROWS,
               "images": "300 from eval/fashion",
               "ratios": targets.ratios(ROWS, [16, 64]), "targets": targets.check(ROWS)}
    table = tables.bench_markdown(results)
    assert table.startswith("`make bench`: fashion-2.0 served as onnx, 300 from eval/fashion, 6 s per row. "
                            "2 CPUs (Test CPU), no GPU; "
                            "torch 2.x, commit abc1234, today.\n")
    assert "| (a) ceiling (2 processes, img/s) | - | 8000.0 | | | | | | | |" in table
    assert "| (c) marforge | 16 | 2000.0 | 30.0 | 48.0 | 60.0 | 0 | 0.2 | frontend 0.5, worker 1.0 | 1400.0 |" in table
    assert "| (c)/(b) | 20.0 | 36.36 |" in table and "| (c)/(b') | 40.0 | - |" in table
    assert "| (c)/(a) at 64 | 0.5 | 0.6 | NO |" in table
    assert table.endswith("CPU per request of (c) at 64 clients (4000.0 req/s):\n\n"
                          "| part | cores busy | ms of CPU per request |\n| --- | ---: | ---: |\n"
                          "| decode + preprocess + model (the ceiling's cost) | | 0.25 |\n"
                          "| the rest of the workers (TorchServe's protocol, batching, answers) | | 0.0 |\n"
                          "| frontend | 0.5 | 0.125 |\n| worker | 1.0 | 0.25 |\n| load generator | 0.2 | 0.05 |\n")


def formats(**throughput_at_64):
    return [row(fmt, c, t * (0.5 if c == 16 else 1.0), format=fmt)
            for fmt, t in throughput_at_64.items() for c in (16, 64)]


def test_the_winner_is_the_fastest_format_at_the_top_concurrency():
    assert experiments.winner(formats(eager=3000, onnx=4000, torchscript=3500)) == "onnx"
    assert experiments.winner(formats(eager=5000, onnx=4000)) == "eager"


def test_a_win_within_five_percent_of_eager_goes_to_eager():
    assert experiments.winner(formats(eager=4000, onnx=4150)) == "eager"
    assert experiments.winner(formats(eager=4000, onnx=4250)) == "onnx"


def test_the_formats_table_says_how_each_server_started_when_the_run_measured_it():
    rows = [{**r, "version": "fashion-2.0"} for r in formats(eager=3000, compile=2500)]
    results = {"seconds": 5, "machine": MACHINE, "rows": rows, "winners": {"fashion-2.0": "eager"}}
    assert "READY s" not in tables.formats_markdown(results)  # a run from before the start figures
    starts = [{"version": "fashion-2.0", "format": f, "ready_s": s, "first_ms": 9.5, "next_median_ms": 2.1,
               "burst_first_ms": 20.0, "burst_later_ms": 8.0} for f, s in (("eager", 2.3), ("compile", 19.4))]
    table = tables.formats_markdown({**results, "starts": starts})
    assert table.endswith("| version | format | READY s | first | next (median) | first burst | later bursts |\n"
                          "| --- | --- | ---: | ---: | ---: | ---: | ---: |\n| fashion-2.0 | eager | 2.3 | 9.5 | 2.1 | 20.0 | 8.0 |\n"
                          "| fashion-2.0 | compile | 19.4 | 9.5 | 2.1 | 20.0 | 8.0 |\n")


def test_the_sweep_table_has_one_line_per_setting_with_every_concurrency():
    rows = []
    for workers, batch in ((2, 8), (1, 1)):
        for c in (1, 16, 64):
            rows.append(row("sweep", c, 100.0 * c * workers * batch, workers=workers, threads=2 // workers,
                            batch_size=batch, max_batch_delay_ms=5))
    table = tables.sweep_markdown({"model": "fashion-2.0", "seconds": 4, "machine": MACHINE, "rows": rows}).splitlines()
    assert len(table) == 2 + 2 + 2  # headline, blank, header, separator, a line per setting, in the order swept
    assert table[2].startswith("| workers | threads/worker | batch | delay ms | req/s @1 |")
    assert table[4].startswith("| 2 | 1 | 8 | 5 | 1600.0 | 5.0 | 10.0 | 25600.0 |")
    assert table[5].startswith("| 1 | 2 | 1 | 5 | 100.0 |")


def test_the_first_requests_table_has_every_point_and_each_settings_mean_ratios():
    def point(scenario, setting, round_, first, burst):
        return {"scenario": scenario, "version": "fashion-2.0", "warm_up": setting, "round": round_, "ready_s": 9.5,
                "first_ms": first, "next_median_ms": 2.0, "burst_first_ms": burst, "burst_later_ms": 10.0,
                "at_work_median_ms": 1.0}

    rows = [point("start", "off", 1, 20.0, 50.0), point("start", "on (shipped)", 1, 2.0, 10.0),
            point("start", "off", 2, 10.0, 30.0), point("rollout from 1.0", "on (shipped)", 1, 4.0, 20.0)]
    table = first.markdown({"model": "fashion-2.0", "machine": MACHINE, "rows": rows, "next": 30, "burst": 16,
                                   "bursts": 5, "serving": {"workers": 2, "batch_size": 16, "max_batch_delay_ms": 1},
                                   "serving_s": 8, "serving_clients": 4})
    lines = table.splitlines()
    assert lines[0].startswith("`bench --first`: fashion-2.0 (2 worker(s), batches of 16 within 1 ms)")
    assert "| start | off | 1 | 9.5 | 20.0 | 2.0 | 10.0x | 50.0 | 10.0 | 5.0x | 1.0 | 2.0x |" in lines
    assert "| start | off | 7.5x | 4.0x | 15.0x |" in lines  # the means of 10x and 5x, of 5x and 3x, of 20x and 10x
    assert "| start | on (shipped) | 1.0x | 1.0x | 2.0x |" in lines
    assert "| rollout from 1.0 | on (shipped) | 2.0x | 2.0x | 4.0x |" in lines


def test_a_lone_requests_time_is_split_by_the_frontends_counters():
    from marforge.errors import MeasurementFailed
    before = {lone.LATENCY: 1000.0, lone.QUEUED: 100.0, lone.REQUESTS: 10}
    after = {lone.LATENCY: 1000.0 + 400 * 1500.0, lone.QUEUED: 100.0 + 400 * 1100.0, lone.REQUESTS: 410}
    assert lone.parts(500.0, before, after) == {"served": 400, "mean_ms": 2.0, "outside_ms": 0.5, "queued_ms": 1.1,
                                                "worker_ms": 0.4}
    with pytest.raises(MeasurementFailed, match="counted no request"):
        lone.parts(500.0, before, before)


def test_the_lone_table_has_a_line_per_setting_and_flasks():
    def setting(name, batch, delay, rate):
        return {**row(name, 1, rate), "setting": name, "round": 1, "batch_size": batch, "max_batch_delay_ms": delay,
                "mean_ms": 1000 / rate, "outside_ms": 0.3, "queued_ms": 1.1, "worker_ms": 0.9}

    rows = [setting(lone.SHIPPED, 16, 1, 400.0), setting(lone.BATCH_OF_ONE, 1, 1, 500.0),
            {**row("(d) flask", 1, 800.0, server_cpu={"flask": 0.8}), "setting": "(d) flask", "round": 2, "mean_ms": 1.25}]
    table = lone.markdown({"model": "fashion-2.0", "format": "onnx", "images": "x", "seconds": 5, "machine": MACHINE,
                                  "rows": rows, "handler_ms": 0.5, "handler_threads": 1})
    assert f"| {lone.SHIPPED} | 1 | 16 | 1 | 400.0 | 5.0 | 2.5 | 0.3 | 1.1 | 0.9 | 1.25 | 2.5 |" in table.splitlines()
    assert "| (d) flask | 2 | | | 800.0 | 5.0 | 1.25 | | | | | 1.0 (flask) |" in table.splitlines()
    assert "with 1 thread(s)): 0.5 ms" in table
    assert f"| {lone.SHIPPED} | 400.0 | 0.50 | 2.500 | 0.300 | 1.100 | 0.900 |" in table.splitlines()
    assert "| (d) flask | 800.0 | 1.00 | 1.250 |  |  |  |" in table.splitlines()


def test_the_jvm_table_has_every_round_and_the_bounded_servers_ratio_to_the_defaults():
    from marforge.measure import tuning

    rows = [row(name, c, rate * c, p99=p99, round=r, frontend_rss_mb=rss)
            for r in (1, 2) for name, rate, p99, rss in ((tuning.JVM_BOUNDED, 100.0 + r, 10.0, 800.0),
                                                         (tuning.JVM_DEFAULTS, 100.0, 8.0, 400.0 + r))
            for c in (16, 64)]
    table = tables.jvm_markdown({"model": "fashion-2.0", "seconds": 8, "machine": MACHINE, "rows": rows,
                                 "vmargs": "-Xmx1m", "env": {"MALLOC_ARENA_MAX": "2"}}).splitlines()
    assert "bounded: `-Xmx1m` and {'MALLOC_ARENA_MAX': '2'}" in table[0]
    assert len([line for line in table if line.startswith("| bounded (shipped) | ")]) == 4 + 2  # 2 rounds x 2, 2 means
    assert f"| {tuning.JVM_BOUNDED} | 16 | 1624.0 | 10.00 | 10.0 | 800.0 |" in table
    assert f"| {tuning.JVM_DEFAULTS} | 64 | 6400.0 | 8.00 | 8.0 | 401.5 |" in table
    assert table[-3:] == ["| req/s | 1.01 | 1.01 |", "| p99 | 1.25 | 1.25 |", "| frontend RSS | 1.99 | 1.99 |"]


def test_the_protocols_table_has_every_round_and_grpcs_and_v2s_ratios_to_the_bytes():
    (c, _), (f, _), (g, _) = experiments.PROTOCOL_ROWS
    rows = [row(label, conc, rate * conc + r, p99=p99, round=r)
            for r in (1, 2, 3) for conc in (1, 16) for label, rate, p99 in ((c, 100.0, 10.0), (f, 80.0, 12.0), (g, 50.0, 5.0))]
    table = tables.protocols_markdown({"model": "fashion-2.0", "seconds": 6, "machine": MACHINE, "rows": rows}).splitlines()
    assert table[0].startswith("`bench --protocols`: fashion-2.0, 6 s per point. 2 CPUs")
    assert table[2] == "| setting | round | conc. | req/s | p50 ms | p99 ms | errors |"
    assert table[4] == f"| {c} | 1 | 1 | 101.0 | 5.0 | 10.0 | 0 |" and len(table[4:]) >= 18
    assert f"| {f} | 16 | 1282.0 | 12.00 | 12.0 |" in table  # the mean of rounds 1-3, the worst p99
    at = table.index("| (f) / (c) | at 1 | at 16 |")
    assert table[at + 2:at + 4] == ["| req/s | 0.80 | 0.80 |", "| p99 | 1.20 | 1.20 |"]
    at = table.index("| (g) / (c) | at 1 | at 16 |")
    assert table[at + 2:at + 4] == ["| req/s | 0.51 | 0.50 |", "| p99 | 0.50 | 0.50 |"]


def test_the_e_rows_are_the_benchmark_formats_but_the_versions_own(registry):
    mv = registry.get("fashion", "2.0")
    assert experiments.bench_formats(mv) == [f for f in ("eager", "torchscript", "onnx", "quantized", "compile")
                                             if f != mv.format]  # compile: the warm-up compiles before READY
    assert experiments.bench_formats(mv, ["torchscript"]) == ["torchscript"]
    assert experiments.bench_formats(mv, device="gpu") == [f for f in ("eager", "torchscript", "compile", "cudagraphs")
                                                           if f != mv.format]


def test_a_generated_block_is_replaced_and_the_prose_kept(tmp_path):
    doc = tmp_path / "performance.md"
    doc.write_text("# Performance\nprose before\n<!-- generated: bench -->\nold table\n<!-- end: bench -->\nprose after\n")
    report.update_block(doc, "bench", "| new | table |\n")
    assert doc.read_text() == ("# Performance\nprose before\n<!-- generated: bench -->\n| new | table |\n"
                               "<!-- end: bench -->\nprose after\n")
    with pytest.raises(DataError) as caught:
        report.update_block(doc, "sweep", "x\n")
    assert caught.value.message == (f"{doc}: no block <!-- generated: sweep --> ... <!-- end: sweep --> "
                                    "to write the sweep table into")


def test_the_docs_have_a_block_for_every_report(registry):
    docs = registry.path.parent / "docs"
    blocks = {kind: [kind] for kind in report.MARKDOWN} | {"bench": ["bench-fashion", "bench-chexnet"],
                                                           "first": ["first-fashion", "first-chexnet"],
                                                           "lone": ["lone-fashion", "lone-chexnet"],
                                                           "against": ["against-fashion", "against-chexnet"],
                                                           "soak": ["soak", "soak-nmt-default", "soak-nmt-bounded"],
                                                           "tune": [f"tune-{mv.key}" for mv in registry.all_versions()]}
    for kind, names in blocks.items():
        text = (docs / report.DOCS.get(kind, report.DOC)).read_text()
        for name in names:
            assert f"<!-- generated: {name} -->" in text and f"<!-- end: {name} -->" in text, name
    readme = (registry.path.parent / "README.md").read_text()
    for kind in report.README_SUMMARIES:
        assert f"<!-- generated: {kind} -->" in readme and f"<!-- end: {kind} -->" in readme, kind


def test_a_gpu_machine_is_held_to_issue_12s_targets():
    gpu_machine = {**MACHINE, "gpu": {"name": "H100", "count": 1, "cuda": "13.0", "memory_gib": 80, "driver": "x"}}
    assert targets.targets_for("fashion", MACHINE) == targets.CPU_TARGETS
    assert targets.targets_for("chexnet", MACHINE) == ()
    rows = [row("(b) torchserve stock", 64, 3000.0), row("(b') torchserve stock, eager archive", 64, 3900.0),
            row("(c) marforge", 64, 9410.0), row("(c) marforge", 16, 2760.0, p99=11.0),
            row("(b) torchserve stock", 16, 545.0), row("(b') torchserve stock, eager archive", 16, 3901.0)]
    checks = targets.check(rows, targets.targets_for("fashion", gpu_machine))
    assert checks["(c)/best of (b), (b') at 64 >= 3"] == {"value": 2.41, "target": 3.0, "met": False}
    assert checks["(c)/best of (b), (b') at 16 >= 1"] == {"value": 0.71, "target": 1.0, "met": False}
    assert checks["(c)/best of (b), (b') at 1 >= 1"]["met"] is False  # not measured: fails
    assert checks["(c) p99 at 16 <= 15 ms"] == {"value": 11.0, "target": 15.0, "met": True}
    assert set(targets.check([], targets.targets_for("chexnet", gpu_machine))) == {
        "(c)/(b') at 64", "(c)/(a) at 64", "(c) p99 at 64 <= 100 ms"}


def test_a_report_names_the_commit_and_says_when_the_code_measured_differs_from_it(tmp_path):
    from marforge.measure import machine

    def git(*argv):
        subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *argv], cwd=tmp_path, check=True,
                       capture_output=True)

    (tmp_path / "docs").mkdir()
    for name in ("README.md", "docs/performance.md", "run.py"):
        (tmp_path / name).write_text("x\n")
    git("init", "-q")
    git("add", ".")
    git("commit", "-q", "-m", "one")
    head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=tmp_path, capture_output=True, text=True).stdout.strip()
    (tmp_path / "README.md").write_text("a generated block\n")
    (tmp_path / "docs/performance.md").write_text("a generated block\n")
    (tmp_path / "notes.txt").write_text("untracked\n")
    assert machine._commit(tmp_path) == head
    (tmp_path / "run.py").write_text("y\n")
    assert machine._commit(tmp_path) == f"{head}+changes"
