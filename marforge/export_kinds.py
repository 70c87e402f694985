"""The kinds of exported model marforge takes as a version's source: each one's name, the suffix its
file is kept under in weights/, the package that loads it, what writes it and the archive format it
is served as. The registry reads them (standard library only); archiving/exported.py recognises,
loads and describes the files.
"""

from dataclasses import dataclass

TORCHSCRIPT, ONNX, TORCH_EXPORT = "torchscript", "onnx", "torch.export"


@dataclass(frozen=True)
class Kind:
    name: str
    suffix: str  # marforge stores the file as <name>-<version><suffix>
    needs: str  # the package that loads it
    saved_by: str  # what writes it
    format: str  # the archive format (handlers/contract.py FORMATS) it is served as, as it is


KINDS = {kind.name: kind for kind in (Kind(TORCHSCRIPT, ".torchscript.pt", "torch", "torch.jit.save", "torchscript"),
                                       Kind(ONNX, ".onnx", "onnxruntime", "torch.onnx.export", "onnx"),
                                       Kind(TORCH_EXPORT, ".pt2", "torch", "torch.export.save", "export"))}
