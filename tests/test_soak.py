"""`make soak`: its verdict on windows of known shape, and a short soak against the session's real server."""

import pytest

from marforge.measure import soak, tables


def window(minute, frontend, heap=100.0, p99=5.0, errors=0):
    return {"minute": minute, "requests": 1000, "errors": errors, "throughput": 100.0, "p50_ms": 2.0, "p99_ms": p99,
            "rss_mb": {"frontend 1": frontend, "worker 2": 500.0},
            "jvm": {"heap_used_mb": heap, "heap_committed_mb": 188.0, "nmt_mb": {"Java Heap": 188.0, "Other": 20.0}}}


def judged(windows, warm_errors=0):
    result = soak.SoakReport("fashion", len(windows) / 2, 4, 30.0, windows)
    soak.judge(result, {"errors": warm_errors}, max_rise_mb=8.0, max_heap_rise_mb=16.0, p99_margin=0.5)
    return result


def test_growth_while_settling_passes_and_growth_that_goes_on_fails():
    settling = [window(m, 250 + 40 * min(m, 3)) for m in range(1, 10)]  # +120 MB, all in the first minutes
    result = judged(settling)
    assert result.problems == []
    assert result.trends["frontend 1"] == {"first_mb": 290, "settled_mb": 370, "last_third_start_mb": 370,
                                           "end_mb": 370, "last_third_rise_mb": 0, "settled_slope_mb_per_hour": 0.0}
    creeping = [window(m, 300 + 3 * m) for m in range(1, 10)]  # 6 MB over the last third: within the limit
    assert judged(creeping).problems == [] and judged(creeping).trends["frontend 1"]["last_third_rise_mb"] == 6
    leaking = [window(m, 300 + 5 * m) for m in range(1, 10)]
    assert judged(leaking).problems == ["frontend 1 RSS rose 10 MB over the last third of the soak (from 335 to 345 MB; "
                                        "limit 8.0 MB)"]
    assert judged(leaking).trends["frontend 1"]["settled_slope_mb_per_hour"] == 300.0


def test_a_heap_leak_errors_and_p99_drift_are_each_named():
    result = judged([window(m, 300, heap=100 + 10 * m, p99=5.0 if m < 7 else 9.0, errors=int(m == 2))
                     for m in range(1, 10)])
    assert result.problems == ["1 requests failed",
                               "the frontend's post-GC heap rose 20 MB over the last third (limit 16.0 MB): a leak "
                               "on the Java heap",
                               "p99 drifted from a median of 5.0 ms in the middle third to 9.0 ms in the last (more "
                               "than 50%)"]


def test_a_process_that_went_away_and_too_few_windows_are_reported():
    windows = [window(m, 300) for m in range(1, 5)]
    del windows[-1]["rss_mb"]["worker 2"]
    assert judged(windows).problems == ["worker 2 is gone (it crashed or was restarted)"]
    assert judged(windows[:2]).notes == ["2 window(s): too few to judge memory trends or p99 drift"]


def test_the_report_table_spreads_its_rows_and_states_the_verdict():
    windows = [window(m / 2, 300) for m in range(1, 61)]
    result = judged(windows)
    machine = {"cpus": 2, "cpu_model": "Test CPU", "gpu": None, "torch": "2.x", "commit": "abc", "date": "today"}
    table = tables.soak_markdown({**result.to_dict(), "machine": machine})
    rows = [line for line in table.splitlines() if line.startswith("| ") and line[2:3].isdigit()]
    assert len(rows) in (13, 14) and rows[-1].startswith("| 30.0 |")
    assert table.rstrip().endswith("soak passed: no errors, memory on a plateau once settled, no p99 drift")
    assert "| frontend 1 | 300 | 300 | 300 | 300 | 0 | 0.0 |" in table


def test_the_readme_summary_names_the_frontend_the_worker_that_rose_most_and_the_verdict():
    windows = [window(m / 2, 300 + m * 0.1) for m in range(1, 61)]
    for i, w in enumerate(windows):
        w["rss_mb"]["worker 3"] = 600.0 + (i >= 45) * 2.0
    result = judged(windows)
    machine = {"cpus": 2, "cpu_model": "Test CPU", "gpu": None, "torch": "2.x", "commit": "abc", "date": "today"}
    lines = tables.soak_summary_markdown({**result.to_dict(), "machine": machine}).splitlines()
    assert lines[0].startswith("`make soak`: fashion, 30 minutes, 60000 requests, 0 failed. 2 CPUs")
    assert lines[4] == "| frontend RSS | 302.1 | 306.0 | 1.9 | 12.0 |"
    assert lines[6].startswith("| the worker that rose most (of 2) | 600.0 | 602.0 | 2.0 |")
    assert lines[-1] == "soak passed: no errors, memory on a plateau once settled, no p99 drift"


@pytest.mark.integration
def test_a_short_soak_measures_every_window_and_every_server_process(live_server, registry, samples):
    images = [path for path, _ in samples["digits"]]
    result = soak.soak(live_server.client, live_server.run_dir, "digits", images, minutes=6 / 60, window_s=2.0,
                       warmup_s=1.0, log=lambda line: None)
    assert len(result.windows) == 3
    assert all(w["errors"] == 0 and w["requests"] > 0 for w in result.windows)
    workers = {f"worker {w['pid']}" for m in registry.models for d in live_server.client.describe(m)
               for w in d["workers"]}
    assert all(set(w["rss_mb"]) == {f"frontend {live_server.pid}"} | workers for w in result.windows)
    assert all(w["jvm"]["heap_used_mb"] > 0 for w in result.windows)  # jcmd reached the frontend's JVM
    assert not any("requests failed" in p or "is gone" in p for p in result.problems)
