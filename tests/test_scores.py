"""The scores verification and the rollout gate judge answers by (marforge/scores.py)."""

import pytest

from marforge import scores


def test_auroc_is_the_share_of_positive_negative_pairs_ranked_right_ties_counting_half():
    assert scores.auroc([0.1, 0.4, 0.35, 0.8], [False, False, True, True]) == pytest.approx(0.75)
    assert scores.auroc([0.5, 0.5, 0.9], [True, False, True]) == pytest.approx(0.75)  # one tied pair: a half
    assert scores.auroc([0.9, 0.1], [False, True]) == pytest.approx(0.0)
    assert scores.auroc([0.3, 0.6], [True, True]) is None and scores.auroc([0.3], [False]) is None


def test_mean_auroc_leaves_out_the_labels_with_one_class_only():
    probabilities = [[0.9, 0.2, 0.5], [0.1, 0.7, 0.5], [0.8, 0.1, 0.5]]
    truth = [["a"], ["b"], ["a", "c"]]
    mean, per_label = scores.mean_auroc(probabilities, truth, ["a", "b", "c"])
    assert per_label == {"a": 1.0, "b": 1.0, "c": 0.5} and mean == pytest.approx(0.8333)
    assert scores.mean_auroc(probabilities, [["a"]] * 3, ["a"]) == (None, {})
