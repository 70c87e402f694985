"""What `marforge import --preset NAME` knows about a network trained elsewhere: its model
definition, labels, preprocessing and outputs, so that its checkpoint imports with one command.

    chexnet   arnoweng/CheXNet's model.pth.tar: torchvision DenseNet121 with a 14-finding sigmoid
              classifier, trained under nn.DataParallel and saved by PyTorch 0.3 in the legacy
              format, inside {"state_dict": ...}. Test-time preprocessing as in its model.py: RGB,
              Resize(256), TenCrop(224), ImageNet mean and std; the ten crops' outputs averaged.

The key remaps it needs (DataParallel's `module.`, the DenseNet legacy names, num_batches_tracked)
are found by the importer's rules (checkpoints.match) and recorded; a preset does not name them.
A preset may also write generated sample images (chexnet's: synthetic.write_demo_samples) for an
import given no --samples, so that `make archive` has images to verify with.
"""

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from marforge.archiving import synthetic

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CHEXNET_FINDINGS = ("Atelectasis", "Cardiomegaly", "Effusion", "Infiltration", "Mass", "Nodule", "Pneumonia",
                    "Pneumothorax", "Consolidation", "Edema", "Emphysema", "Fibrosis", "Pleural_Thickening", "Hernia")


@dataclass(frozen=True)
class Preset:
    name: str
    description: str
    model_def: str  # relative to the project root
    labels: tuple
    preprocess: dict  # the contract's preprocess entry
    task: str = "multiclass"
    activation: str | None = None  # None: the task's default
    key: str | None = None  # the checkpoint entry that holds the tensors (None: found by the importer)
    source: dict = field(default_factory=dict)  # where such checkpoints come from, for the metadata
    samples: Callable[[Path], dict[str, Any]] | None = None  # writes generated sample images into a folder


PRESETS = {
    "chexnet": Preset(
        name="chexnet",
        description="CheXNet: DenseNet121, 14 ChestX-ray14 findings, sigmoid outputs",
        model_def="model_defs/chexnet.py",
        labels=CHEXNET_FINDINGS,
        preprocess={"image_size": [224, 224], "color": "rgb", "mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD),
                    "resize": 256, "crop": "ten"},
        task="multilabel",
        activation="none",  # the model ends in nn.Sigmoid: its outputs are probabilities already
        key="state_dict",
        source={"project": "https://github.com/arnoweng/CheXNet", "file": "model.pth.tar"},
        samples=synthetic.write_demo_samples,  # generated radiograph-like images, labelled as generated
    ),
}
