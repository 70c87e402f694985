"""The benchmark's arithmetic: ratios against the issue's targets, the format winner, the sweep table.
(The benchmark itself is `make bench`, not part of `make test`.)"""

from marforge import bench


def row(label, concurrency, throughput, p99=10.0, **extra):
    return {"row": label, "concurrency": concurrency, "throughput": throughput, "p50_ms": p99 / 2,
            "p90_ms": p99 * 0.8, "p99_ms": p99, "errors": 0, "loadgen_cpu": 0.2,
            "server_cpu": {"frontend": 0.5, "worker": 1.0}, "peak_rss_mb": 1400.0, **extra}


def test_ratios_compare_marforge_with_each_row_and_check_the_targets():
    rows = [{"row": "(a) ceiling", "concurrency": None, "throughput": 8000.0, "processes": 2},
            row("(b) torchserve stock", 16, 100.0), row("(b) torchserve stock", 64, 110.0),
            row("(b') torchserve stock, eager archive", 16, 50.0),
            row("(c) marforge", 16, 2000.0, p99=60.0), row("(c) marforge", 64, 4000.0),
            row("(d) flask", 16, 400.0), row("(d) flask", 64, 420.0),
            row("(e) marforge onnx", 16, 9999.0)]  # (e) rows are never taken for (c)
    result = bench.ratios(rows, [16, 64])
    assert result["ratios"]["(c)/(b) at 16"] == 20.0
    assert result["ratios"]["(c)/(d) at 16"] == 5.0
    assert result["ratios"]["(c)/(a) at 64"] == 0.5  # the ceiling has no concurrency: it counts at each
    assert result["ratios"]["(c)/(b') at 16"] == 40.0  # reported, but the target is on (b), the same archive
    targets = result["targets"]
    assert targets["(c)/(b) at 16"]["met"] and targets["(c)/(d) at 16"]["met"]
    assert not targets["(c)/(a) at 64"]["met"]
    assert targets["(c) p99 at 16 <= 50 ms"] == {"value": 60.0, "met": False}
    table = bench.markdown({"model": "fashion-2.0", "cpus": 2, "seconds": 6, "rows": rows, "ratios": result})
    assert "| (c)/(a) at 64 | 0.5 | 0.6 | NO |" in table
    assert "| (c)/(b) | 20.0 | 36.36 |" in table and "| (c)/(b') | 40.0 | - |" in table


def test_a_missing_row_fails_its_target_instead_of_passing():
    result = bench.ratios([row("(c) marforge", 16, 2000.0)], [16])
    assert not any(check["met"] for name, check in result["targets"].items() if name != "(c) p99 at 16 <= 50 ms")


def formats(**throughput_at_64):
    return [row(fmt, c, t * (0.5 if c == 16 else 1.0), format=fmt)
            for fmt, t in throughput_at_64.items() for c in (16, 64)]


def test_the_winner_is_the_fastest_format_at_the_top_concurrency():
    assert bench.winner(formats(eager=3000, onnx=4000, torchscript=3500)) == "onnx"
    assert bench.winner(formats(eager=5000, onnx=4000)) == "eager"


def test_a_win_within_five_percent_of_eager_goes_to_eager():
    assert bench.winner(formats(eager=4000, onnx=4150)) == "eager"
    assert bench.winner(formats(eager=4000, onnx=4250)) == "onnx"


def test_the_sweep_table_has_one_line_per_setting_with_every_concurrency():
    rows = []
    for workers, batch in ((2, 8), (1, 1)):
        for c in (1, 16, 64):
            rows.append(row("sweep", c, 100.0 * c * workers * batch, workers=workers, threads=2 // workers,
                            batch_size=batch, max_batch_delay_ms=5))
    table = bench.sweep_markdown(rows).splitlines()
    assert len(table) == 2 + 2  # header, separator, a line per setting, in the order swept
    assert table[0].startswith("| workers | threads/worker | batch | delay ms | req/s @1 |")
    assert table[2].startswith("| 2 | 1 | 8 | 5 | 1600.0 | 5.0 | 10.0 | 25600.0 |")
    assert table[3].startswith("| 1 | 2 | 1 | 5 | 100.0 |")
