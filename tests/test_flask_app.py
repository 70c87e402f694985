"""The Flask baseline (measure/flask_app.py) answers as the handler does for the version's task."""

import io

import torch
from PIL import Image

from marforge import shipped
from marforge.measure import flask_app


def _png():
    buffer = io.BytesIO()
    Image.new("L", (32, 32), 128).save(buffer, format="PNG")
    return buffer.getvalue()


def _config(**extra):
    section = {"image_size": 16, "color": "grayscale", "mean": [0.5], "std": [0.25], "labels": ["a", "b", "c"], **extra}
    return shipped.contract().HandlerConfig.from_dict(section)


LOGITS = torch.tensor([[2.0, 0.5, -1.0]])


def _model(inputs):
    return LOGITS.expand(inputs.shape[0], -1)


def test_a_multilabel_model_gets_its_sigmoid_and_thresholds_not_a_softmax():
    config = _config(task="multilabel", thresholds=[0.5, 0.7, 0.1])
    labels, code = flask_app.labels_of(_model, _png(), config)
    probabilities = torch.sigmoid(LOGITS[0])
    assert code == 200
    assert labels == shipped.module("classification").answer(probabilities, config)
    assert [e["positive"] for e in labels["predictions"]] == [True, False, True]
    assert [e["label"] for e in labels["positive"]] == ["a", "c"]


def test_a_multilabel_model_without_activation_gets_its_outputs_as_they_are():
    config = _config(task="multilabel", activation="none")
    labels, _ = flask_app.labels_of(_model, _png(), config)
    assert [e["probability"] for e in labels["predictions"]] == LOGITS[0].tolist()


def test_a_multiclass_model_still_gets_softmax_top_k_and_bad_input_its_error():
    config = _config(top_k=2)
    labels, code = flask_app.labels_of(_model, _png(), config)
    expected = torch.softmax(LOGITS, dim=1)[0]
    assert code == 200 and [e["label"] for e in labels["predictions"]] == ["a", "b"]
    assert labels["predictions"][0]["probability"] == expected[0].item()
    error, code = flask_app.labels_of(_model, b"not an image", config)
    assert code == 400 and error["code"] == 400 and set(error) == {"code", "type", "message"}
