"""The load generator's background runner (loadgen.Background), against small local HTTP servers
that answer as told: what it records, and that a timeout, a refused connection or a 200 that is not
JSON each count as a failure (the rollout and crash tests assert no failure under load)."""

import http.server
import json
import threading
import time

from marforge.measure.loadgen import Background
from marforge.serve.process import free_ports


class _Answering(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as TorchServe
    seen: list
    answer: bytes = b'{"version": "2.0"}'
    status: int = 200
    delay: float = 0.0

    def do_POST(self):
        self.rfile.read(int(self.headers["Content-Length"]))
        self.seen.append(self.headers.get("Authorization"))
        time.sleep(self.delay)
        try:
            self.send_response(self.status)
            self.send_header("Content-Length", str(len(self.answer)))
            self.end_headers()
            self.wfile.write(self.answer)
        except (BrokenPipeError, ConnectionResetError):  # the client gave up (its timeout)
            pass

    def log_message(self, *args):
        pass


def _server(**answers):
    handler = type("Answering", (_Answering,), {"seen": [], **answers})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, handler.seen


def test_every_answer_is_recorded_with_its_version_and_the_key_is_asked_per_request():
    server, seen = _server()
    keys = iter(f"k{i}" for i in range(10**6))
    try:
        with Background(f"http://127.0.0.1:{server.server_port}/predictions/m", b"img", lambda: next(keys),
                        clients=3) as load:
            load.wait_for(30, timeout=20)
    finally:
        server.shutdown()
    assert len(load.results) >= 30 and load.failures() == []
    assert {r.client for r in load.results} == {0, 1, 2}
    assert set(map(tuple, load.versions_by_client().values())) == {("2.0",)}
    assert all(r.finished >= r.started for r in load.results)
    assert len(set(seen)) == len(seen) >= 30 and seen[0].startswith("Bearer k")  # a fresh key each request


def test_a_timeout_is_a_failure_and_stop_waits_for_the_request_in_flight():
    server, _ = _server(delay=2.0)
    try:
        load = Background(f"http://127.0.0.1:{server.server_port}/", b"x", clients=1, timeout=0.5)
        with load:
            load.wait_for(1, timeout=10)
    finally:
        server.shutdown()
    [first, *_] = load.results
    assert first.status == 0 and first.error == "TimeoutError: no answer within 0.5 s"
    assert 0.4 < first.finished - first.started < 1.5 and load.failures() == load.results


def test_a_refused_connection_an_error_status_and_a_200_that_is_not_json_are_failures():
    [closed] = free_ports(1)
    with Background(f"http://127.0.0.1:{closed}/", b"x", clients=2, timeout=2) as refused:
        refused.wait_for(4, timeout=10)
    assert refused.results and all(r.status == 0 and r.error.startswith("ConnectionRefusedError") for r in refused.results)
    for answers, status, error in (({"status": 503, "answer": b'{"code": 503}'}, 503, '{"code": 503}'),
                                   ({"answer": b"<html>"}, 0, "JSONDecodeError: a 200 that is not JSON: b'<html>'")):
        server, _ = _server(**answers)
        try:
            with Background(f"http://127.0.0.1:{server.server_port}/", b"x", clients=1) as load:
                load.wait_for(2, timeout=10)
        finally:
            server.shutdown()
        assert {(r.status, r.version, r.error) for r in load.results} == {(status, None, error)}


def test_the_load_ends_by_itself_after_max_seconds():
    server, _ = _server(answer=json.dumps({"version": "1.0"}).encode())
    try:
        load = Background(f"http://127.0.0.1:{server.server_port}/", b"x", clients=2, max_seconds=1.0)
        load.start()
        time.sleep(2.0)
        count = len(load.results)
        time.sleep(0.5)
        assert len(load.results) == count > 0
        load.stop()
    finally:
        server.shutdown()
