"""The classification task (one label per image, or several): what it decides and how it answers.

Shipped flat beside `image_handler.py` in every archive and imported as a top-level module; marforge
imports it too (marforge/shipped.py), so that the handler's answers, verification of an archive and
the rollout gate read the same decision the same way. It owns, for a probability vector:

- the decision (`decision`): the most likely label (multiclass), or the set of labels at or above
  their thresholds (multilabel); `stated` and `stated_labels` read it back out of an answer;
- the answer's labels (`answer`) and the Open Inference Protocol's outputs (`v2_outputs`);
- the probabilities of a batch's outputs (`results`) and the labels an explanation shows (`explained`).

Nothing here knows about TorchServe or requests, so it is tested directly.
"""

import heapq

import contract

MULTICLASS, MULTILABEL = "multiclass", "multilabel"
EXPLAINS = True  # image_handler asks `explained` which labels to explain


def results(outputs, config, sizes):
    """The model's outputs for a batch (N x labels, or N x crops rows) -> the images' probabilities
    (N x labels float32 on the CPU): the activation applied, then averaged over an image's views."""
    probabilities = contract.activate(outputs, config).cpu()
    if config.crops > 1:
        probabilities = probabilities.view(-1, config.crops, probabilities.shape[-1]).mean(dim=1)
    return probabilities


def _values(probabilities):
    return probabilities.tolist() if hasattr(probabilities, "tolist") else list(probabilities)


def decision(probabilities, config):
    """What the model decides for one image's probability vector (a tensor or a sequence of floats):
    the index of the most likely label (the first, on a tie), or the frozenset of positive indexes."""
    values = _values(probabilities)
    if config.task == MULTILABEL:
        return frozenset(i for i, p in enumerate(values) if p >= config.threshold_of(i))
    return _ranked(values, 1)[0]


def _ranked(values, k):
    """The indexes of the k largest values, largest first; on a tie the lower index first."""
    return heapq.nsmallest(k, range(len(values)), key=lambda i: (-values[i], i))


def stated(answer, task):
    """The decision an answer (`answer`'s JSON for one image) states, in `decision`'s terms."""
    if task == MULTILABEL:
        return frozenset(p["index"] for p in answer["positive"])
    return answer["predictions"][0]["index"]


def stated_labels(answer, task):
    """`stated` in the labels' names, as the answer gives them: the label, or the sorted positive labels
    (what two versions' answers are compared by, whatever order their labels have)."""
    if task == MULTILABEL:
        return sorted(p["label"] for p in answer["positive"])
    return answer["predictions"][0]["label"]


def carried(answer):
    """{label index: probability} of the probabilities an answer carries."""
    return {p["index"]: p["probability"] for p in answer["predictions"]}


def named(decision_, config):
    """A decision in the labels' names: the label, or the sorted list of positive labels."""
    if isinstance(decision_, frozenset):
        return sorted(config.labels[i] for i in decision_)
    return config.labels[decision_]


def top_k(probabilities, config):
    """The k most likely labels of one probability vector, most likely first: a multiclass decision's label first."""
    values = _values(probabilities)
    return [{"label": _label(config, i), "index": i, "probability": values[i]} for i in _ranked(values, config.top_k)]


def _label(config, index):
    return config.labels[index] if index < len(config.labels) else str(index)


def judged(probabilities, config):
    """A multilabel answer's labels: every label in model order with its probability, its threshold
    and whether it is positive; then the positive ones, most likely first."""
    values, positive = _values(probabilities), decision(probabilities, config)
    labels = [{"label": config.labels[i], "index": i, "probability": p, "threshold": config.threshold_of(i),
               "positive": i in positive} for i, p in enumerate(values)]
    return {"predictions": labels, "positive": [{"label": config.labels[i], "index": i, "probability": values[i]}
                                                for i in _most_likely_first(positive, values)]}


def _most_likely_first(indexes, values):
    return sorted(indexes, key=lambda i: (-values[i], i))  # _ranked's order


def answer(probabilities, config):
    """The labels part of an answer for one image's probability vector, as the model's task asks."""
    if config.task == MULTILABEL:
        return judged(probabilities, config)
    return {"predictions": top_k(probabilities, config)}


def explained(probabilities, config):
    """The labels an explanation shows for one image: the positive ones, most likely first
    (multilabel), or the most likely label (multiclass, or a multilabel image with none positive)."""
    values = _values(probabilities)
    chosen = decision(values, config)
    if isinstance(chosen, frozenset):
        return _most_likely_first(chosen, values) or _ranked(values, 1)
    return [chosen]


def v2_outputs(probabilities, config):
    """The Open Inference Protocol outputs for the N x labels probabilities of a request's images:
    `probabilities` FP32 [N, labels] and `labels` BYTES [labels] always; then `positive` BOOL [N, labels]
    (multilabel), or `top_labels` BYTES, `top_indices` INT64 and `top_probabilities` FP32, each [N, top_k]."""
    n, width = probabilities.shape
    outputs = [{"name": "probabilities", "shape": [n, width], "datatype": "FP32", "data": probabilities.flatten().tolist()},
               {"name": "labels", "shape": [width], "datatype": "BYTES", "data": list(config.labels)}]
    if config.task == MULTILABEL:
        positive = [i in decision(row, config) for row in probabilities for i in range(width)]
        outputs.append({"name": "positive", "shape": [n, width], "datatype": "BOOL", "data": positive})
        return outputs
    tops = [top_k(row, config) for row in probabilities]
    k = len(tops[0])
    outputs += [{"name": "top_labels", "shape": [n, k], "datatype": "BYTES", "data": [e["label"] for t in tops for e in t]},
                {"name": "top_indices", "shape": [n, k], "datatype": "INT64", "data": [e["index"] for t in tops for e in t]},
                {"name": "top_probabilities", "shape": [n, k], "datatype": "FP32",
                 "data": [e["probability"] for t in tops for e in t]}]
    return outputs
