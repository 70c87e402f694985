"""Synthetic stand-ins, clearly labelled as such: a checkpoint in exactly CheXNet's format, and the
generated images that serve as the CheXNet demo's samples.

The real CheXNet weights cannot be downloaded here, and random weights must never pass for a
trained model. So the demo version (`make archive` builds it: `python -m marforge demo`) is made
from `chexnet_checkpoint`: a seeded DenseNet121 saved the way the original was (legacy torch.save
serialization of storages on a GPU, `torch.cuda.FloatStorage` on `cuda:0`, nn.DataParallel's
`module.` prefix, PyTorch 0.3's DenseNet names `norm.1`/`conv.2`, no `num_batches_tracked`, inside
{"state_dict": ...}), imported through the same path a user's real file takes, with `SYNTHETIC` in
its metadata. Its answers mean nothing; its size and speed are real.
"""

import io
import re

from marforge.files import write_atomic

SYNTHETIC = "synthetic weights: for the pipeline and for speed, not for diagnosis"
DEMO_MODEL, DEMO_VERSION = "chexnet", "0.1"
MODERN_DENSENET = re.compile(r"^(.*denselayer\d+\.(?:norm|relu|conv))([12])\.(weight|bias|running_mean|running_var)$")


def chexnet_checkpoint(path, model_def, seed=0, training_state=False):
    """Write a CheXNet-format checkpoint of `model_def`'s DenseNet121 (model_defs/chexnet.py)
    initialised from `seed`; returns the state_dict (under the model's own names) it holds.
    `training_state` adds what a training run's file also holds: epoch, best_loss and the optimizer's
    state."""
    import torch

    from marforge.archiving.weights import model_class

    torch.manual_seed(seed)
    model = model_class(model_def)().eval()
    state = {k: v for k, v in model.state_dict().items() if not k.endswith("num_batches_tracked")}
    legacy = {"module." + MODERN_DENSENET.sub(r"\1.\2.\3", k): v for k, v in state.items()}
    checkpoint = {"state_dict": legacy}
    if training_state:
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
        checkpoint.update(epoch=7, best_loss=0.1483, optimizer=optimizer.state_dict())
    buffer = io.BytesIO()
    location_tag = torch.serialization.location_tag
    torch.serialization.location_tag = lambda storage: "cuda:0"  # as saved on the GPU it was trained on
    try:
        torch.save(checkpoint, buffer, _use_new_zipfile_serialization=False)
    finally:
        torch.serialization.location_tag = location_tag
    legacy_gpu = buffer.getvalue().replace(b"ctorch\nFloatStorage\n", b"ctorch.cuda\nFloatStorage\n")
    write_atomic(path, legacy_gpu)
    return state


def radiograph_like(width, height, seed):
    """A deterministic grayscale picture with a chest radiograph's layout (dark lung fields in a
    brighter body, a spine, ribs): not a radiograph, and labelled as generated wherever it is used."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width] / np.array([height, width]).reshape(2, 1, 1)
    body = 170 - 60 * ((x - 0.5) ** 2 * 4)
    for centre in (0.3, 0.7):  # the lung fields
        body -= 90 * np.exp(-(((x - centre) / 0.14) ** 2 + ((y - 0.5) / 0.28) ** 2))
    body += 40 * np.exp(-((x - 0.5) / 0.05) ** 2)  # the spine
    body += 12 * np.sin(y * 40 + rng.uniform(0, 6)) * (np.abs(x - 0.5) > 0.08)  # ribs
    body += rng.normal(0, 3, size=body.shape)
    return Image.fromarray(np.clip(body, 0, 255).astype(np.uint8), "L")


def write_demo_samples(folder):
    """samples/chexnet/ (or the samples folder of any model imported with the chexnet preset): two
    generated radiograph-like PNGs (one square, one not), unlabelled (null), with a README saying so."""
    from marforge import labelled

    folder.mkdir(parents=True, exist_ok=True)
    names = {}
    for seed, (width, height) in enumerate(((320, 320), (300, 380))):
        name = f"generated-{seed + 1}-{width}x{height}.png"
        radiograph_like(width, height, seed).save(folder / name, optimize=True)
        names[name] = None  # no findings are known: the images are generated
    labelled.write(folder, names)
    write_atomic(folder / "README.md", "Generated images with a chest radiograph's layout (marforge/archiving/synthetic.py),\n"
                 "not radiographs: the CheXNet demo's samples. Real NIH radiographs for tests and benchmarks\n"
                 "are read from ../shared/data/chest-xray/ and never copied here.\n")
    return names


def make_demo(project, log=print):
    """The CheXNet demo version's weights (and its samples when missing): a synthetic CheXNet-format
    checkpoint, imported with the chexnet preset like a real one and labelled SYNTHETIC. Returns the
    import's report lines ([] when the weights were there already and match their metadata)."""
    import tempfile
    from pathlib import Path

    from marforge import labelled
    from marforge.archiving import importer
    from marforge.archiving.weights import verified_metadata
    from marforge.errors import WeightsError

    mv = project.registry.get(DEMO_MODEL, DEMO_VERSION)
    if not labelled.exists(mv.samples):
        write_demo_samples(mv.samples)
    try:
        if verified_metadata(mv).get("synthetic") == SYNTHETIC:  # broken files: made again
            return []
    except WeightsError:
        pass
    with tempfile.TemporaryDirectory(prefix="marforge-demo-") as work:
        checkpoint = Path(work) / "model.pth.tar"
        chexnet_checkpoint(checkpoint, mv.model_def, seed=0)
        _, report = importer.import_checkpoint(project, DEMO_MODEL, DEMO_VERSION, checkpoint, preset="chexnet",
                                               synthetic=SYNTHETIC, force=True, command="python -m marforge demo")
    for line in report:
        log(line)
    return report
