"""Classification (multiclass and multilabel), marforge's side: checking an archive's answers against
the source model and scoring them (see marforge/tasks/__init__.py for the parts every task has).

The source model (model definition + weights) runs in-process through torchvision's own transforms
(Resize, CenterCrop or TenCrop, ToTensor, Normalize: an implementation independent of the
handler's). An archive must carry the same probabilities (the top-k of a multiclass model, every
label of a multilabel one) within its format's tolerance (variants.TOLERANCES) and make the same
decision (handlers/classification.py: top-1 label, or set of positive labels) on at least the
tolerance's share of images. Labelled eval images are scored: accuracy for one label per image,
mean AUROC for several.
"""

from marforge import scores, shipped
from marforge.archiving import variants
from marforge.archiving.weights import source_model
from marforge.errors import ArchiveError

TOLERANCES = variants.TOLERANCES  # every format
UNAVAILABLE = ""


def _task():
    return shipped.module("classification")


def gate_metric(task: str) -> tuple[str, str, str]:
    """(the metric a labelled rollout gate judges, its rules' stem: min_<stem>, max_<stem>_drop, its name)."""
    return ("mean_auroc", "auroc", "mean AUROC") if task == "multilabel" else ("accuracy", "accuracy", "accuracy")


def reference(mv, config, image_paths):
    """Probabilities (N x labels) of the source model on `image_paths`, through torchvision's transforms
    for the configured geometry, averaged over the views after the activation."""
    import torch
    from torchvision import transforms

    image_io, contract = shipped.module("image_io"), shipped.contract()
    tensor = transforms.Compose([transforms.ToTensor(), transforms.Normalize(config.mean, config.std)])
    if config.crop == "none":
        views = transforms.Compose([transforms.Resize(list(config.image_size)), lambda image: [image]])
    elif config.crop == "center":
        views = transforms.Compose([transforms.Resize(config.resize), transforms.CenterCrop(list(config.image_size)),
                                    lambda image: [image]])
    else:
        views = transforms.Compose([transforms.Resize(config.resize), transforms.TenCrop(list(config.image_size))])
    model = source_model(mv)
    rows = []
    with torch.inference_mode():
        for path in image_paths:
            image = image_io.decode_image(path.read_bytes(), config)
            inputs = torch.stack([tensor(view) for view in views(image)])
            rows.append(contract.activate(model(inputs), config).mean(dim=0))
    return torch.stack(rows)


def compare(mar_path, fmt, config, paths, bodies, expected):
    """Decision agreement and largest probability difference with the source model; raise past the tolerance."""
    tolerance, task = TOLERANCES[fmt], _task()
    disagree, worst = [], (0.0, None, None, None, None)
    for path, body, probs in zip(paths, bodies, expected.tolist()):
        said, source = task.stated(body, config.task), task.decision(probs, config)
        if said != source:
            disagree.append((path, said, source))
        for index, probability in task.carried(body).items():
            if abs(probability - probs[index]) >= worst[0]:
                worst = (abs(probability - probs[index]), path, index, probability, probs[index])
    agreement = 1 - len(disagree) / len(paths)
    if agreement < tolerance.agreement:
        path, said, source = disagree[0]
        raise ArchiveError(f"{mar_path}: {len(disagree)} of {len(paths)} images disagree with the source model "
                           f"on the {'positive labels' if config.task == 'multilabel' else 'top-1 class'} "
                           f"({fmt} needs agreement >= {tolerance.agreement}); {path.name}: archive says "
                           f"{_named(config, said)}, source model says {_named(config, source)}")
    diff, path, index, probability, source = worst
    if diff > tolerance.value:
        raise ArchiveError(f"{mar_path}: image {path.name}: probability of {config.labels[index]} is {probability:.7f} "
                           f"in the archive, {source:.7f} in the source model ({fmt} tolerance {tolerance.value})")
    return agreement, diff


def _named(config, said):
    named = _task().named(said, config)
    return "{" + ", ".join(named) + "}" if isinstance(named, list) else named


def quality(config, bodies, labels):
    """{metric: value} of the eval set's answers against its labels (empty when not measurable)."""
    if not labels or any(label is None for label in labels):
        return {}
    if config.task == "multilabel":
        probabilities = [[p["probability"] for p in body["predictions"]] for body in bodies]
        return {"mean_auroc": scores.mean_auroc(probabilities, labels, config.labels)[0]}
    return {"accuracy": scores.accuracy([decision(body, config) for body in bodies], labels)}


def decision(answer, config):
    """What a rollout gate compares two versions' answers by: the label, or the sorted positive labels."""
    return _task().stated_labels(answer, config.task)


def sample_summary(answer):
    """A sample's line in the verification record: the most likely label's prediction."""
    return {"top1": max(answer["predictions"], key=lambda p: p["probability"])}
