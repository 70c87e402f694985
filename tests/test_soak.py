"""`make soak` against the session's real server, for seconds instead of minutes."""

import pytest

from marforge.measure import soak

pytestmark = pytest.mark.integration


def test_a_short_soak_measures_every_window_and_every_server_process(live_server, registry, samples):
    images = [path for path, _ in samples["digits"]]
    report = soak.soak(live_server.client, live_server.run_dir, "digits", images, minutes=4 / 60, window_s=2.0,
                       warmup_s=1.0, log=lambda line: None)
    assert len(report.windows) == 2
    assert all(w["errors"] == 0 and w["requests"] > 0 for w in report.windows)
    workers = {f"worker {w['pid']}" for m in registry.models for d in live_server.client.describe(m)
               for w in d["workers"]}
    assert set(report.rss_start_mb) == {f"frontend {live_server.pid}"} | workers == set(report.rss_end_mb)
    assert not any("requests failed" in p or "is gone" in p for p in report.problems)
