"""KServe's v1 and v2 bodies through the one handler, per request, in batches that mix them."""

import base64
import json

import pytest
import torch
from conftest import ROOT

from marforge.archiving import archive
from marforge.archiving.worker import LoadedArchive

ANKLE_BOOT = ROOT / "samples" / "fashion" / "00000-ankle-boot.png"


def b64(path):
    return base64.b64encode(path.read_bytes()).decode()


@pytest.fixture(scope="module")
def fashion(registry, tmp_path_factory):
    mv = registry.get("fashion", "2.0")
    path, _ = archive.build(mv, tmp_path_factory.mktemp("protocols"))
    with LoadedArchive(path, batch_size=8) as loaded:
        yield mv, loaded


def test_v1_instances_in_every_accepted_shape_are_answered_one_prediction_each(fashion, samples):
    mv, loaded = fashion
    images = [path for path, _ in samples["fashion"]]
    body = {"instances": [{"data": b64(images[0])}, {"b64": b64(images[1])}, b64(images[2])]}
    [answer] = loaded.predict([{"body": body}])
    assert answer.status == 200
    result = answer.json()
    assert (result["model"], result["version"]) == ("fashion", "2.0")
    assert [p["predictions"][0]["label"] for p in result["predictions"]] == [label for _, label in samples["fashion"][:3]]


def test_v2_bytes_inputs_answer_named_typed_tensors(fashion, samples):
    mv, loaded = fashion
    images = [path for path, _ in samples["fashion"][:2]]
    body = {"id": "req-7", "inputs": [{"name": "data", "shape": [2], "datatype": "BYTES", "data": [b64(p) for p in images]}]}
    [answer] = loaded.predict([{"body": body}])
    result = answer.json()
    assert (result["model_name"], result["model_version"], result["id"]) == ("fashion", "2.0", "req-7")
    outputs = {o["name"]: o for o in result["outputs"]}
    assert set(outputs) == {"probabilities", "labels", "top_labels", "top_indices", "top_probabilities"}
    assert (outputs["probabilities"]["shape"], outputs["probabilities"]["datatype"]) == ([2, 10], "FP32")
    assert outputs["labels"]["data"][9] == "Ankle boot" and outputs["top_labels"]["shape"] == [2, 3]
    assert outputs["top_labels"]["data"][0::3] == [label for _, label in samples["fashion"][:2]]
    probabilities = torch.tensor(outputs["probabilities"]["data"]).view(2, 10)
    assert torch.allclose(probabilities.sum(dim=1), torch.ones(2), atol=1e-5)
    [plain] = loaded.predict([{"body": images[0].read_bytes()}])
    assert outputs["top_probabilities"]["data"][0] == pytest.approx(plain.json()["predictions"][0]["probability"], abs=1e-6)


def test_v2_raw_tensors_of_the_models_input_shape(fashion, samples):
    import numpy as np
    from PIL import Image

    mv, loaded = fashion
    pixels = np.asarray(Image.open(ANKLE_BOOT).convert("L"), dtype=np.uint8)[None, None]  # 1 x 1 x 28 x 28
    body = {"inputs": [{"name": "pixels", "shape": [1, 1, 28, 28], "datatype": "UINT8", "data": pixels.flatten().tolist()}],
            "outputs": [{"name": "top_labels"}]}
    [answer] = loaded.predict([{"body": body}])
    assert [o["name"] for o in answer.json()["outputs"]] == ["top_labels"]
    assert answer.json()["outputs"][0]["data"][0] == "Ankle boot"
    config = loaded.handler.config
    model_input = ((torch.from_numpy(pixels.copy()).float() / 255 - config.mean[0]) / config.std[0]).flatten().tolist()
    body = {"inputs": [{"name": "x", "shape": [1, 1, 28, 28], "datatype": "FP32", "data": model_input}]}
    [answer] = loaded.predict([{"body": body}])
    outputs = {o["name"]: o for o in answer.json()["outputs"]}
    assert outputs["top_labels"]["data"][0] == "Ankle boot"


@pytest.mark.parametrize("body, status, kind, message", [
    ({"instances": []}, 400, "InvalidJSON", '"instances" must be a non-empty list'),
    ({"instances": [{"image": "x"}]}, 400, "InvalidJSON", 'instance 0 must be {"data": "<base64 image>"} or {"b64": ...} '
                                                          "or the base64 string (got keys image)"),
    ({"instances": ["@@"]}, 400, "InvalidBase64", "instance 0 is not valid base64: Only base64 data is allowed"),
    ({"instances": [base64.b64encode(b"junk").decode()]}, 400, "InvalidImage",
     "the body (4 bytes) is not an image format Pillow can read (PNG, JPEG, GIF, BMP, TIFF, WebP, ...)"),
    ({"id": "e-1", "inputs": [{"name": "x", "shape": [1], "datatype": "INT8", "data": [1]}]}, 400, "InvalidInput",
     "input datatype 'INT8' is not served: send BYTES (base64 images), UINT8 pixels or FP32 model input"),
    ({"inputs": [{"name": "x", "shape": [1, 3, 28, 28], "datatype": "UINT8", "data": [0]}]}, 400, "InvalidInput",
     "a UINT8 input must have the model's input shape [N, 1, 28, 28], not [1, 3, 28, 28]"),
    ({"inputs": [{"name": "x", "shape": [2, 1, 28, 28], "datatype": "FP32", "data": [0.0] * 10}]}, 400, "InvalidInput",
     "the FP32 data do not fill shape [2, 1, 28, 28]: shape '[2, 1, 28, 28]' is invalid for input of size 10"),
    ({"inputs": [{"name": "x", "datatype": "BYTES"}]}, 400, "InvalidJSON", "the v2 input lacks shape, data"),
])
def test_v1_and_v2_errors_keep_their_status_and_say_it_in_the_protocols_shape(fashion, body, status, kind, message):
    _, loaded = fashion
    [answer] = loaded.predict([{"body": body}])
    assert answer.status == status
    expected = {"code": status, "type": kind, "message": message, "model": "fashion", "version": "2.0",
                "error": f"{kind}: {message}"}
    if "inputs" in body:  # v2: the error as the outputs too (all the Open Inference Protocol's gRPC service passes on)
        expected.update({"model_name": "fashion", "model_version": "2.0", "id": body.get("id", ""), "outputs": [
            {"name": "error", "shape": [1], "datatype": "BYTES", "data": [f"{kind}: {message}"]},
            {"name": "code", "shape": [1], "datatype": "INT32", "data": [status]}]})
    assert answer.json() == expected


def test_a_batch_mixing_plain_v1_v2_and_bad_requests_answers_each_in_its_protocol(fashion, samples):
    _, loaded = fashion
    (image, label), (other, other_label) = samples["fashion"][:2]
    rows = [{"body": image.read_bytes()},
            {"body": {"instances": [{"data": b64(other)}, {"data": b64(image)}]}},
            {"body": json.dumps({"inputs": [{"name": "d", "shape": [1], "datatype": "BYTES", "data": [b64(other)]}]}).encode()},
            {"body": {"instances": ["@@"]}},
            {"data": image.read_bytes()}]
    answers = loaded.predict(rows)
    assert [a.status for a in answers] == [200, 200, 200, 400, 200]
    assert answers[0].json()["predictions"][0]["label"] == label
    assert [p["predictions"][0]["label"] for p in answers[1].json()["predictions"]] == [other_label, label]
    assert {o["name"]: o for o in answers[2].json()["outputs"]}["top_labels"]["data"][0] == other_label
    assert answers[3].json()["error"].startswith("InvalidBase64: ")
    assert answers[4].json()["predictions"] == answers[0].json()["predictions"]


def test_a_multilabel_model_answers_every_probability_and_the_positive_ones_over_v2(registry, tmp_path):
    mv = registry.get("chexnet", "0.1")
    path, _ = archive.build(mv, tmp_path)
    image = ROOT / "samples" / "chexnet" / "generated-1-320x320.png"
    with LoadedArchive(path) as loaded:
        [v2] = loaded.predict([{"body": {"inputs": [{"name": "d", "shape": [1], "datatype": "BYTES", "data": [b64(image)]}]}}])
        [plain] = loaded.predict([{"body": image.read_bytes()}])
    outputs = {o["name"]: o for o in v2.json()["outputs"]}
    assert set(outputs) == {"probabilities", "labels", "positive"}
    assert outputs["probabilities"]["shape"] == [1, 14] and outputs["positive"]["datatype"] == "BOOL"
    assert outputs["positive"]["data"] == [p["positive"] for p in plain.json()["predictions"]]
    assert outputs["probabilities"]["data"] == pytest.approx([p["probability"] for p in plain.json()["predictions"]], abs=1e-6)


def test_a_bad_image_in_a_well_formed_v2_request_answers_with_the_requests_id(fashion):
    _, loaded = fashion
    body = {"id": "e-9", "inputs": [{"name": "x", "shape": [1], "datatype": "BYTES",
                                     "data": [base64.b64encode(b"junk").decode()]}]}
    [answer] = loaded.predict([{"body": body}])
    assert answer.status == 400
    result = answer.json()
    assert (result["id"], result["type"], result["model_name"]) == ("e-9", "InvalidImage", "fashion")
