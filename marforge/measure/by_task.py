"""What `make bench` runs for a version's task (its weights' metadata `task`): the rows that apply,
why the others are left out, which of TorchServe's own handlers is the (b') row, and how big each
row's answers are.

    formats_for(mv, ...)  the formats the task can be archived in, and why not the others
                          (marforge/tasks/<task>.py TOLERANCES and UNAVAILABLE)
    flask_left_out(mv)    why the Flask row (d) does not apply, or None
    stock_plans(mv)       the (b') servers to try: TorchServe's own handler for the task
                          (image_classifier, object_detector, image_segmenter) and what it is fed

A stock handler that cannot serve a model is measured, not assumed: its server is started and sent
the images (answers.py), and the row is left out with the status it answered and the exception its
worker logged.
"""

import io
from dataclasses import dataclass

from marforge import tasks
from marforge.archiving.weights import read_metadata, task_of

SCENE_TASKS = ("detection", "segmentation")  # bench sends their samples: scenes of several sizes


def formats_for(mv, formats):
    """(the formats of `formats` that mv's task can be archived in, {the others: why not}). An exported
    version, or one served by its own handler, is archived in its own format only."""
    task = tasks.of(tasks.CUSTOM if mv.own_handler else task_of(mv))
    if mv.exported or mv.own_handler:
        why = (f"an exported {mv.exported} file is archived as it is, in format {mv.format}" if mv.exported
               else task.UNAVAILABLE)
        return [f for f in formats if f == mv.format], {f: why for f in formats if f != mv.format}
    return [f for f in formats if f in task.TOLERANCES], {f: task.UNAVAILABLE for f in formats if f not in task.TOLERANCES}


def protocols_left_out(mv):
    """{row label: why} of marforge's protocol rows that do not apply: KServe v2 for an own handler."""
    if mv.own_handler:
        return {"(g) marforge v2 JSON": "an own handler is handed a v2 request's tensors as they are (make kserve "
                                        "refuses v2 for it): marforge does not send it v2"}
    return {}


def flask_left_out(mv):
    """Why the Flask baseline (d) is not measured for `mv`, or None when it is."""
    from marforge.measure import flask_app

    task = task_of(mv)
    if task in flask_app.TASKS:
        return None
    return f"marforge/measure/flask_app.py serves {' and '.join(flask_app.TASKS)} models only, not {task}"


@dataclass(frozen=True)
class StockPlan:
    """A (b') server: TorchServe's own `handler` (or a file subclassing it, `source`), fed each of
    `feeds` in turn ("as sent", or "rgb": the images converted to RGB PNGs) until one is answered."""

    label: str
    handler: str
    feeds: tuple[str, ...]
    source: str | None = None
    note: str = ""
    base: str = ""  # the TorchServe handler it is or subclasses (default: `handler`)

    def unloadable(self):
        """Why a TorchServe worker of this interpreter cannot import the handler (its module's import
        error), or None: the worker would retry the load forever."""
        import importlib

        try:
            importlib.import_module(f"ts.torch_handler.{self.base or self.handler}")
        except ImportError as exc:
            return (f"its worker cannot import ts.torch_handler.{self.base or self.handler}: {type(exc).__name__}: {exc} "
                    "(pip install -r requirements-bench.txt -c constraints.txt; make bench does)")
        return None


# TorchServe's own image_segmenter made for a model: its one class attribute, image_processing (a
# Resize(256), CenterCrop(224) and ImageNet normalisation of three channels), set to the model's own
# transforms, as TorchServe's MNIST example sets its own. Everything else is TorchServe's.
SEGMENTER_SUBCLASS = '''"""TorchServe's image_segmenter with image_processing set to the model's own transforms
(written by marforge/measure/by_task.py for the benchmark's (b') row)."""

from torchvision import transforms
from ts.torch_handler.image_segmenter import ImageSegmenter


class ModelTransformsSegmenter(ImageSegmenter):
    image_processing = transforms.Compose([transforms.Resize({size}), transforms.ToTensor(),
                                           transforms.Normalize({mean}, {std})])
'''


def stock_plans(mv, fits_classifier):
    """The (b') servers to try for `mv`, in order (the first answered gives the rows); `fits_classifier`:
    whether TorchServe's image_classifier takes the model as it is (fixtures.fits_stock_classifier)."""
    task = task_of(mv)
    if task == "detection":  # ToTensor of the image as sent: what a torchvision detector takes
        return [StockPlan("(b') torchserve stock, its object_detector", "object_detector", ("as sent",))]
    if task == "segmentation":
        pre = read_metadata(mv)["preprocess"]
        source = SEGMENTER_SUBCLASS.format(size=list(pre["image_size"]), mean=list(pre["mean"]), std=list(pre["std"]))
        note = ("TorchServe's image_segmenter with only its image_processing set to the model's own transforms "
                f"(Resize({list(pre['image_size'])}), ToTensor, Normalize({list(pre['mean'])}, {list(pre['std'])})); it "
                "answers [class, probability] for each pixel of that input, not at the size of the image sent")
        return [StockPlan("(b') torchserve stock, its image_segmenter", "image_segmenter", ("as sent", "rgb")),
                StockPlan("(b') torchserve stock, image_segmenter with the model's transforms", "model_transforms_segmenter",
                          ("as sent",), source, note, base="image_segmenter")]
    if fits_classifier:  # it answers a grayscale image 503: its normalisation has three channels
        return [StockPlan("(b') torchserve stock, its image_classifier", "image_classifier", ("rgb",))]
    return []


def fed(feed, bodies):
    """The images as a plan's feed sends them."""
    return [as_rgb_png(b) for b in bodies] if feed == "rgb" else list(bodies)


def as_rgb_png(body):
    from PIL import Image

    out = io.BytesIO()
    Image.open(io.BytesIO(body)).convert("RGB").save(out, format="PNG")
    return out.getvalue()
