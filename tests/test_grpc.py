"""gRPC against the session's real TorchServe, on the gRPC inference port: its inference.proto and
the Open Inference Protocol's service beside it. The same answers as over HTTP (plain and v2 JSON),
the same 4xx meaning for bad input, and the token in the metadata."""

import base64
import json

import pytest
from conftest import task_of

from marforge.cli import main
from marforge.errors import ApiError
from marforge.serve.grpc_client import GrpcClient

pytestmark = pytest.mark.integration
pytest.importorskip("grpc", reason="grpcio is not installed here (make setup installs it from requirements.txt)")


@pytest.fixture(scope="module")
def grpc(live_server):
    client = GrpcClient(live_server.client.endpoints.grpc, key_file=live_server.run_dir.key_file)
    yield client
    client.close()


def test_grpc_and_http_answer_alike(live_server, grpc, registry, samples):
    for mv in registry.all_versions():
        for path, _ in samples[mv.name]:
            over_grpc = grpc.predict(mv.name, path.read_bytes(), version=mv.version)
            over_http = live_server.client.predict(mv.name, path.read_bytes(), version=mv.version)
            assert over_grpc == over_http, f"{mv.key} {path.name}"


def test_a_bad_image_over_grpc_is_the_same_4xx_as_over_http(live_server, grpc):
    with pytest.raises(ApiError) as over_grpc:
        grpc.predict("fashion", b"definitely not an image", version="2.0")
    with pytest.raises(ApiError) as over_http:
        live_server.client.predict("fashion", b"definitely not an image", version="2.0")
    assert over_grpc.value.status == over_http.value.status == 400
    assert json.loads(over_grpc.value.body) == json.loads(over_http.value.body)
    assert over_grpc.value.url == f"grpc://{live_server.client.endpoints.grpc}/fashion/2.0"


def test_a_wrong_token_is_refused_and_a_missing_model_named(live_server, grpc, tmp_path):
    wrong = tmp_path / "key_file.json"
    wrong.write_text(json.dumps({"inference": {"key": "not-the-key"}}))
    stranger = GrpcClient(live_server.client.endpoints.grpc, key_file=wrong)
    try:
        with pytest.raises(ApiError) as caught:
            stranger.predict("fashion", b"x")
        assert caught.value.status == 403 and caught.value.body.startswith("PERMISSION_DENIED: ")
        with pytest.raises(ApiError) as caught:
            stranger.infer("fashion", [b"x"])
        assert caught.value.status == 403 and caught.value.body.startswith("PERMISSION_DENIED: ")
    finally:
        stranger.close()
    with pytest.raises(ApiError) as missing:
        grpc.predict("shoes", b"x")
    assert missing.value.status == 500 and "shoes" in missing.value.body
    with pytest.raises(ApiError) as missing:
        grpc.infer("shoes", [b"x"])
    assert missing.value.status == 500 and "shoes" in missing.value.body


def test_make_predict_with_protocol_grpc(live_server, samples, capsys):
    path, label = samples["digits"][0]
    assert main(["predict", "digits", str(path), "--protocol", "grpc", "--run-dir", str(live_server.run_dir.path)]) == 0
    assert json.loads(capsys.readouterr().out)["predictions"][0]["label"] == label



def _v2_over_http(live_server, name, version, images, request_id):
    body = {"id": request_id, "inputs": [{"name": "images", "shape": [len(images)], "datatype": "BYTES",
                                          "data": [base64.b64encode(image).decode() for image in images]}]}
    return live_server.client.predict(name, json.dumps(body).encode(), version=version, content_type="application/json")


def test_open_inference_grpc_answers_as_v2_json_does(live_server, grpc, registry, samples):
    for mv in (mv for mv in registry.all_versions() if not mv.own_handler):  # v2 tensors are not for an own handler
        images, labels = zip(*[(path.read_bytes(), label) for path, label in samples[mv.name][:3]])
        over_grpc = grpc.infer(mv.name, list(images), version=mv.version, request_id=f"req-{mv.key}")
        assert over_grpc == _v2_over_http(live_server, mv.name, mv.version, images, f"req-{mv.key}"), mv.key
        assert (over_grpc["model_name"], over_grpc["model_version"], over_grpc["id"]) == (mv.name, mv.version, f"req-{mv.key}")
        assert grpc.model_ready(mv.name, mv.version)
        outputs = {o["name"]: o for o in over_grpc["outputs"]}
        if task_of(mv) == "detection":
            assert set(outputs) == {"image_index", "boxes", "scores", "classes", "class_names"}
            assert set(outputs["image_index"]["data"]) <= {0, 1, 2} and outputs["boxes"]["shape"][1:] == [4]
            continue
        if task_of(mv) == "segmentation":
            assert outputs["mask"]["shape"] == [len(images)] and outputs["fractions"]["shape"][0] == len(images)
            continue
        assert outputs["probabilities"]["shape"] == [len(images), len(outputs["labels"]["data"])]
        if "top_labels" in outputs:  # one label per image: the first of each row is the answer
            k = outputs["top_labels"]["shape"][1]
            assert outputs["top_labels"]["data"][::k] == list(labels), mv.key


def test_a_bad_image_over_open_inference_grpc_keeps_its_400_and_message(live_server, grpc, samples):
    images = [samples["fashion"][0][0].read_bytes(), b"definitely not an image"]
    with pytest.raises(ApiError) as over_grpc:
        grpc.infer("fashion", images, version="2.0", request_id="bad-1")
    with pytest.raises(ApiError) as over_http:
        _v2_over_http(live_server, "fashion", "2.0", images, "bad-1")
    assert over_grpc.value.status == over_http.value.status == 400
    assert json.loads(over_grpc.value.body)["id"] == "bad-1"
    said = json.loads(over_grpc.value.body)["error"]
    assert said == json.loads(over_http.value.body)["error"] and said.startswith("InvalidImage: ")
    assert over_grpc.value.url == f"grpc://{live_server.client.endpoints.grpc}/oip/fashion/2.0"


def test_make_predict_with_protocol_grpc_v2(live_server, samples, capsys):
    path, label = samples["fashion"][0]
    assert main(["predict", "fashion", str(path), "--protocol", "grpc-v2", "--run-dir", str(live_server.run_dir.path)]) == 0
    outputs = {o["name"]: o for o in json.loads(capsys.readouterr().out)["outputs"]}
    assert outputs["top_labels"]["data"][0] == label
