"""The classification task (handlers/classification.py): one decision, read back the same from every answer."""

import classification
import contract
import pytest
import torch

LABELS = ["cat", "dog", "owl", "eel"]


def config(**overrides):
    return contract.HandlerConfig.from_dict({"image_size": [8, 8], "color": "grayscale", "mean": [0.5], "std": [0.5],
                                             "labels": LABELS, **overrides})


MULTICLASS = config(top_k=2)
MULTILABEL = config(task="multilabel", thresholds=[0.5, 0.9, 0.3, 0.5])


@pytest.mark.parametrize("cfg", [MULTICLASS, MULTILABEL], ids=["multiclass", "multilabel"])
def test_every_answer_states_the_decision_it_was_made_from(cfg):
    generator = torch.Generator().manual_seed(0)
    for _ in range(200):
        probabilities = torch.rand(len(LABELS), generator=generator)
        answer = classification.answer(probabilities, cfg)
        decided = classification.decision(probabilities, cfg)
        assert classification.stated(answer, cfg.task) == decided
        assert classification.decision(probabilities.tolist(), cfg) == decided  # a tensor or a list of floats
        assert classification.stated_labels(answer, cfg.task) == classification.named(decided, cfg)


def test_multiclass_decides_the_most_likely_label_and_the_lower_index_on_a_tie():
    assert classification.decision([0.1, 0.6, 0.2, 0.1], MULTICLASS) == 1
    assert classification.decision([0.4, 0.1, 0.4, 0.1], MULTICLASS) == 0
    answer = classification.answer(torch.tensor([0.4, 0.1, 0.4, 0.1]), MULTICLASS)
    assert [p["index"] for p in answer["predictions"]] == [0, 2]  # top_k = 2, the tie in index order
    assert classification.named(2, MULTICLASS) == "owl"


def test_multilabel_decides_each_label_by_its_own_threshold():
    probabilities = [0.5, 0.8, 0.31, 0.49]
    assert classification.decision(probabilities, MULTILABEL) == frozenset({0, 2})  # 0.8 < dog's 0.9
    answer = classification.answer(torch.tensor(probabilities), MULTILABEL)
    assert [p["label"] for p in answer["positive"]] == ["cat", "owl"]  # most likely first
    assert [p["positive"] for p in answer["predictions"]] == [True, False, True, False]
    assert classification.explained(probabilities, MULTILABEL) == [0, 2]
    assert classification.explained([0.1, 0.2, 0.1, 0.3], MULTILABEL) == [3]  # none positive: the most likely


def test_v2_outputs_carry_the_same_decision_per_image():
    probabilities = torch.tensor([[0.1, 0.6, 0.2, 0.1], [0.7, 0.95, 0.1, 0.2]])
    outputs = {o["name"]: o for o in classification.v2_outputs(probabilities, MULTICLASS)}
    assert outputs["top_indices"]["shape"] == [2, 2] and outputs["top_indices"]["data"][::2] == [1, 1]
    assert outputs["top_labels"]["data"] == ["dog", "owl", "dog", "cat"]
    assert outputs["probabilities"]["shape"] == [2, 4] and outputs["labels"]["data"] == LABELS
    positive = {o["name"]: o for o in classification.v2_outputs(probabilities, MULTILABEL)}["positive"]
    assert positive["shape"] == [2, 4]
    assert positive["data"] == [False, False, False, False, True, True, False, False]
