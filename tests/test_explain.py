"""Explanations (handlers/explain.py and the handler's /explanations path), in-process.

Grad-CAM and saliency are checked on models whose evidence is known by construction; the handler's
explanations on real archives: every format answers (the ONNX and TorchScript ones through the eager
model they carry), a multi-label model explains its positive labels, and a batch that mixes
explanations, predictions and bad input answers each request as it asked.
"""

import explain
import pytest
import torch
from conftest import ROOT, classifiers
from torch import nn

from marforge.archiving import archive
from marforge.archiving.worker import LoadedArchive

EXPLAIN = {"explain": "True"}


class Brightness(nn.Module):
    """Class 0's score is how much bright structure its (positive, bias-free) filters see."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1, bias=False)
        with torch.no_grad():
            self.conv.weight.copy_(self.conv.weight.abs())

    def forward(self, x):
        score = torch.relu(self.conv(x)).mean(dim=(1, 2, 3))
        return torch.stack([score, -score], dim=1)


def test_grad_cam_lights_up_where_the_evidence_is():
    torch.manual_seed(0)
    model = Brightness().eval()
    explainer = explain.Explainer(model, torch.zeros(1, 1, 16, 16))
    assert (explainer.method, explainer.layer_name) == ("grad-cam", "conv")
    image = torch.zeros(1, 1, 16, 16)
    image[:, :, :6, :6] = 1.0  # the only evidence: a bright block in the top-left corner
    [heatmap] = explainer.maps(image, [0], probabilities_out=False)
    cam = torch.tensor(heatmap)
    assert cam.shape == (16, 16) and float(cam.max()) == 1.0
    assert float(cam[:6, :6].min()) > 0  # all of the block, and nothing a filter's reach away from it
    assert float(cam[7:, :].max()) == 0 and float(cam[:, 7:].max()) == 0


def test_a_model_without_feature_maps_gets_a_saliency_map_at_the_inputs_resolution():
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 2)).eval()
    with torch.no_grad():
        model[1].weight.zero_()
        model[1].weight[0, 5] = 3.0  # class 0 looks at one pixel only: row 1, column 1
    explainer = explain.Explainer(model, torch.zeros(1, 1, 4, 4))
    assert (explainer.method, explainer.layer_name) == ("saliency", None)
    [heatmap] = explainer.maps(torch.rand(1, 1, 4, 4), [0], probabilities_out=False)
    assert heatmap == [[0.0] * 4, [0.0, 1.0, 0.0, 0.0], [0.0] * 4, [0.0] * 4]


@pytest.fixture(scope="module")
def archives(registry, tmp_path_factory):
    store = tmp_path_factory.mktemp("explain_store")
    built = {(mv.key, fmt): archive.build(mv, store, fmt=fmt)[0] for mv in classifiers(registry)
             for fmt in ({mv.format} | ({"eager"} if mv.key == "fashion-2.0" else set()))}
    return built


def explained(mar, image, **kwargs):
    with LoadedArchive(mar, **kwargs) as loaded:
        [answer] = loaded.predict([{"body": image}], headers=[EXPLAIN])
    assert answer.status == 200, answer.body
    return answer.json()


def test_every_reference_classifier_explains_its_top_label(registry, archives, samples):
    for mv in classifiers(registry):
        path, _ = samples[mv.name][0]
        body = explained(archives[mv.key, mv.format], path.read_bytes())
        e = body["explanation"]
        top = max(body["predictions"], key=lambda p: p["probability"])
        assert (body["model"], body["version"]) == (mv.name, mv.version)
        assert e["maps"][0]["label"] == top["label"] and e["maps"][0]["probability"] == pytest.approx(top["probability"])
        values = [v for row in e["maps"][0]["heatmap"] for v in row]
        assert min(values) >= 0 and max(values) == 1.0
        expected = {"fashion-1.0": ("saliency", None, 28), "fashion-2.0": ("grad-cam", "dropout1", 12),
                    "digits-1.0": ("grad-cam", "dropout1", 12), "chexnet-0.1": ("grad-cam", "densenet121.features", 7)}
        method, layer, side = expected[mv.key]
        assert (e["method"], e["layer"], len(e["maps"][0]["heatmap"])) == (method, layer, side), mv.key


def test_an_onnx_archive_explains_with_the_eager_model_it_carries(archives, samples):
    image = samples["fashion"][0][0].read_bytes()
    onnx, eager = explained(archives["fashion-2.0", "onnx"], image), explained(archives["fashion-2.0", "eager"], image)
    assert onnx["explanation"]["maps"][0]["heatmap"] == eager["explanation"]["maps"][0]["heatmap"]
    assert onnx["predictions"][0]["probability"] == pytest.approx(eager["predictions"][0]["probability"], abs=1e-4)


def test_a_multilabel_model_explains_its_positive_labels_over_the_box_it_saw(registry, archives):
    image = (ROOT / "samples" / "chexnet" / "generated-2-300x380.png").read_bytes()
    body = explained(archives["chexnet-0.1", registry.get("chexnet", "0.1").format], image)  # as served
    positive = [p["label"] for p in body["positive"]]
    assert [m["label"] for m in body["explanation"]["maps"]] == (positive or [max(
        body["predictions"], key=lambda p: p["probability"])["label"]])
    assert body["explanation"]["box"] == [pytest.approx(v, abs=0.1) for v in (18.75, 58.6, 281.25, 321.1)]


def test_a_batch_mixing_explanations_predictions_and_bad_input_answers_each_as_asked(archives, samples):
    image = samples["digits"][0][0].read_bytes()
    with LoadedArchive(archives["digits-1.0", "onnx"], batch_size=4) as loaded:
        answers = loaded.predict([{"body": image}, {"body": image}, {"body": b"junk"}, {"body": image}],
                                 headers=[{}, EXPLAIN, EXPLAIN, {}])
    assert [a.status for a in answers] == [200, 200, 400, 200]
    assert ["explanation" in a.json() for a in answers] == [False, True, False, False]
    assert answers[2].json()["type"] == "InvalidImage"
    assert answers[0].json()["predictions"] == answers[1].json()["predictions"] == answers[3].json()["predictions"]
