"""What marforge does per task, on its side of the archive: the handler's own task modules
(handlers/classification.py, detection.py, segmentation.py) answer requests; these check an archive's
answers against the source model and score them.

    classification.py  multiclass and multilabel: the source model through torchvision's transforms,
                       the same decisions and probabilities within a format's tolerance; accuracy or mean AUROC
    detection.py       torchvision's detection interface run directly: boxes matched by IoU, labels,
                       scores within the tolerance; COCO mAP
    segmentation.py    torchvision's segmentation interface run directly: masks agreeing pixel by pixel; mIoU
    custom.py          a version served by the user's own handler (task "custom"): its answers against the
                       expected answers recorded for its samples; the accuracy of their `decision` field

Each module has the same parts: `TOLERANCES` (the formats the task can be archived in, and how
far each may be from the source; `UNAVAILABLE` says why the others are not), `reference` (the source
model's results on images, computed without the handler's code), `compare` (agreement with them;
raises ArchiveError past the tolerance), `quality` (the eval set's metrics by name), `decision` (what
two versions' answers are compared by in an unlabelled rollout gate), `gate_metric` (the metric a
labelled gate judges, and its registry rules) and `sample_summary` (a sample's line in the
verification record).
"""

import importlib
from types import ModuleType

from marforge import shipped

CUSTOM = "custom"  # the task of a version served by its own handler (its weights' metadata says so)


def of(task: str) -> ModuleType:
    """The module of marforge.tasks for a handler task name (contract.TASKS), or for CUSTOM."""
    return importlib.import_module(f"marforge.tasks.{CUSTOM if task == CUSTOM else shipped.contract().TASK_MODULES[task]}")
