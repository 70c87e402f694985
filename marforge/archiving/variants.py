"""Archive formats: what each one serializes, what the archiver gets, and how closely it must agree.

One version's weights can be archived in seven formats (`formats()`, the contract's list); the
handler, its `handler:` config and the verification are the same for all of them (archive.py,
verify.py). `prepare` writes the serialized file of one format into a work dir and says how to
archive it:

- eager:       the model file and the state_dict; TorchServe builds the class and loads the weights.
- torchscript: the eval-mode model traced on an example input (scripted, for a detector or a
               segmenter); no model file, so BaseHandler uses torch.jit.load.
- onnx:        exported with a dynamic batch dimension; BaseHandler opens an onnxruntime
               InferenceSession for a `.onnx` file and the handler feeds it numpy.
- compile:     the eager archive plus `pt2: {compile: {enable: true, backend: inductor}}` in
               model-config.yaml; BaseHandler wraps the model in torch.compile, which compiles on the
               first batch of each new shape. BaseHandler only warns when torch.compile fails, so
               `compile_outcome` checks that inductor really compiled the worker's model.
- quantized:   the nn.Linear layers dynamically quantized to int8, then traced like torchscript.
- cudagraphs:  compile in torch.compile's reduce-overhead mode: on a GPU it records a CUDA graph per
               batch shape and replays it (the handler pads batches to a few shapes); on a CPU it
               compiles like compile.
- export:      a torch.export program (torch.export.save) with a dynamic batch dimension, the successor
               of TorchScript; no model file: the handler loads it with torch.export.load (handlers/programs.py).

The archive records its format with the contract's stamp (handlers/contract.py) so that it can be
verified later with the right tolerance, and so that a worker places it right. An archive whose
serialized file is not the eager model (torchscript, onnx, quantized) also carries the model file
and the weights, named in the stamp, for explanations, which need the eager model's gradients.
"""

import shutil
from dataclasses import dataclass, field
from pathlib import Path

from marforge import shipped
from marforge.archiving.weights import source_model
from marforge.errors import ArchiveError

ONNX_OPSET = 17
# Formats `make bench` and `bench --compare-formats` serve by default, per machine. compile is one of
# them since the worker's warm-up compiles every batch shape before the worker reports ready (its
# first requests are not stalled: docs/performance.md, bench-formats). On a GPU, not ONNX
# (onnxruntime-gpu is not installed: it would run on the CPU) nor int8 (CPU kernels only).
BENCH_FORMATS = {"cpu": ("eager", "torchscript", "onnx", "quantized", "compile"),
                 "gpu": ("eager", "torchscript", "compile", "cudagraphs")}


def formats():
    """Every archive format, in the contract's order."""
    return shipped.contract().FORMATS


@dataclass(frozen=True)
class Tolerance:
    """How far an archive's answers may be from the eager source model's on the same images."""

    value: float  # largest difference in the numbers answers carry (a classifier's probabilities, a detector's scores)
    agreement: float  # share of images on which the archive must make the source model's decision


TOLERANCES = {
    # Same code and weights as the source model: only the batch composition differs.
    "eager": Tolerance(1e-5, 1.0),
    # Other kernels and operation order than eager PyTorch: float32 rounding only.
    "torchscript": Tolerance(1e-4, 1.0),
    "onnx": Tolerance(1e-4, 1.0),
    "compile": Tolerance(1e-4, 1.0),
    "cudagraphs": Tolerance(1e-4, 1.0),  # compile's kernels, replayed
    "export": Tolerance(1e-4, 1.0),  # the traced graph, run by the same kernels as eager, fused differently
    # Dynamic int8 quantization scales each batch's activations by that batch's own range, so an
    # answer also depends on the other requests of its batch. The bounds were set with headroom over
    # the worst difference seen on every reference model's eval set, batched 1 to 300 in order and
    # shuffled (make test prints each build's figures under "measured"); wrong weights (shuffled
    # output rows, say) disagree on most images and fail.
    "quantized": Tolerance(0.1, 0.98),
}


@dataclass(frozen=True)
class Variant:
    """One format's serialized file and what else the archiver and model-config.yaml need."""

    fmt: str
    serialized_file: Path
    model_file: Path | None = None  # None: the serialized file is self-contained (TorchScript, ONNX)
    config: dict = field(default_factory=dict)  # extra model-config.yaml sections
    extra_files: tuple = ()  # carried at the archive's root beside the handler's modules

    def archiver_args(self):
        args = ["--serialized-file", str(self.serialized_file)]
        return args + (["--model-file", str(self.model_file)] if self.model_file else [])


def prepare(mv, fmt, metadata, work_dir):
    """Write `fmt`'s serialized file for version `mv` into `work_dir`; returns its Variant."""
    if fmt not in formats():
        raise ArchiveError(f"unknown archive format {fmt!r} for {mv.key}", f"use one of: {', '.join(formats())}")
    if mv.exported:
        return _as_exported(mv, fmt, Path(work_dir))
    try:
        variant = _BUILDERS[fmt](mv, metadata, Path(work_dir))
    except Exception as exc:  # e.g. onnx missing, or a model the tracer or exporter cannot handle
        raise ArchiveError(f"cannot write the {fmt} model of {mv.key}: {type(exc).__name__}: {exc}",
                           "pip install -r requirements.txt if a module is missing; else try another --format") from None
    eager = None if variant.model_file else (mv.model_def, mv.weights)  # carried for explanations
    stamp = shipped.contract().format_stamp(fmt, eager and (eager[0].name, eager[1].name))
    return Variant(variant.fmt, variant.serialized_file, variant.model_file, {**variant.config, **stamp}, eager or ())


def _as_exported(mv, fmt, work_dir):
    """An exported version's own file, as it is, named as its format is loaded: a torch.export program
    for marforge's handler as <key><contract.EXPORT_SUFFIX> (an own handler gets its .pt2 file's name)."""
    if fmt != mv.format:
        raise ArchiveError(f"{mv.key} is an exported {mv.exported} file: it is archived as it is, in format {mv.format}; "
                           f"{fmt} is built from the Python model definition, which an exported version does not have",
                           f"build it as {mv.format} (the default), or import the model's definition and weights instead")
    contract = shipped.contract()
    name = f"{mv.key}{contract.EXPORT_SUFFIX}" if fmt == "export" and not mv.own_handler else mv.weights.name
    shutil.copyfile(mv.weights, work_dir / name)
    return Variant(fmt, work_dir / name, config=contract.format_stamp(fmt))


def example_input(metadata, batch=2):
    """A zero batch shaped like the handler's inputs: batch x channels x height x width."""
    import torch

    height, width = metadata["preprocess"]["image_size"]
    return torch.zeros(batch, shipped.contract().CHANNELS[metadata["preprocess"]["color"]], height, width)


def _eager(mv, metadata, work_dir):
    return Variant("eager", mv.weights, mv.model_def)


def _compile(mv, metadata, work_dir):
    return Variant("compile", mv.weights, mv.model_def, {"pt2": {"compile": {"enable": True, "backend": "inductor"}}})


def _cudagraphs(mv, metadata, work_dir):
    options = {"enable": True, "backend": "inductor", "mode": "reduce-overhead"}
    return Variant("cudagraphs", mv.weights, mv.model_def, {"pt2": {"compile": options}})


def _traced(model, metadata, path):
    """Trace `model` and save it as TorchScript (deprecated in torch 2.14, still what BaseHandler loads)."""
    import warnings

    import torch

    with warnings.catch_warnings(), torch.no_grad():
        warnings.filterwarnings("ignore", r"`torch\.jit\.\w+` is deprecated", FutureWarning)
        traced = torch.jit.trace(model, example_input(metadata))
        torch.jit.save(traced, str(path))
    return path


def _scripted(model, path):
    """Compile `model` with torch.jit.script and save it: a detector or segmenter, whose inputs (a list of
    images of their own sizes) or control flow a trace of one fixed-size batch would not capture."""
    import warnings

    import torch

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", r"`torch\.jit\.\w+` is deprecated", FutureWarning)
        torch.jit.save(torch.jit.script(model), str(path))
    return path


def _torchscript(mv, metadata, work_dir):
    path = work_dir / f"{mv.key}-torchscript.pt"
    if metadata.get("task") in ("detection", "segmentation"):
        return Variant("torchscript", _scripted(source_model(mv), path))
    return Variant("torchscript", _traced(source_model(mv), metadata, path))


def _quantized(mv, metadata, work_dir):
    import warnings

    import torch
    from torch import nn

    with warnings.catch_warnings():  # torch.ao quantization is deprecated in favour of torchao
        warnings.filterwarnings("ignore", "torch.quantize_per_tensor", UserWarning)
        quantized = torch.ao.quantization.quantize_dynamic(source_model(mv), {nn.Linear}, dtype=torch.qint8)
    return Variant("quantized", _traced(quantized, metadata, work_dir / f"{mv.key}-quantized.pt"))


def _onnx(mv, metadata, work_dir):
    """ONNX through the TorchScript-based exporter (dynamo=False): it needs only the `onnx` package."""
    import warnings

    import torch

    path = work_dir / f"{mv.key}.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # the legacy exporter announces its successor
        torch.onnx.export(source_model(mv), (example_input(metadata),), str(path), dynamo=False,
                          opset_version=ONNX_OPSET, input_names=["input"], output_names=["output"],
                          dynamic_axes={"input": {0: "batch"}, "output": {0: "batch"}})
    return Variant("onnx", path)


def _export(mv, metadata, work_dir):
    """torch.export with the batch dimension dynamic, saved as a .pt2 program."""
    import torch

    path = work_dir / f"{mv.key}{shipped.contract().EXPORT_SUFFIX}"
    batch = torch.export.Dim("batch", min=1, max=EXPORT_MAX_BATCH)
    with torch.no_grad():
        program = torch.export.export(source_model(mv), (example_input(metadata),), dynamic_shapes=({0: batch},))
    torch.export.save(program, str(path.with_suffix(".pt2")))  # torch.export warns about any other suffix
    return Variant("export", path.with_suffix(".pt2").rename(path))


EXPORT_MAX_BATCH = 4096  # the largest batch an exported program accepts (its dynamic dimension's bound)
_BUILDERS = {"eager": _eager, "torchscript": _torchscript, "onnx": _onnx, "compile": _compile, "quantized": _quantized,
             "cudagraphs": _cudagraphs, "export": _export}
COMPILED = {"compile", "cudagraphs"}  # BaseHandler wraps them in torch.compile, and only warns when that fails


def compile_counts():
    """This process's counts so far: (graphs dynamo captured, inductor outputs).

    Inductor outputs are FX graph cache lookups (hit, miss or bypass) plus generated modules loaded:
    the first grows whenever its cache is on, the second on a fresh compile even when it is off.
    """
    from torch._dynamo.utils import counters
    from torch._inductor.codecache import PyCodeCache

    inductor = counters["inductor"]
    lookups = inductor["fxgraph_cache_miss"] + inductor["fxgraph_cache_hit"] + inductor["fxgraph_cache_bypass"]
    return counters["stats"]["unique_graphs"], lookups + len(PyCodeCache.modules)


def compile_outcome(model, before):
    """Check that a worker's model ran through inductor since `compile_counts()` returned `before`.

    Returns the number of graphs dynamo captured (and inductor compiled) for the batches run.
    """
    from torch._dynamo.eval_frame import OptimizedModule

    if not isinstance(model, OptimizedModule):
        raise ArchiveError(f"torch.compile failed when the worker loaded the model (BaseHandler only warns): "
                           f"it runs the eager {type(model).__name__}",
                           "look for 'has failed' in the worker's log, or build --format eager")
    graphs, outputs = (now - then for now, then in zip(compile_counts(), before))
    hint = "check that a C++ compiler (g++) works and TORCHDYNAMO_SUPPRESS_ERRORS is unset"
    if graphs < 1:
        raise ArchiveError("torch.compile fell back to eager: dynamo captured no graph for the batches run", hint)
    if outputs < 1:
        raise ArchiveError(f"torch.compile captured {graphs} graph(s) but inductor produced no code for them", hint)
    return graphs
