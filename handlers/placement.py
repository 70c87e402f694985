"""Where marforge's image handler runs a model: CUDA device or CPU, half precision, pinned memory.

Shipped flat beside `image_handler.py` in every archive and imported as a top-level module, like
`image_io`. `decide` is a pure function of what a worker knows at load time (the gpu_id TorchServe
assigned it, whether CUDA is available, the archive's format, the `handler:` config); `to_device`
moves one stacked CPU batch to the chosen device. Rules:

- CUDA only when CUDA is available AND TorchServe assigned a gpu_id (BaseHandler's own rule), on
  `cuda:<gpu_id>`; otherwise the CPU.
- `half_precision`, `pin_memory`, `channels_last` and `gpu_decode` apply only on CUDA; on the CPU
  they are ignored (float16 matmuls and convolutions there are slow or missing, pinning only speeds
  up copies to a GPU, and JPEGs are decoded by Pillow).
- A `cudagraphs` archive (torch.compile's reduce-overhead mode, which replays a CUDA graph per batch
  shape) gets its batches padded to a few shapes (`batch_buckets`, `pad`), so that a handful of
  graphs cover every batch.
- A `quantized` archive (dynamic int8, whose kernels exist only for the CPU) always runs on the CPU.
- An `onnx` archive runs in an onnxruntime session (on a GPU worker, the CUDA provider on that
  worker's GPU, when onnxruntime-gpu is installed), fed float32 numpy from the CPU: no half
  precision, no pinning. `onnx_session` opens it with the worker's share of the cores, not
  BaseHandler's all of them.
- A TorchScript model (torchscript and quantized archives) on the CPU is frozen and rewritten for
  it by `for_cpu` when the worker loads it; the archive itself stays portable to a GPU.
"""

from dataclasses import dataclass, field

import torch

CPU_ONLY_FORMATS = {"quantized"}  # dynamic int8: quantized Linear kernels exist only for the CPU
NUMPY_FORMATS = {"onnx"}  # onnxruntime takes float32 numpy arrays and copies them itself
EXPORTED_FORMATS = {"export"}  # a torch.export graph: its dtypes were fixed when it was exported


@dataclass(frozen=True)
class Placement:
    """What `decide` chose; `notes` are the lines the handler logs to explain a choice."""

    device: torch.device
    half: bool = False  # model and inputs in float16
    pin: bool = False  # copy each batch through pinned host memory, asynchronously
    cpu_only: bool = False  # the format cannot run on a GPU, even an assigned one
    notes: tuple = field(default=())
    channels_last: bool = False  # model and inputs in channels-last memory order
    gpu_decode: bool = False  # JPEG bodies decoded on the device (image_io.gpu_view)
    pad_to: tuple = ()  # batch sizes a batch is padded up to (CUDA graphs are captured per batch shape)


def decide(gpu_id, cuda_available, fmt, config, batch_size=1):
    """The Placement for a worker with `gpu_id` (None: none assigned) serving a `fmt` archive in
    batches of up to `batch_size` requests.

    `config` is the handler's HandlerConfig (its GPU options and crops are read).
    """
    if fmt in CPU_ONLY_FORMATS:
        note = (f"{fmt} archive: runs on the CPU although GPU {gpu_id} is assigned (its int8 kernels are CPU-only)"
                if gpu_id is not None and cuda_available else None)
        return _on_cpu(config, cpu_only=True, extra=note)
    if not cuda_available or gpu_id is None:
        return _on_cpu(config)
    device = torch.device(f"cuda:{gpu_id}")
    if fmt in NUMPY_FORMATS:
        ignored = [f"{fmt} archive: {flag} ignored (onnxruntime is fed float32 numpy)"
                   for flag in ("half_precision", "channels_last", "gpu_decode") if getattr(config, flag)]
        return Placement(device, notes=tuple(ignored))
    if fmt in EXPORTED_FORMATS and config.half_precision:
        note = f"{fmt} archive: half_precision ignored (the exported graph's dtypes were fixed at export)"
        return Placement(device, pin=config.pin_memory, gpu_decode=config.gpu_decode, notes=(note,))
    return Placement(device, half=config.half_precision, pin=config.pin_memory, channels_last=config.channels_last,
                     gpu_decode=config.gpu_decode,
                     pad_to=batch_buckets(config, batch_size) if fmt in GRAPH_FORMATS else ())


GRAPH_FORMATS = {"cudagraphs"}  # replayed CUDA graphs: one per batch shape, so batches are padded to few shapes


def batch_buckets(config, batch_size=64):
    """The batch shapes a CUDA-graph model is captured for: powers of two up to `batch_size` views."""
    sizes, size = [], 1
    while size < batch_size * config.crops:
        sizes.append(size)
        size *= 2
    return tuple(sizes + [batch_size * config.crops])


def pad(batch, sizes):
    """`batch` padded with zero rows up to the smallest of `sizes` that holds it; (padded, its real rows)."""
    rows = batch.shape[0]
    target = next((s for s in sizes if s >= rows), rows)
    if target == rows:
        return batch, rows
    return torch.cat([batch, batch.new_zeros((target - rows, *batch.shape[1:]))]), rows


def _on_cpu(config, cpu_only=False, extra=None):
    notes = (extra,) if extra else ()
    if config.half_precision:  # pin_memory is on by default and means nothing off a GPU: not worth a line
        notes += ("half_precision ignored on the CPU: float16 is slow or unsupported there; running float32",)
    if config.channels_last:
        notes += ("channels_last ignored on the CPU",)
    if config.gpu_decode:
        notes += ("gpu_decode ignored on the CPU: images are decoded by Pillow",)
    return Placement(torch.device("cpu"), cpu_only=cpu_only, notes=notes)


def to_device(batch, placement):
    """Move a stacked CPU float32 batch to `placement.device` (float16 there when `placement.half`).

    With `placement.pin` the batch is copied into page-locked memory so that the copy to the GPU can
    run asynchronously (non_blocking); the cast to float16 happens after the copy, on the device, so
    that it is the pinned float32 tensor that is copied. On the CPU the batch is returned as it is.
    """
    if placement.device.type == "cpu":
        return batch
    if placement.pin and not batch.is_cuda:  # views decoded on the GPU are there already
        batch = batch.pin_memory().to(placement.device, non_blocking=True)
    else:
        batch = batch.to(placement.device)
    if placement.channels_last:
        batch = batch.contiguous(memory_format=torch.channels_last)
    return batch.half() if placement.half else batch


def onnx_providers(device):
    """onnxruntime's execution providers for a worker placed on `device`: on `cuda:<n>` the CUDA
    provider on GPU n (BaseHandler's session puts every worker on GPU 0), then the CPU."""
    if device.type == "cuda":
        return [("CUDAExecutionProvider", {"device_id": device.index or 0}), "CPUExecutionProvider"]
    return ["CPUExecutionProvider"]


def onnx_session(path, device):
    """An onnxruntime session for `path` on `device` that uses the worker's share of the cores.

    BaseHandler sizes onnxruntime's thread pool to every logical core, in every worker: with one
    worker per core they fight over the cores as PyTorch's own default does. torch.get_num_threads() follows
    OMP_NUM_THREADS, which marforge sets to each worker's share. onnxruntime without its CUDA
    provider (the `onnxruntime` package, not `onnxruntime-gpu`) falls back to the CPU with a
    warning; `session.get_providers()` says which providers it really uses.
    """
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads()
    options.inter_op_num_threads = 1
    return onnxruntime.InferenceSession(str(path), sess_options=options, providers=onnx_providers(device))


def for_cpu(model):
    """A TorchScript model frozen and rewritten for CPU inference (torch.jit.optimize_for_inference:
    folded constants, fused conv + relu, oneDNN convolutions and linears).

    Done at load time, not at archive time, because the rewritten graph runs only on the CPU; archive
    verification compares the rewritten model's answers with the eager model's, and `make
    bench-formats` measures what it buys.
    """
    return torch.jit.optimize_for_inference(torch.jit.freeze(model.eval()))
