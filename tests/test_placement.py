"""Device placement (handlers/placement.py) and the handler's use of it, on a machine without a GPU.

CUDA availability is mocked (torch.cuda.is_available) for the decisions; the transfer to a GPU is
checked with pin_memory/.to/.half recorded instead of run; the real handler is loaded only where
it can really run here, on the CPU. Nothing here measures speed or runs a kernel on a GPU.
"""

import json
import logging

import contract
import image_handler
import placement
import protocols
import pytest
import torch
import yaml
from conftest import stage_model_dir
from ts.context import Context

from marforge import registry as registry_module
from marforge.archiving import archive, variants, verify
from marforge.archiving.weights import read_metadata
from marforge.archiving.worker import LoadedArchive
from marforge.tasks import classification as classification_task

JIT_LOAD_DEPRECATED = "ignore:`torch.jit.load` is deprecated:FutureWarning"  # BaseHandler still uses it
SECTION = {"image_size": 28, "color": "grayscale", "mean": [0.5], "std": [0.5], "labels": list("0123456789")}


def config(**flags):
    return contract.HandlerConfig.from_dict({**SECTION, **flags})


@pytest.mark.parametrize("gpu_id, cuda, fmt, flags, expected", [
    (None, False, "eager", {}, ("cpu", False, False)),
    (0, False, "eager", {"half_precision": True}, ("cpu", False, False)),  # no CUDA: options ignored
    (None, True, "eager", {"half_precision": True}, ("cpu", False, False)),  # CUDA but no GPU assigned
    (1, True, "eager", {}, ("cuda:1", False, True)),  # pin_memory is on by default
    (1, True, "torchscript", {"half_precision": True, "pin_memory": False}, ("cuda:1", True, False)),
    (0, True, "compile", {"half_precision": True}, ("cuda:0", True, True)),
    (0, True, "quantized", {"half_precision": True}, ("cpu", False, False)),  # int8 kernels: CPU only
    (None, False, "quantized", {}, ("cpu", False, False)),
    (1, True, "onnx", {"half_precision": True}, ("cuda:1", False, False)),  # onnxruntime gets float32 numpy
])
def test_decide(gpu_id, cuda, fmt, flags, expected):
    chosen = placement.decide(gpu_id, cuda, fmt, config(**flags))
    assert (str(chosen.device), chosen.half, chosen.pin) == expected
    assert chosen.cpu_only == (fmt == "quantized")


def test_decide_says_why_an_option_or_a_gpu_is_not_used():
    assert placement.decide(0, True, "eager", config(half_precision=True)).notes == ()
    assert placement.decide(None, False, "eager", config()).notes == ()  # pin_memory's default: no noise
    [note] = placement.decide(None, False, "eager", config(half_precision=True)).notes
    assert "half_precision ignored on the CPU" in note
    [note] = placement.decide(2, True, "quantized", config()).notes
    assert "runs on the CPU although GPU 2 is assigned" in note


@pytest.mark.parametrize("yaml_config, fmt", [
    (None, "eager"), ({"handler": {}}, "eager"), ({"marforge": {"format": "quantized"}}, "quantized"),
])
def test_archive_format_comes_from_model_config(yaml_config, fmt):
    assert contract.archive_format(yaml_config) == fmt


@pytest.fixture
def recorded(monkeypatch):
    """Record Tensor.pin_memory/.to/.half calls, each returning the tensor (nothing runs on a GPU)."""
    calls = []
    for name in ("pin_memory", "to", "half"):
        def record(self, *args, _name=name, **kwargs):
            calls.append((_name, args, kwargs))
            return self
        monkeypatch.setattr(torch.Tensor, name, record)
    return calls


def test_cuda_transfer_pins_and_copies_without_blocking(recorded):
    batch = torch.zeros(2, 1, 28, 28)
    cuda = torch.device("cuda:1")
    assert placement.to_device(batch, placement.Placement(cuda, half=True, pin=True)) is batch
    assert recorded == [("pin_memory", (), {}), ("to", (cuda,), {"non_blocking": True}), ("half", (), {})]
    recorded.clear()
    placement.to_device(batch, placement.Placement(cuda))
    assert recorded == [("to", (cuda,), {})]


def test_cpu_transfer_touches_nothing(recorded):
    batch = torch.zeros(2, 1, 28, 28)
    assert placement.to_device(batch, placement.decide(None, False, "eager", config(half_precision=True))) is batch
    assert recorded == []


@pytest.mark.parametrize("flags, message", [
    ({"half_precision": "yes"}, "half_precision must be true or false, not 'yes'"),
    ({"pin_memory": 1}, "pin_memory must be true or false, not 1"),
])
def test_flags_must_be_booleans(flags, message):
    with pytest.raises(ValueError, match=message):
        config(**flags)


def test_registry_handler_tables_set_the_flags(tmp_path):
    path = tmp_path / "models.toml"
    path.write_text('[handler]\nhalf_precision = true\n[models.m]\ndefault_version = "1"\n'
                    '[models.m.versions."1"]\nmodel_def = "m.py"\nhandler = { pin_memory = false }\n')
    mv = registry_module.load(path).get("m")
    metadata = {"preprocess": {k: SECTION[k] for k in ("color", "mean", "std")} | {"image_size": [28, 28]},
                "labels": SECTION["labels"]}
    chosen = contract.HandlerConfig.from_dict(archive.handler_section(mv, metadata))
    assert (chosen.half_precision, chosen.pin_memory) == (True, False)


def test_half_precision_on_this_cpu_machine_serves_float32(registry, tmp_path, caplog):
    caplog.set_level(logging.INFO)
    mv = registry.by_key("fashion-2.0")
    with LoadedArchive(stage_model_dir(mv, tmp_path, handler={"half_precision": True})) as loaded:
        handler = loaded.handler
        assert (handler.placement.device.type, handler.placement.half) == ("cpu", False)
        assert {p.dtype for p in handler.model.parameters()} == {torch.float32}
        paths = [path for path, _ in verify.sample_files(mv)]
        answers = loaded.predict([{"body": p.read_bytes()} for p in paths])
        expected = classification_task.reference(mv, loaded.handler.config, paths)
    assert "half_precision ignored on the CPU" in caplog.text
    for probs, answer in zip(expected, answers):
        assert answer.status == 200
        for p in answer.json()["predictions"]:
            assert p["probability"] == pytest.approx(float(probs[p["index"]]), abs=1e-5)


def stage_traced(mv, dest, fmt):
    """A model dir holding `fmt`'s TorchScript file (torchscript or quantized) as the archive would."""
    metadata = read_metadata(mv)
    variant = variants.prepare(mv, fmt, metadata, stage_model_dir(mv, dest))
    config = {"handler": archive.handler_section(mv, metadata), **variant.config}
    (dest / "model-config.yaml").write_text(yaml.safe_dump(config))
    manifest = {"model": {"modelName": mv.name, "modelVersion": mv.version, "handler": "image_handler.py",
                          "serializedFile": variant.serialized_file.name, "configFile": "model-config.yaml"}}
    (dest / "MAR-INF" / "MANIFEST.json").write_text(json.dumps(manifest))
    return Context(mv.name, str(dest), manifest, 8, 0, "test", model_yaml_config=config)


@pytest.mark.filterwarnings(JIT_LOAD_DEPRECATED)
def test_quantized_archive_on_a_gpu_worker_loads_on_the_cpu(registry, tmp_path, monkeypatch):
    """CUDA mocked available and GPU 0 assigned: BaseHandler alone would load the model on cuda:0."""
    mv = registry.by_key("fashion-1.0")
    context = stage_traced(mv, tmp_path, "quantized")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    handler = image_handler.ImageHandler()
    handler.initialize(context)
    cpu = torch.device("cpu")
    assert (handler.device, handler.map_location, handler.placement.device) == (cpu, "cpu", cpu)
    assert context.system_properties["gpu_id"] == 0  # put back after loading
    batch = torch.zeros(2, 1, 28, 28)
    probabilities, _, explanations = handler.inference((batch, [0, 1], [(28, 28)] * 2))
    assert explanations == {}
    assert probabilities.dtype == torch.float32 and probabilities.shape == (2, 10)


@pytest.mark.filterwarnings(JIT_LOAD_DEPRECATED)
def test_the_same_mocked_gpu_worker_really_tries_cuda_for_torchscript(registry, tmp_path, monkeypatch):
    """The control for the test above: without the CPU-only rule, a torchscript archive goes to CUDA:
    on a machine without a GPU (CUDA mocked) its load fails; on a GPU machine it lands there."""
    context = stage_traced(registry.by_key("fashion-1.0"), tmp_path, "torchscript")
    if torch.cuda.is_available():
        handler = image_handler.ImageHandler()
        handler.initialize(context)
        assert handler.placement.device == torch.device("cuda:0")
        return
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    with pytest.raises(RuntimeError, match="CUDA"):
        image_handler.ImageHandler().initialize(context)


def test_onnxruntime_is_asked_for_the_workers_own_gpu():
    assert placement.onnx_providers(torch.device("cuda:1")) == [
        ("CUDAExecutionProvider", {"device_id": 1}), "CPUExecutionProvider"]
    assert placement.onnx_providers(torch.device("cpu")) == ["CPUExecutionProvider"]


@pytest.mark.filterwarnings("ignore:Specified provider 'CUDAExecutionProvider' is not in available provider names")
def test_onnx_archive_on_a_gpu_worker_without_onnxruntime_gpu_says_it_runs_on_the_cpu(
        registry, tmp_path, monkeypatch, caplog):
    """CUDA mocked available and GPU 1 assigned; the onnxruntime installed here has no CUDA provider,
    so the session falls back to the CPU: the worker must say so, and still answer."""
    import onnxruntime

    caplog.set_level(logging.INFO)
    mv = registry.by_key("fashion-2.0")
    context = stage_traced(mv, tmp_path, "onnx")
    context.system_properties["gpu_id"] = 1
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    asked = []
    real_session = onnxruntime.InferenceSession

    def session(*args, providers=None, **kwargs):
        asked.append(providers)
        return real_session(*args, providers=providers, **kwargs)

    monkeypatch.setattr(onnxruntime, "InferenceSession", session)
    handler = image_handler.ImageHandler()
    handler.initialize(context)
    assert handler.placement.device == torch.device("cuda:1")
    # One session, opened for this worker's GPU: BaseHandler's own (every core, GPU 0) is never opened.
    assert asked == [[("CUDAExecutionProvider", {"device_id": 1}), "CPUExecutionProvider"]]
    assert handler.model.get_providers() == ["CPUExecutionProvider"]
    assert "onnxruntime has no CUDA provider here" in caplog.text and "cuda:1" in caplog.text
    paths = [path for path, _ in verify.sample_files(mv)]
    inputs = torch.stack([protocols.prepare({"body": p.read_bytes()}, handler.config) for p in paths])
    probabilities, _, _ = handler.inference((inputs, list(range(len(paths))), [(28, 28)] * len(paths)))
    expected = classification_task.reference(mv, handler.config, paths)
    assert torch.allclose(probabilities, torch.stack(list(expected)), atol=1e-4)
