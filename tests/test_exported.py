"""Exported models (marforge/archiving/exported.py): each kind is told by its content whatever its name,
every other file is refused with what it is, and each kind loads, runs, is described and gets example
inputs like the model it was exported from. Tiny models, saved in a temp dir; no server."""

import json
import re
import shutil
import warnings
import zipfile

import pytest
import torch
from conftest import ROOT
from torch import nn

from marforge import files
from marforge.archiving import exported
from marforge.errors import USER_ERROR, ExportedModelError

ACCEPTED = "accepted: torchscript (torch.jit.save), onnx (torch.onnx.export), torch.export (torch.export.save)"
IMPORT = 'make import NAME=<name> VERSION=<version> CHECKPOINT=<file> IMPORT_ARGS="--model-def model_defs/<file>.py"'


class TwoInputs(nn.Module):
    def __init__(self):
        super().__init__()
        self.linear = nn.Linear(16, 3)

    def forward(self, image, extra):
        return self.linear(image.flatten(1)), extra * 2


def onnx_export(model, inputs, path, names):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(model, inputs, str(path), dynamo=False, opset_version=17, input_names=names[0],
                          output_names=names[1], dynamic_axes={n: {0: "batch"} for n in names[0] + names[1]})


def write_legacy_pt2(program, path):
    """What torch.export.save wrote before its PT2 archive (torch <= 2.7): members at the zip's root."""
    from torch._export.serde.schema import SCHEMA_VERSION
    from torch._export.serde.serialize import serialize

    artifact = serialize(program)
    with zipfile.ZipFile(path, "w") as z:
        for name in ("exported_program", "state_dict", "constants", "example_inputs"):
            z.writestr(f"serialized_{name}.{'json' if name == 'exported_program' else 'pt'}", getattr(artifact, name))
        z.writestr("version", ".".join(map(str, SCHEMA_VERSION)))


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    """{name: path} of every file the tests read, and the two source models."""
    d = tmp_path_factory.mktemp("exported")
    torch.manual_seed(0)
    one, two = nn.Sequential(nn.Flatten(), nn.Linear(16, 3)).eval(), TwoInputs().eval()
    x, pair = torch.randn(2, 1, 4, 4), (torch.randn(2, 1, 4, 4), torch.randn(2, 5))
    with warnings.catch_warnings(), torch.no_grad():
        warnings.filterwarnings("ignore", r"`torch\.jit\.\w+` is deprecated", FutureWarning)
        torch.jit.save(torch.jit.trace(one, x), str(d / "model.torchscript.pt"))
    onnx_export(one, (x,), d / "model.onnx", (["input"], ["output"]))
    onnx_export(two, pair, d / "two.onnx", (["image", "extra"], ["logits", "doubled"]))
    batch = torch.export.Dim("batch", min=1, max=64)
    torch.export.save(torch.export.export(one, (x,), dynamic_shapes=({0: batch},)), d / "model.pt2")
    torch.export.save(torch.export.export(two, pair, dynamic_shapes=({0: batch}, {0: batch})), d / "two.pt2")
    torch.export.save(torch.export.export(one, (x,)), d / "static.pt2")
    write_legacy_pt2(torch.export.load(d / "model.pt2"), d / "legacy.pt2")
    shutil.copy(d / "model.torchscript.pt", d / "x.onnx")
    shutil.copy(d / "model.onnx", d / "x.pt")
    torch.save(one.state_dict(), d / "weights.pt")
    torch.save(one.state_dict(), d / "legacy.pt", _use_new_zipfile_serialization=False)
    for name in ("model.torchscript.pt", "model.onnx", "model.pt2"):
        data = (d / name).read_bytes()
        (d / f"truncated-{name}").write_bytes(data[:len(data) // 2])
    (d / "notes.txt").write_text("hello world\nsecond line\n")
    (d / "empty.onnx").write_bytes(b"")
    from PIL import Image
    Image.new("RGB", (4, 4)).save(d / "image.png")
    with zipfile.ZipFile(d / "other.zip", "w") as z:
        z.writestr("hello.txt", "hi")
    return {p.name: p for p in d.iterdir()} | {"one": one, "two": two, "dir": d}


def test_the_kinds_their_suffixes_and_packages():
    assert {k.name: (k.suffix, k.needs) for k in exported.KINDS.values()} == {
        "torchscript": (".torchscript.pt", "torch"), "onnx": (".onnx", "onnxruntime"), "torch.export": (".pt2", "torch")}


def test_the_pt2_markers_are_torchs_own():
    from torch._C._export import pt2_archive_constants as c

    assert (exported.PT2_FORMAT_PATH, exported.PT2_FORMAT_VALUE.decode()) == (c.ARCHIVE_FORMAT_PATH, c.ARCHIVE_FORMAT_VALUE)
    assert c.MODELS_FILENAME_FORMAT.format("model") == exported.PT2_MODEL_PATH
    assert exported.PT2_AOTINDUCTOR_DIR == c.AOTINDUCTOR_DIR


@pytest.mark.parametrize("name, kind", [("model.torchscript.pt", "torchscript"), ("x.onnx", "torchscript"),
                                        ("model.onnx", "onnx"), ("x.pt", "onnx"), ("two.onnx", "onnx"),
                                        ("model.pt2", "torch.export"), ("two.pt2", "torch.export"),
                                        ("static.pt2", "torch.export"), ("legacy.pt2", "torch.export")])
def test_identify_reads_the_content_not_the_name(made, name, kind):
    assert exported.identify(made[name]) == kind


def refusal(path):
    with pytest.raises(ExportedModelError) as caught:
        exported.identify(path)
    assert caught.value.exit_code == USER_ERROR
    return caught.value


@pytest.mark.parametrize("name, form", [("weights.pt", "torch.save's zip format: data.pkl and no TorchScript code/"),
                                        ("legacy.pt", "torch.save's legacy format")])
def test_a_checkpoint_is_refused_with_the_import_command(made, name, form):
    error = refusal(made[name])
    assert error.message == f"{made[name]}: this is a torch.save checkpoint of weights ({form}), not an exported model"
    assert error.hint == f"import a checkpoint of weights with its model definition: {IMPORT}"


def test_the_import_hint_names_the_makefiles_variables_and_the_clis_flag():
    target = re.search(r"^import:.*?(?=^\S)", (ROOT / "Makefile").read_text(), re.M | re.S).group(0)
    assert all(f"$({v})" in target for v in ("NAME", "VERSION", "CHECKPOINT", "IMPORT_ARGS"))
    assert 'add_argument("--model-def"' in (ROOT / "marforge" / "cli" / "imports.py").read_text()


@pytest.mark.parametrize("name, what", [
    ("notes.txt", "text (24 bytes) starting 'hello world'"),
    ("empty.onnx", "an empty file"),
    ("other.zip", "a zip archive of 1 file(s) (hello.txt) and no model in a format known here"),
])
def test_anything_else_is_refused_saying_what_it_is(made, name, what):
    assert refusal(made[name]).message == f"{made[name]}: not an exported model: it is {what}; {ACCEPTED}"


def test_an_image_and_a_missing_file_are_refused(made):
    png = made["image.png"]
    assert refusal(png).message == f"{png}: not an exported model: it is a PNG image ({png.stat().st_size} bytes); {ACCEPTED}"
    missing = made["dir"] / "nothing.onnx"
    error = refusal(missing)
    assert (error.message, error.hint) == (f"{missing}: not an exported model: it is not a readable file "
                                           f"(No such file or directory); {ACCEPTED}", "pass the exported model's path")


@pytest.mark.parametrize("name, phrase", [
    ("truncated-model.torchscript.pt", "a truncated or damaged zip file ({size} bytes, begun like a torchscript file: "),
    ("truncated-model.pt2", "a truncated or damaged zip file ({size} bytes, begun like a torch.export file: "),
    ("truncated-model.onnx",
     "{size} bytes that begin like an ONNX model, truncated or damaged: it does not parse as ONNX (DecodeError: "),
])
def test_a_truncated_file_of_each_kind_is_refused(made, name, phrase):
    error = refusal(made[name])
    assert error.message.startswith(f"{made[name]}: not an exported model: it is {phrase.format(size=made[name].stat().st_size)}")
    assert error.message.endswith(ACCEPTED) and error.hint == "copy or export the model again"


@pytest.mark.parametrize("name", ["model.torchscript.pt", "model.onnx", "x.pt", "model.pt2", "legacy.pt2"])
def test_load_answers_like_the_source_model(made, name):
    model, x = exported.load(made[name]), torch.randn(2, 1, 4, 4)
    with torch.no_grad():
        assert torch.allclose(model(x), made["one"](x), atol=1e-5, rtol=0)


@pytest.mark.parametrize("name", ["model.pt2", "model.onnx"])
def test_a_dynamic_batch_runs_at_batch_1_and_3(made, name):
    model = exported.load(made[name])
    for batch in (1, 3):
        x = torch.randn(batch, 1, 4, 4)
        with torch.no_grad():
            assert model(x).shape == (batch, 3) and torch.allclose(model(x), made["one"](x), atol=1e-5, rtol=0)


@pytest.mark.parametrize("name", ["two.onnx", "two.pt2"])
def test_two_inputs_in_two_outputs_out(made, name):
    image, extra = torch.randn(3, 1, 4, 4), torch.randn(3, 5)
    with torch.no_grad():
        got, want = exported.load(made[name])(image, extra), made["two"](image, extra)
    assert isinstance(got, tuple) and len(got) == 2
    assert all(torch.allclose(g, w, atol=1e-5, rtol=0) for g, w in zip(got, want))


def test_a_failed_load_names_the_file_the_kind_and_the_error(made):
    with pytest.raises(ExportedModelError) as caught:
        exported.load(made["x.onnx"], "onnx")  # TorchScript content
    assert caught.value.message.startswith(f"{made['x.onnx']}: cannot load this onnx model: ")
    assert caught.value.hint == "check that the file is complete, or write it again with torch.onnx.export"
    with pytest.raises(ExportedModelError, match="unknown exported-model kind 'keras'"):
        exported.load(made["model.onnx"], "keras")


def test_describe_onnx(made):
    facts = exported.describe(made["model.onnx"])
    assert json.loads(json.dumps(facts)) == facts
    assert facts == {"kind": "onnx", "file": "model.onnx", "size": made["model.onnx"].stat().st_size,
                     "sha256": files.sha256(made["model.onnx"]),
                     "inputs": [{"name": "input", "shape": ["batch", 1, 4, 4], "dtype": "float32"}],
                     "outputs": [{"name": "output", "shape": ["batch", 3], "dtype": "float32"}],
                     "producer": {"name": "pytorch", "version": torch.__version__.split("+")[0], "ir_version": 8},
                     "opsets": {"ai.onnx": 17}}


def test_describe_torch_export(made):
    facts = exported.describe(made["model.pt2"])
    assert json.loads(json.dumps(facts)) == facts
    [value] = facts["inputs"]
    batch = value["shape"][0]
    assert (value["name"], value["shape"][1:], value["dtype"], facts["kind"]) == ("input", [1, 4, 4], "float32", "torch.export")
    assert facts["dims"] == {batch: {"min": 1, "max": 64}}
    assert facts["outputs"] == [{"name": "linear", "shape": [batch, 3], "dtype": "float32"}]
    assert facts["producer"]["torch_version"] == torch.__version__
    assert exported.describe(made["static.pt2"])["inputs"] == [{"name": "input", "shape": [2, 1, 4, 4], "dtype": "float32"}]


def test_describe_torchscript(made):
    facts = exported.describe(made["model.torchscript.pt"])
    assert json.loads(json.dumps(facts)) == facts
    assert facts["inputs"] == [{"name": "input", "shape": None, "dtype": None, "type": "Tensor"}]
    assert facts["outputs"] == [{"name": "output0", "shape": None, "dtype": None, "type": "Tensor"}]
    schema = re.sub(r"___torch_mangle_\d+\.", "", facts["schema"])  # TorchScript renames a class scripted twice in a process
    assert schema == "forward(__torch__.torch.nn.modules.container.Sequential self, Tensor input) -> Tensor"
    assert (facts["kind"], facts["size"]) == ("torchscript", made["model.torchscript.pt"].stat().st_size)


@pytest.mark.parametrize("name, batch", [("model.onnx", 2), ("model.onnx", 5), ("model.pt2", 3), ("model.pt2", 64)])
def test_example_inputs_take_the_batch_size(made, name, batch):
    [x] = exported.example_inputs(made[name], batch=batch)
    assert (x.shape, x.dtype, x.abs().sum().item()) == ((batch, 1, 4, 4), torch.float32, 0.0)
    assert exported.load(made[name])(x).shape == (batch, 3)


def test_example_inputs_of_two_inputs(made):
    assert [tuple(t.shape) for t in exported.example_inputs(made["two.onnx"], batch=3)] == [(3, 1, 4, 4), (3, 5)]


def test_example_inputs_refuse_what_the_model_cannot_take(made):
    with pytest.raises(ExportedModelError) as caught:
        exported.example_inputs(made["model.torchscript.pt"])
    assert caught.value.message == f"{made['model.torchscript.pt']}: the torchscript file does not record the shape of input 'input'"
    assert caught.value.hint == "pass one sample's input shape, e.g. --input-shape 1,28,28"
    with pytest.raises(ExportedModelError, match="has a fixed batch size of 2, not 3"):
        exported.example_inputs(made["static.pt2"], batch=3)
    with pytest.raises(ExportedModelError, match="batch size 65 is outside the exported range"):
        exported.example_inputs(made["model.pt2"], batch=65)
    with pytest.raises(ExportedModelError, match="an input shape sets one input, and this model takes 2"):
        exported.example_inputs(made["two.pt2"], shape=(1, 4, 4))


def test_a_given_shape_makes_torchscripts_inputs(made):
    [x] = exported.example_inputs(made["model.torchscript.pt"], batch=3, shape=(1, 4, 4))
    assert x.shape == (3, 1, 4, 4) and exported.load(made["model.torchscript.pt"])(x).shape == (3, 3)
