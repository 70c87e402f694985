"""CheXNet end to end against a real TorchServe: a checkpoint in CheXNet's own format (legacy
serialization, DataParallel keys, PyTorch 0.3 names, the dict around it) is imported with the
chexnet preset through the CLI, archived eager and as TorchScript, served, and sent the two real NIH
radiographs; the 14 probabilities must equal those of CheXNet's own wrapper (arnoweng/CheXNet's
model.py: its DenseNet121 class, its key fix, Resize(256) + TenCrop(224), the crops' mean).
A rollout between the two versions is then gated on mean AUROC over the radiographs' NIH labels.

The radiographs are read from ../shared/data/chest-xray/ (never copied into the repository); the
test skips, saying so, where that folder is absent.
"""

import json
import re
import shutil

import pytest
import torch
import torchvision
from conftest import ROOT, start_server
from PIL import Image
from torch import nn
from torchvision import transforms

from marforge.archiving import archive, synthetic
from marforge.cli import main
from marforge.project import Project
from marforge.serve import process, rollout
from marforge.serve.rundir import RunDir

pytestmark = pytest.mark.integration
XRAYS = ROOT.parent / "shared" / "data" / "chest-xray"
NIH_LABELS = {"00000001_000.png": ["Cardiomegaly"], "00027426_000.png": []}  # from the folder's README
if not XRAYS.is_dir():
    pytest.skip(f"{XRAYS} is absent: the real NIH radiographs this test sends are not on this machine",
                allow_module_level=True)


class OriginalDenseNet121(nn.Module):
    """CheXNet's own model class, as its model.py defines it."""

    def __init__(self, out_size):
        super().__init__()
        self.densenet121 = torchvision.models.densenet121(weights=None)
        self.densenet121.classifier = nn.Sequential(nn.Linear(self.densenet121.classifier.in_features, out_size),
                                                    nn.Sigmoid())

    def forward(self, x):
        return self.densenet121(x)


def original_ten_crop_means(checkpoint, images):
    """CheXNet's model.py, step by step: load, fix the keys its way, ten crops, the outputs' mean."""
    state = torch.load(checkpoint, map_location="cpu", weights_only=True)["state_dict"]
    fixed = {}
    for key, value in state.items():
        key = key.split("module.")[-1]
        for old, new in (("conv.1", "conv1"), ("conv.2", "conv2"), ("norm.1", "norm1"), ("norm.2", "norm2")):
            if old in key:
                parts = key.split(old)
                key = parts[0] + new + parts[-1]
                break
        fixed[key] = value
    model = OriginalDenseNet121(14)
    model.load_state_dict(fixed, strict=False)  # their file predates num_batches_tracked, which eval ignores
    normalize = transforms.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])
    crops = transforms.Compose([transforms.Resize(256), transforms.TenCrop(224),
                                transforms.Lambda(lambda cs: torch.stack([normalize(transforms.ToTensor()(c)) for c in cs]))])
    with torch.no_grad():
        return [model.eval()(crops(Image.open(path).convert("RGB"))).mean(0).tolist() for path in images]


@pytest.fixture(scope="module")
def chexnet(tmp_path_factory):
    """A project copy with chexnet 1.0 (eager) and 1.1 (TorchScript) imported from one CheXNet-format
    checkpoint, an eval set of the two radiographs with their NIH labels, and a server for both."""
    root = tmp_path_factory.mktemp("chexnet_project")
    header = '[models.chexnet]\ndefault_version = "0.1"\n'
    text = (ROOT / "models.toml").read_text()
    assert header in text, "models.toml's chexnet table moved: update this fixture"
    start = text.index(header)
    end = text.index("\n[", start)  # the model table's own lines: its serving line, if any, is this fixture's now
    table = re.sub(r"^serving = .*\n", "", text[start:end + 1], flags=re.M)
    text = text[:start] + table.replace(header, header + "serving = { workers = 1, batch_size = 4, max_batch_delay_ms = 5 }\n") \
        + text[end + 1:]
    (root / "models.toml").write_text(text)
    for folder in ("model_defs", "samples"):
        (root / folder).symlink_to(ROOT / folder)
    shutil.copytree(ROOT / "weights", root / "weights")
    (root / "eval" / "chexnet").mkdir(parents=True)
    for name in NIH_LABELS:
        shutil.copy(XRAYS / name, root / "eval" / "chexnet" / name)
    (root / "eval" / "chexnet" / "labels.json").write_text(json.dumps(NIH_LABELS))
    checkpoint = root / "model.pth.tar"
    synthetic.chexnet_checkpoint(checkpoint, ROOT / "model_defs" / "chexnet.py", seed=11, training_state=True)
    for version, extra in (("1.0", []), ("1.1", ["--format", "torchscript"])):
        assert main(["--registry", str(root / "models.toml"), "import", "chexnet", version, "--checkpoint",
                     str(checkpoint), "--preset", "chexnet", *extra]) == 0
    project = Project.at(root / "models.toml", model_store=root / "model_store", run_dir=root / "run",
                         config=ROOT / "config.properties")
    versions = [project.registry.get("chexnet", v) for v in ("1.0", "1.1")]
    built = {mv.version: archive.build(mv, project.model_store) for mv in versions}
    server = start_server(project, versions=versions)
    yield {"project": project, "server": server, "checkpoint": checkpoint, "built": built}
    process.stop(RunDir(project.run_dir))


def test_the_import_recorded_chexnets_format_and_the_remaps(chexnet):
    metadata = json.loads((chexnet["project"].weights_dir / "chexnet-1.0.json").read_text())
    assert metadata["source"]["serialization"] == "legacy" and metadata["source"]["container_key"] == "state_dict"
    assert metadata["source"]["other_entries"] == {"epoch": "int", "best_loss": "float", "optimizer": "dict"}
    assert len(metadata["source"]["remaps"]) == 3 and metadata["task"] == "multilabel"


def test_verification_compared_all_probabilities_and_scored_the_labelled_radiographs(chexnet):
    for version, fmt in (("1.0", "eager"), ("1.1", "torchscript")):
        _, verification = chexnet["built"][version]
        assert verification.fmt == fmt and verification.images == 4  # 2 generated samples + 2 radiographs
        assert verification.max_diff <= verification.tolerance.value
        assert verification.mean_auroc is not None and verification.accuracy is None


def test_served_probabilities_equal_chexnets_own_ten_crop_mean(chexnet):
    images = [XRAYS / name for name in NIH_LABELS]
    expected = original_ten_crop_means(chexnet["checkpoint"], images)
    client = chexnet["server"].client
    for version, tolerance in (("1.0", 1e-5), ("1.1", 1e-4)):
        for path, probabilities in zip(images, expected):
            answer = client.predict("chexnet", path.read_bytes(), version=version)
            assert [p["label"] for p in answer["predictions"]][:3] == ["Atelectasis", "Cardiomegaly", "Effusion"]
            served = [p["probability"] for p in answer["predictions"]]
            assert max(abs(a - b) for a, b in zip(served, probabilities)) <= tolerance, (version, path.name)
            positive = sorted((p for p in answer["predictions"] if p["probability"] >= 0.5),
                              key=lambda p: -p["probability"])
            assert [p["label"] for p in answer["positive"]] == [p["label"] for p in positive]


def test_a_rollout_of_a_multilabel_version_is_gated_on_mean_auroc(chexnet):
    report = rollout.rollout(chexnet["server"].client, chexnet["project"], "chexnet", "1.1", watch_s=2.0,
                             log=lambda line: None)
    assert report.outcome == "promoted"
    checks = {c["check"]: c for c in report.gate["checks"]}
    assert checks["mean AUROC floor"]["ran"] and checks["mean AUROC floor"]["passed"]
    assert report.gate["candidate"]["mean_auroc"] == report.gate["default"]["mean_auroc"]
    assert report.gate["images"] == "eval images (chexnet/)"
    assert "mean AUROC" in report.steps[2]["detail"] and "on 2 eval images" in report.steps[2]["detail"]
