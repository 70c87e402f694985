"""Against one real TorchServe (Java frontend + Python workers) on free ports, as `make serve` runs it."""

import base64
import json
import socket
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests
from conftest import classifiers

from marforge.errors import ApiError

pytestmark = pytest.mark.integration


def test_the_server_listens_on_its_own_five_ports(live_server, ports):
    for name, port in ports.items():
        with socket.socket() as s:
            assert s.connect_ex(("127.0.0.1", port)) == 0, f"{name} port {port} is not listening"
    assert live_server.run_dir.torchserve_pid_file.read_text().strip() == str(live_server.pid)
    assert live_server.run_dir.pid() == live_server.pid
    assert live_server.run_dir.log("ts").exists()


def test_every_version_has_ready_workers(live_server, registry):
    for mv in registry.all_versions():
        [description] = live_server.client.describe(mv.name, mv.version)
        assert description["workers"] and {w["status"] for w in description["workers"]} == {"READY"}
        assert description["batchSize"] == mv.serving["batch_size"]
        assert description["minWorkers"] == mv.serving["workers"]


def test_every_version_answers_the_samples_as_its_source_model_does(live_server, registry, samples):
    """Every sample's answer over HTTP agrees with the source model run directly (the task's own
    comparison, marforge/tasks/: probabilities and decisions, boxes, masks); a labelled classifier's
    sample gets its true label."""
    from marforge import shipped, tasks
    from marforge.archiving import expected
    from marforge.archiving.archive import handler_section
    from marforge.archiving.weights import read_metadata

    for mv in registry.all_versions():
        if mv.own_handler:  # its answers over HTTP are the expected answers recorded for its samples
            paths = [path for path, _ in samples[mv.name]]
            got = {p.name: live_server.client.predict(mv.name, p.read_bytes(), version=mv.version) for p in paths}
            expected.check(expected.read(mv.samples, mv.version, list(got)), got, expected.comparison_of(mv))
            continue
        config = shipped.contract().HandlerConfig.from_dict(handler_section(mv, read_metadata(mv)))
        task, paths = tasks.of(config.task), [path for path, _ in samples[mv.name]]
        answers = [live_server.client.predict(mv.name, path.read_bytes(), version=mv.version) for path in paths]
        assert {(a["model"], a["version"]) for a in answers} == {(mv.name, mv.version)}
        agreement, _ = task.compare(mv.key, mv.format, config, paths, answers, task.reference(mv, config, paths))
        assert agreement == 1.0, mv.key
        if config.task == "multiclass":
            for (path, label), answer in zip(samples[mv.name], answers):
                assert label is None or answer["predictions"][0]["label"] == label, f"{mv.key} on {path.name}"


def test_the_unversioned_url_reaches_the_configured_default(live_server, registry, samples):
    from marforge.archiving import expected

    for model in registry.models.values():
        path, _ = samples[model.name][0]
        answer = live_server.client.predict(model.name, path.read_bytes())
        mv = model.versions[model.default_version]
        if mv.own_handler:  # its answer names no version: the default's expected answer
            expected.check(expected.read(mv.samples, mv.version, [path.name]), {path.name: answer}, expected.comparison_of(mv))
        else:
            assert answer["version"] == model.default_version
        assert live_server.client.default_version(model.name) == model.default_version


def test_json_and_multipart_requests_work(live_server, samples):
    path, label = samples["fashion"][0]
    url = f"{live_server.client.endpoints.inference}/predictions/fashion/2.0"
    auth = {"Authorization": f"Bearer {live_server.client.key('inference')}"}
    as_json = requests.post(url, json={"data": base64.b64encode(path.read_bytes()).decode()}, headers=auth, timeout=30)
    as_form = requests.post(url, files={"data": path.read_bytes()}, headers=auth, timeout=30)
    for response in (as_json, as_form):
        assert response.status_code == 200, response.text
        assert response.json()["predictions"][0]["label"] == label


def test_bad_input_gets_a_4xx_and_the_next_request_succeeds(live_server, samples):
    path, label = samples["fashion"][0]
    for bad in (b"", b"definitely not an image", path.read_bytes()[:100]):
        with pytest.raises(ApiError) as caught:
            live_server.client.predict("fashion", bad, version="1.0")
        assert 400 <= caught.value.status < 500
        assert json.loads(caught.value.body)["type"] in {"EmptyInput", "InvalidImage"}
        assert live_server.client.predict("fashion", path.read_bytes(), version="1.0")["predictions"][0]["label"] == label


def test_concurrent_good_and_bad_requests_are_answered_each_on_its_own(live_server, samples):
    path, label = samples["fashion"][0]
    good = path.read_bytes()

    def send(i):
        try:
            return live_server.client.predict("fashion", good if i % 3 else b"junk", version="2.0")["predictions"][0]["label"]
        except ApiError as exc:
            return exc.status

    with ThreadPoolExecutor(12) as pool:
        results = list(pool.map(send, range(48)))
    assert results == [label if i % 3 else 400 for i in range(48)]


def test_metrics_count_requests_for_every_model(live_server, registry, samples):
    for name in registry.models:
        live_server.client.predict(name, samples[name][0][0].read_bytes())
    text = live_server.client.metrics()
    for name in registry.models:
        assert any(line.startswith("ts_inference_requests_total{") and f'model_name="{name}"' in line
                   for line in text.splitlines()), f"no ts_inference_requests_total for {name}"


def test_the_warm_up_after_ready_sends_every_version_its_samples_and_the_frontend_counts_them(live_server, registry):
    import time

    from marforge.serve import launch

    before = live_server.client.metric_total("ts_inference_requests_total")
    counts = launch.warm(live_server, registry.all_versions(), seconds=0.1)  # MIN_WARM_S each
    assert set(counts) == {mv.key for mv in registry.all_versions()}
    assert all(sent > 0 and failed == 0 for sent, failed in counts.values()), counts
    time.sleep(1)  # the frontend counts a request after its answer is written
    assert live_server.client.metric_total("ts_inference_requests_total") - before == sum(s for s, _ in counts.values())


def test_requests_without_the_right_token_are_refused(live_server, samples):
    body = samples["fashion"][0][0].read_bytes()
    url = f"{live_server.client.endpoints.inference}/predictions/fashion"
    assert requests.post(url, data=body, timeout=30).status_code == 400
    wrong = {"Authorization": "Bearer not-the-key"}
    response = requests.post(url, data=body, headers=wrong, timeout=30)
    assert response.status_code == 400 and "InvalidKeyException" in response.text
    management = {"Authorization": f"Bearer {live_server.client.key('inference')}"}
    assert requests.get(f"{live_server.client.endpoints.management}/models", headers=management, timeout=30).status_code == 400
    # the Open Inference Protocol's HTTP routes (config.properties turns them on) are behind the token too
    ready = f"{live_server.client.endpoints.inference}/v2/health/ready"
    assert requests.get(ready, timeout=30).status_code == 400
    assert requests.get(ready, headers=management, timeout=30).status_code == 200


def test_status_reports_ready_versions_and_defaults(live_server, registry):
    from marforge.serve import status

    rows = status.collect(live_server.client)
    assert {(r["model"], r["version"]) for r in rows} == {(mv.name, mv.version) for mv in registry.all_versions()}
    assert all(r["ready"] for r in rows)
    assert {r["model"]: r["version"] for r in rows if r["default"]} == {
        m.name: m.default_version for m in registry.models.values()}


@pytest.mark.parametrize("url, message", [
    ("http://127.0.0.1:9/fashion-2.0.mar", "does not match any allowed URL"),
    ("file:///etc/passwd", "does not match any allowed URL"),
    ("../model_store/fashion-2.0.mar", "Relative path is not allowed"),
])
def test_registration_only_from_the_model_store(live_server, url, message):
    with pytest.raises(ApiError) as caught:
        live_server.client.register(url, workers=0)
    assert caught.value.status == 404 and message in caught.value.body


def test_the_key_file_is_private(live_server):
    assert live_server.run_dir.key_file.stat().st_mode & 0o077 == 0


def test_workers_get_a_share_of_the_cores_not_all_of_them(live_server, registry):
    from marforge.serve.launch import threads_per_worker

    expected = threads_per_worker(sum(mv.serving["workers"] for mv in registry.all_versions()))
    for mv in registry.all_versions():
        [description] = live_server.client.describe(mv.name, mv.version)
        for worker in description["workers"]:
            environ = open(f"/proc/{worker['pid']}/environ", "rb").read().split(b"\0")
            assert f"OMP_NUM_THREADS={expected}".encode() in environ
    assert threads_per_worker(3, cpus=2) == 1 and threads_per_worker(2, cpus=8) == 4


def test_a_burst_of_256_clients_is_queued_not_refused(live_server, samples):
    """TorchServe's default job_queue_size (100) answered 503 to ~40% of the requests of 256
    clients (and some at 128) on this 2-core machine, which serves them all within ~70 ms."""
    import asyncio

    from marforge.measure.loadgen import run_load

    client = live_server.client
    path, _ = samples["fashion"][0]
    url = f"{client.endpoints.inference}/predictions/fashion/2.0"
    result = asyncio.run(run_load(url, [path.read_bytes()], 256, 3.0,
                                  headers={"Authorization": f"Bearer {client.key('inference')}"}))
    statuses = sorted({s.status for s in result.samples})
    assert len(result.samples) > 256 and result.errors == 0, f"{result.errors} failed, statuses {statuses}"


def test_explanations_over_http_for_every_classifier_and_a_4xx_for_bad_input(live_server, registry, samples):
    for name in {mv.name for mv in classifiers(registry)}:
        path, _ = samples[name][0]
        answer = live_server.client.explain(name, path.read_bytes())
        top = max(answer["predictions"], key=lambda p: p["probability"])
        assert answer["explanation"]["method"] in {"grad-cam", "saliency"}
        assert answer["explanation"]["maps"][0]["label"] in {top["label"], *(p["label"] for p in answer.get("positive", []))}
    with pytest.raises(ApiError) as caught:
        live_server.client.explain("fashion", b"not an image")
    assert caught.value.status == 400 and json.loads(caught.value.body)["type"] == "InvalidImage"


def test_make_explain_writes_the_heatmaps_over_the_image(live_server, samples, tmp_path, capsys):
    from PIL import Image

    from marforge.cli import main

    path, label = samples["fashion"][0]
    out = tmp_path / "boot.png"
    code = main(["explain", "fashion", str(path), "--version", "2.0", "--out", str(out),
                 "--run-dir", str(live_server.run_dir.path)])
    assert code == 0
    line = capsys.readouterr().out
    assert line.startswith(f"fashion 2.0: grad-cam on dropout1 for {label} (") and line.endswith(f" -> {out}\n")
    with Image.open(out) as picture:
        assert picture.format == "PNG" and picture.size == (28, 28 + 18)  # one panel: the image and its caption
