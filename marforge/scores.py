"""How good a set of answers is against true labels: accuracy (one label per image) and mean AUROC
(several labels per image). Verification and the rollout gate both score answers with these."""

from collections.abc import Sequence


def accuracy(predicted: Sequence[object], truth: Sequence[object]) -> float | None:
    """Share of images whose predicted label is the true one (`predicted`, `truth`: equal-length lists)."""
    return sum(p == t for p, t in zip(predicted, truth)) / len(truth) if truth else None


def auroc(scores: Sequence[float], positive: Sequence[bool]) -> float | None:
    """Area under the ROC curve of `scores` for the binary truths `positive` (torchmetrics'
    binary_auroc: ties count half), or None when only one class is present."""
    if all(positive) or not any(positive):
        return None
    import torch
    from torchmetrics.functional.classification import binary_auroc

    return float(binary_auroc(torch.tensor(scores, dtype=torch.float64), torch.tensor(positive, dtype=torch.long)))


def mean_auroc(probabilities: Sequence[Sequence[float]], truth: Sequence[Sequence[str]],
               labels: Sequence[str]) -> tuple[float | None, dict[str, float]]:
    """Mean AUROC over the labels that have both a positive and a negative image; `probabilities`: one
    list per image in label order, `truth`: one list of positive label names per image. Returns
    (mean or None, {label: auroc} of the labels that could be scored)."""
    per_label: dict[str, float] = {}
    for index, label in enumerate(labels):
        value = auroc([p[index] for p in probabilities], [label in t for t in truth])
        if value is not None:
            per_label[label] = round(value, 4)
    return (round(sum(per_label.values()) / len(per_label), 4) if per_label else None), per_label
