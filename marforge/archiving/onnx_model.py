"""ONNX files through the onnx and onnxruntime packages: whether a file is a usable ModelProto, what its
graph takes and returns, and an onnxruntime CPU session as a callable on torch tensors (exported.py
uses all three for a version whose source is an ONNX model)."""

from pathlib import Path
from typing import Any


def problem(path: str | Path) -> str | None:
    """None when `path` holds an ONNX ModelProto with an ir_version and a graph with nodes, inputs and
    outputs; else what is wrong, in words."""
    import onnx

    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # protobuf's DecodeError, and whatever a damaged file makes onnx raise
        return f"it does not parse as ONNX ({type(exc).__name__}: {str(exc)[:120]})"
    missing = [what for what, ok in (("an ir_version", model.ir_version > 0), ("graph nodes", len(model.graph.node) > 0),
                                     ("graph inputs", len(_inputs(model)) > 0),
                                     ("graph outputs", len(model.graph.output) > 0)) if not ok]
    return f"a protobuf that parses as ONNX but has no {', '.join(missing)}" if missing else None


def _inputs(model: Any) -> list[Any]:
    """The graph's real inputs (older exporters also list initializers, the weights, as inputs)."""
    weights = {w.name for w in model.graph.initializer}
    return [v for v in model.graph.input if v.name not in weights]


def describe(path: str | Path) -> dict[str, Any]:
    """The graph's inputs and outputs as (name, shape, dtype) triples (a dimension is an int, its
    dim_param name, or None; the dtype by numpy's name, None when not a tensor), the producer and opsets."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)

    def value(v: Any) -> tuple[str, list[Any] | None, str | None]:
        t = v.type.tensor_type
        tensor = v.type.HasField("tensor_type")
        shape = [d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in t.shape.dim] \
            if tensor and t.HasField("shape") else None
        try:
            dtype = onnx.helper.tensor_dtype_to_np_dtype(t.elem_type).name if tensor and t.elem_type else None
        except (KeyError, ValueError):
            dtype = onnx.TensorProto.DataType.Name(t.elem_type).lower()
        return v.name, shape, dtype

    return {"inputs": [value(v) for v in _inputs(model)], "outputs": [value(v) for v in model.graph.output],
            "producer": {"name": model.producer_name, "version": model.producer_version, "ir_version": model.ir_version},
            "opsets": {o.domain or "ai.onnx": o.version for o in model.opset_import}}


class OnnxSession:
    """An ONNX model on onnxruntime's CPU provider as a callable: tensors in, by position in the
    session's input order; a tensor out (one output) or a tuple of tensors."""

    def __init__(self, path: str | Path) -> None:
        import onnxruntime

        self.path = Path(path)
        self.session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        self.input_names = [i.name for i in self.session.get_inputs()]

    def __call__(self, *tensors: Any) -> Any:
        import torch

        if len(tensors) != len(self.input_names):
            raise TypeError(f"{self.path}: the model takes {len(self.input_names)} input(s) "
                            f"({', '.join(self.input_names)}), got {len(tensors)}")
        feed = {name: t.detach().cpu().numpy() for name, t in zip(self.input_names, tensors)}
        outputs = tuple(torch.from_numpy(o) for o in self.session.run(None, feed))
        return outputs[0] if len(outputs) == 1 else outputs
