"""The TorchServe client's tokens and error handling, with an injected HTTP session (no server)."""

import json

import pytest
import requests

from marforge.errors import ApiError, ServerError
from marforge.serve.client import Client, Endpoints, prometheus_total, version_ready

ENDPOINTS = Endpoints("http://127.0.0.1:1", "http://127.0.0.1:2", "http://127.0.0.1:3")


class FakeSession:
    """Records requests and answers them from a list of (status, body) or exceptions."""

    def __init__(self, *answers):
        self.answers = list(answers)
        self.sent = []

    def request(self, method, url, headers=None, timeout=None, **kwargs):
        self.sent.append({"method": method, "url": url, "headers": dict(headers or {}), **kwargs})
        answer = self.answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        response = requests.Response()
        response.status_code, response._content = answer[0], json.dumps(answer[1]).encode()
        response.url = url
        return response


@pytest.fixture
def key_file(tmp_path):
    path = tmp_path / "key_file.json"
    path.write_text(json.dumps({"management": {"key": "MGMT", "expiration time": "x"},
                                "inference": {"key": "INFER", "expiration time": "x"}, "API": {"key": "API"}}))
    return path


def test_each_api_gets_its_own_key(key_file):
    session = FakeSession((200, {"model": "m"}), (200, [{"modelVersion": "1.0"}]), (200, {}))
    client = Client(ENDPOINTS, key_file=key_file, session=session)
    client.predict("m", b"img", version="1.0")
    client.describe("m")
    client.metrics()
    assert [s["headers"].get("Authorization") for s in session.sent] == ["Bearer INFER", "Bearer MGMT", None]
    assert session.sent[0]["url"] == "http://127.0.0.1:1/predictions/m/1.0"
    assert session.sent[1]["url"] == "http://127.0.0.1:2/models/m/all"


def test_error_statuses_become_api_errors_with_status_url_and_body(key_file):
    body = {"code": 404, "type": "ModelNotFoundException", "message": "Model not found: nope"}
    client = Client(ENDPOINTS, key_file=key_file, session=FakeSession((404, body)))
    with pytest.raises(ApiError) as caught:
        client.describe("nope")
    error = caught.value
    assert error.status == 404 and error.url == "http://127.0.0.1:2/models/nope/all"
    assert json.loads(error.body) == body
    assert str(error) == f"HTTP 404 from http://127.0.0.1:2/models/nope/all: {json.dumps(body)}"
    assert "MGMT" not in str(error) and error.exit_code == 2


def test_connection_failures_are_server_errors_that_say_what_to_run(key_file):
    session = FakeSession(requests.ConnectionError("refused"))
    with pytest.raises(ServerError) as caught:
        Client(ENDPOINTS, key_file=key_file, session=session).ping()
    assert "refused" in caught.value.message and caught.value.hint == "make serve"
    assert caught.value.exit_code == 2


def test_no_key_file_means_no_authorization_header(tmp_path):
    session = FakeSession((200, {"status": "Healthy"}))
    Client(ENDPOINTS, key_file=tmp_path / "absent.json", session=session).ping()
    assert "Authorization" not in session.sent[0]["headers"]


def test_prometheus_totals_sum_every_label_set_of_one_metric():
    text = ("# HELP Requests5XX ...\n# TYPE Requests5XX counter\n"
            'Requests5XX{Level="Host",Hostname="h"} 3.0\nRequests5XX{Level="Model",Hostname="h"} 2.0\n'
            'Requests5XXTotal{Level="Host"} 99.0\nRequests4XX{Level="Host"} 7.0\n')
    assert prometheus_total(text, "Requests5XX") == 5.0
    assert prometheus_total(text, "Requests2XX") == 0.0


def test_list_models_follows_pages(key_file):
    session = FakeSession((200, {"models": [{"modelName": "a"}], "nextPageToken": "1"}),
                          (200, {"models": [{"modelName": "b"}]}))
    assert [m["modelName"] for m in Client(ENDPOINTS, key_file=key_file, session=session).list_models()] == ["a", "b"]


def test_wait_ready_needs_every_worker_ready(key_file):
    starting = [{"workers": [{"status": "READY"}, {"status": "UNLOADING"}]}]
    ready = [{"workers": [{"status": "READY"}, {"status": "READY"}]}]
    session = FakeSession((200, starting), (500, {"message": "busy"}), (200, ready))
    Client(ENDPOINTS, key_file=key_file, session=session).wait_ready([("m", "1.0")], timeout=10, poll=0.01)
    assert len(session.sent) == 3
    assert not version_ready([{"workers": []}])


def test_wait_ready_times_out_naming_the_version(key_file):
    session = FakeSession(*[(200, [{"workers": []}])] * 200)
    with pytest.raises(ServerError, match="not ready after 0s: m 1.0"):
        Client(ENDPOINTS, key_file=key_file, session=session).wait_ready([("m", "1.0")], timeout=0.05, poll=0.01)


def test_wait_ready_stops_at_once_when_the_server_died(key_file):
    with pytest.raises(ServerError, match="exited"):
        Client(ENDPOINTS, key_file=key_file, session=FakeSession()).wait_ready([("m", "1.0")], alive=lambda: False)


def test_an_expired_key_is_refreshed_once_with_the_api_key(key_file):
    expired = {"code": 400, "type": "InvalidKeyException", "message": "Token Authorization failed"}

    class RefreshingSession(FakeSession):
        def request(self, method, url, headers=None, timeout=None, **kwargs):
            if url.endswith("/token"):  # TorchServe writes the new key to key_file.json
                key_file.write_text(json.dumps({"management": {"key": "MGMT"}, "inference": {"key": "NEW"},
                                                "API": {"key": "API"}}))
            return super().request(method, url, headers, timeout, **kwargs)

    session = RefreshingSession((400, expired), (200, {}), (200, {"model": "m"}))
    answer = Client(ENDPOINTS, key_file=key_file, session=session).predict("m", b"img")
    assert answer == {"model": "m"}
    assert [(s["url"], s["headers"]["Authorization"]) for s in session.sent] == [
        ("http://127.0.0.1:1/predictions/m", "Bearer INFER"),
        ("http://127.0.0.1:2/token", "Bearer API"),
        ("http://127.0.0.1:1/predictions/m", "Bearer NEW")]
    assert session.sent[1]["params"] == {"type": "inference"}


def test_a_key_that_stays_invalid_is_reported_not_retried_forever(key_file):
    expired = {"code": 400, "type": "InvalidKeyException", "message": "Token Authorization failed"}
    session = FakeSession((400, expired), (200, {}), (400, expired))
    with pytest.raises(ApiError, match="InvalidKeyException"):
        Client(ENDPOINTS, key_file=key_file, session=session).describe("m")
    assert len(session.sent) == 3


def test_both_clients_read_the_key_file_one_way_and_name_a_broken_one(tmp_path):
    from marforge.serve.client import read_key
    from marforge.serve.grpc_client import GrpcClient

    broken = tmp_path / "key_file.json"
    broken.write_text('{"inference": {}}')
    grpc_client = GrpcClient.__new__(GrpcClient)  # no channel needed to read a key
    grpc_client.key_file = broken
    for read in (lambda: read_key(broken, "inference"), lambda: grpc_client.key("inference"),
                 lambda: Client(ENDPOINTS, key_file=broken).key("inference")):
        with pytest.raises(ServerError) as caught:
            read()
        assert caught.value.message.startswith(f"{broken}: unreadable TorchServe key file")
        assert caught.value.hint == "make stop && make serve"
    assert read_key(tmp_path / "absent.json", "inference") is None and read_key(None, "API") is None


def test_stock_serving_settings_are_the_clients_register_defaults():
    import inspect

    from marforge.measure import fixtures
    from marforge.serve import client

    defaults = inspect.signature(client.Client.register).parameters
    assert fixtures.STOCK_SERVING is client.STOCK_SERVING
    assert {k: defaults[k].default for k in client.STOCK_SERVING} == client.STOCK_SERVING
