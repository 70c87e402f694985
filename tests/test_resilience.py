"""Crashes on the shared real TorchServe: a worker killed under load."""

import os
import signal
import time

import pytest

from marforge.measure.loadgen import Background

pytestmark = pytest.mark.integration


def worker_pids(client, name, version):
    [description] = client.describe(name, version)
    return {w["pid"] for w in description["workers"] if w.get("status") == "READY"}


def recovered(client, old_pid, count):
    """The killed worker is gone and a full set of READY workers serves again."""
    now = worker_pids(client, "fashion", "2.0")
    return old_pid not in now and len(now) == count


def test_a_killed_worker_is_restarted_and_no_request_hangs(live_server, samples, measurements):
    client = live_server.client
    before = worker_pids(client, "fashion", "2.0")
    old_pid = min(before)
    path, label = samples["fashion"][0]
    url = f"{client.endpoints.inference}/predictions/fashion/2.0"
    with Background(url, path.read_bytes(), lambda: client.key("inference"), clients=4, timeout=30) as load:
        load.wait_for(40)
        killed_at = time.monotonic()
        os.kill(old_pid, signal.SIGKILL)
        deadline = killed_at + 120
        while not recovered(client, old_pid, len(before)):
            assert time.monotonic() < deadline, "no new READY worker within 120 s"
            time.sleep(0.05)
        recovery = time.monotonic() - killed_at
        load.wait_for(40)
    failures = load.failures()
    assert [f for f in failures if f.status == 0] == [], "a request timed out or lost its connection"
    assert all(500 <= f.status < 600 for f in failures), failures
    slowest = max((f.finished - f.started for f in failures), default=0.0)
    assert slowest < 10, f"a failed request took {slowest:.1f} s to fail"
    after = [r for r in load.results if r.started > killed_at + recovery]
    assert after and all(r.status == 200 and r.version == "2.0" for r in after)
    measurements["worker killed under load: recovery (kill -> new READY worker)"] = f"{recovery:.2f} s"
    measurements["worker killed under load: failed requests"] = (
        f"{len(failures)} of {len(load.results)}, slowest failure {slowest:.2f} s, statuses {sorted({f.status for f in failures})}")
