"""The detection task: per image, the objects found, each with its label, score and box.

Shipped flat beside `image_handler.py` in every archive and imported as a top-level module. It
serves any model with torchvision's detection interface: in eval mode `model(images)` takes a list
of C x H x W float tensors in [0, 1], each at its own size (the handler's geometry "keep": images of
different sizes share a batch), and returns one `{"boxes": [N, 4] xyxy in that image's pixels,
"labels": [N], "scores": [N]}` per image (a scripted torchvision detector returns (losses, that list)).
The model resizes and normalises inside, so the boxes are in the pixels of the image as sent.

    answer      {"detections": [{"label", "index", "score", "box": [x1, y1, x2, y2]}, ...]}
                most confident first: those scoring at least `score_threshold`, at most `max_detections`
    v2 outputs  one row per detection of the request's images: `image_index` INT64 [D], `boxes` FP32
                [D, 4], `scores` FP32 [D], `classes` INT64 [D], `class_names` BYTES [D]

`index` is the model's label number and `label` its name (`labels[index]`; torchvision's detectors
count the background as label 0). The decision a verification compares is the answer's detections.
Detection has no explanations. Nothing here knows about TorchServe.
"""

EXPLAINS = False


def batch(views):
    """One call's input: the images of one size, as the list torchvision's detectors take."""
    return views


def per_image(outputs):
    """One call's outputs as its images' detection dicts: a scripted torchvision detector returns
    (losses, detections)."""
    return outputs[1] if isinstance(outputs, tuple) else outputs


def results(outputs, config, sizes):
    """The model's per-image outputs -> per image its detections (dicts as answered), kept and ordered."""
    import torch

    found = []
    for out in outputs:
        scores = out["scores"].detach().float().cpu()
        boxes, labels = out["boxes"].detach().float().cpu(), out["labels"].detach().cpu()
        order = [i for i in torch.argsort(scores, descending=True, stable=True).tolist()
                 if scores[i] >= config.score_threshold][:config.max_detections]
        found.append([{"label": _name(config, int(labels[i])), "index": int(labels[i]), "score": float(scores[i]),
                       "box": [float(v) for v in boxes[i]]} for i in order])
    return found


def _name(config, index):
    return config.labels[index] if 0 <= index < len(config.labels) else str(index)


def answer(detections, config):
    """The answer's task part for one image."""
    return {"detections": detections}


def stated(answer_):
    """The detections an answer states."""
    return answer_["detections"]


def v2_outputs(results_, config):
    """The Open Inference Protocol outputs for the detections of a request's images."""
    rows = [(n, d) for n, detections in enumerate(results_) for d in detections]
    count = len(rows)
    return [{"name": "image_index", "shape": [count], "datatype": "INT64", "data": [n for n, _ in rows]},
            {"name": "boxes", "shape": [count, 4], "datatype": "FP32", "data": [v for _, d in rows for v in d["box"]]},
            {"name": "scores", "shape": [count], "datatype": "FP32", "data": [d["score"] for _, d in rows]},
            {"name": "classes", "shape": [count], "datatype": "INT64", "data": [d["index"] for _, d in rows]},
            {"name": "class_names", "shape": [count], "datatype": "BYTES", "data": [d["label"] for _, d in rows]}]
