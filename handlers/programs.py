"""A torch.export program (torch.export.save's .pt2 file) as a module BaseHandler can hold.

`torch.export.load(path).module()` runs the exported graph, but refuses `.eval()` and `.train()`
("not supported yet"), which BaseHandler calls on every model it loads. `Program` wraps it: eval and
train only set its own flag (the graph was exported in the mode it runs in), `to` moves the graph.
Shipped in every archive beside the handler (a handler module must hold exactly one class).
"""

from typing import Any

import torch


class Program(torch.nn.Module):
    """The exported graph of a torch.export program; called like the module it was exported from."""

    def __init__(self, graph: Any):
        super().__init__()
        object.__setattr__(self, "graph", graph)  # not a submodule: nn.Module.eval would recurse into it

    graph: Any  # the exported GraphModule, set in __init__ and by `to`

    def forward(self, *inputs: Any) -> Any:
        return self.graph(*inputs)

    def train(self, mode: bool = True) -> "Program":
        self.training = mode
        return self

    def to(self, *args: Any, **kwargs: Any) -> "Program":
        object.__setattr__(self, "graph", self.graph.to(*args, **kwargs))
        return self


def load(path: str, map_location: Any = None) -> Program:
    """The program saved at `path` (torch.export.save), its weights on `map_location` (None: as saved)."""
    with open(path, "rb") as file:  # a file object: torch.export warns about a name not ending in .pt2
        program = Program(torch.export.load(file).module())
    return program.to(map_location) if map_location is not None else program
