"""A CPU machine or a GPU machine (marforge/device.py), the registry's settings per device, and the
handler's GPU options on their CPU side: what a worker does without CUDA, and the logic that works
the same on both (batch padding for CUDA graphs, the tensor path of GPU decoding run on the CPU).
CUDA itself is tested where it is present (test_gpu.py), never mocked into a result here."""

import io

import contract
import image_io
import numpy as np
import placement
import protocols
import pytest
import torch
from PIL import Image

from marforge import device
from marforge.errors import RegistryError
from marforge.project import Project

SECTION = {"image_size": [224, 224], "color": "rgb", "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225],
           "labels": [f"l{i}" for i in range(14)]}


def test_the_device_is_chosen_by_the_environment_or_by_the_gpus_the_driver_lists(tmp_path, monkeypatch):
    monkeypatch.setattr(device, "DRIVER", tmp_path / "gpus")
    monkeypatch.setattr(device.shutil, "which", lambda name: None)  # no nvidia-smi either
    assert device.detect({}) == "cpu" and device.gpu_count({}) == 0
    for bus in ("0000:01:00.0", "0000:02:00.0"):
        (tmp_path / "gpus" / bus).mkdir(parents=True)
    assert device.detect({}) == "gpu" and device.gpu_count({}) == 2
    assert device.gpu_count({"CUDA_VISIBLE_DEVICES": "1"}) == 1 and device.gpu_count({"CUDA_VISIBLE_DEVICES": ""}) == 0
    assert device.detect({"MARFORGE_DEVICE": "cpu"}) == "cpu"
    with pytest.raises(RegistryError) as caught:
        device.detect({"MARFORGE_DEVICE": "tpu"})
    assert caught.value.message == "MARFORGE_DEVICE='tpu' is not one of cpu, gpu"


REGISTRY = """
[serving]
workers = "auto"
batch_size = 16
gpu = { batch_size = 32, max_batch_delay_ms = 2 }

[handler]
gpu = { half_precision = true }

[models.m]
default_version = "1.0"
[models.m.versions."1.0"]
model_def = "m.py"
format = { cpu = "onnx", gpu = "eager" }
[models.m.versions."2.0"]
model_def = "m.py"
format = "torchscript"
serving = { workers = 3, gpu = { workers = 1 } }
"""


def test_the_registry_resolves_settings_for_the_machine(tmp_path):
    (tmp_path / "models.toml").write_text(REGISTRY)
    cpu = Project.at(tmp_path / "models.toml", device="cpu").registry
    gpu = Project.at(tmp_path / "models.toml", device="gpu").registry
    assert (cpu.device, gpu.device) == ("cpu", "gpu")
    assert [mv.format for mv in cpu.all_versions()] == ["onnx", "torchscript"]
    assert [mv.format for mv in gpu.all_versions()] == ["eager", "torchscript"]
    assert cpu.get("m", "1.0").serving["batch_size"] == 16 and gpu.get("m", "1.0").serving["batch_size"] == 32
    assert gpu.get("m", "1.0").serving["max_batch_delay_ms"] == 2 and "gpu" not in cpu.get("m", "1.0").serving
    assert cpu.get("m", "1.0").handler == {} and gpu.get("m", "1.0").handler == {"half_precision": True}
    assert (cpu.get("m", "2.0").serving["workers"], gpu.get("m", "2.0").serving["workers"]) == (3, 1)
    assert gpu.get("m", "1.0").serving["workers"] == max(1, device.gpu_count())  # "auto": one per GPU
    assert cpu.get("m", "1.0").auto_workers and not cpu.get("m", "2.0").auto_workers


def test_per_device_tables_refuse_unknown_keys(tmp_path):
    (tmp_path / "models.toml").write_text(REGISTRY.replace("gpu = { batch_size = 32", "gpu = { batch = 32"))
    with pytest.raises(RegistryError, match=r"unknown key\(s\) batch in \[serving\]\.gpu"):
        Project.at(tmp_path / "models.toml", device="cpu").registry
    (tmp_path / "models.toml").write_text(REGISTRY.replace('format = { cpu = "onnx", gpu = "eager" }',
                                                           'format = { cpu = "onnx", tpu = "eager" }'))
    with pytest.raises(RegistryError, match=r"unknown key\(s\) tpu in .* format"):
        Project.at(tmp_path / "models.toml", device="cpu").registry


def config(**flags):
    return contract.HandlerConfig.from_dict({**SECTION, **flags})


def test_gpu_options_are_ignored_on_the_cpu_and_said_so():
    chosen = placement.decide(None, False, "eager", config(channels_last=True, gpu_decode=True))
    assert (chosen.device.type, chosen.channels_last, chosen.gpu_decode) == ("cpu", False, False)
    assert chosen.notes == ("channels_last ignored on the CPU", "gpu_decode ignored on the CPU: images are decoded by Pillow")
    gpu = placement.decide(0, True, "cudagraphs", config(channels_last=True), batch_size=4)
    assert gpu.channels_last and gpu.pad_to == (1, 2, 4)
    assert placement.decide(0, True, "eager", config(), batch_size=4).pad_to == ()
    assert placement.decide(0, True, "cudagraphs", config(resize=256, crop="ten"), batch_size=4).pad_to == (1, 2, 4, 8, 16, 32, 40)


def test_a_batch_is_padded_to_its_bucket_and_only_its_rows_come_back():
    batch = torch.arange(3 * 2, dtype=torch.float32).view(3, 2)
    padded, rows = placement.pad(batch, (1, 2, 4, 8))
    assert padded.shape == (4, 2) and rows == 3 and torch.equal(padded[:3], batch) and not padded[3].any()
    assert placement.pad(batch, (1, 3))[0] is batch
    assert placement.pad(torch.zeros(9, 2), (1, 2, 4, 8))[0].shape == (9, 2)  # past the largest: as it is


def jpeg(width, height, mode="RGB", seed=0):
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width]
    pixels = np.stack([(x * 255 // width), (y * 255 // height), ((x + y) * 127 // (width + height))], -1)
    picture = Image.fromarray((pixels + rng.integers(0, 20, pixels.shape)).clip(0, 255).astype(np.uint8), "RGB")
    buffer = io.BytesIO()
    picture.convert(mode).save(buffer, format="JPEG", quality=92)
    return buffer.getvalue()


@pytest.mark.parametrize("crop", ["none", "center", "ten"])
def test_the_gpu_decoding_path_run_on_the_cpu_matches_pillows(crop):
    """The tensor path (torchvision's decoder, resize and crops as tensors) on the CPU device against
    Pillow's: the same decoder library underneath, so what differs is the resize's arithmetic."""
    cfg = config(**({"resize": 256, "crop": crop} if crop != "none" else {}))
    body = jpeg(300, 380)
    tensor, size = image_io.gpu_view(body, cfg, torch.device("cpu"))
    pillow = protocols.prepare({"body": body}, cfg)
    assert size == (300, 380) and tensor.shape == pillow.shape
    pixel_levels = ((tensor - pillow) * torch.tensor(cfg.std).view(3, 1, 1) * 255).abs()
    assert float(pixel_levels.max()) <= 2.01 and float(pixel_levels.mean()) <= 0.3


def test_what_the_gpu_decoder_does_not_take_goes_the_cpu_way():
    cfg = config()
    png = io.BytesIO()
    Image.new("RGB", (40, 40)).save(png, format="PNG")
    assert image_io.gpu_view(png.getvalue(), cfg, torch.device("cpu")) is None
    assert image_io.gpu_view(jpeg(64, 64, mode="CMYK"), cfg, torch.device("cpu")) is None
    with pytest.raises(image_io.BadInput) as caught:
        image_io.gpu_view(jpeg(5, 64), cfg, torch.device("cpu"))
    assert caught.value.kind == "ImageTooSmall"
