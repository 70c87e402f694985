"""Explanations for marforge's image handler: where in the image the model looked for a label.

Shipped flat beside `image_handler.py` in every archive and imported as a top-level module. For a
model with convolutional feature maps it computes Grad-CAM on the last module whose output is a
4-D feature map (found by running the model once and watching its modules): the feature map
weighted by the spatially averaged gradient of the label's score, summed over channels, ReLU'd,
scaled to [0, 1], at the feature map's resolution. A model with no 4-D feature map (a fully
connected network) gets a gradient saliency map instead: the largest absolute gradient of the
label's score over the input's channels, at the input's resolution. The score is the model's
output before its activation: its logit or log-probability, or, for a model that ends in a
probability, that probability's logit (so that a saturated sigmoid still has a gradient).

Explanations need gradients, so they run on the eager PyTorch model: the archive's own, or for a
TorchScript, ONNX or int8 archive the eager model file and weights it carries for that
(contract.eager_files). Nothing here knows about TorchServe.
"""

import torch


class Explainer:
    """Grad-CAM (or gradient saliency) for one eager model on one device."""

    def __init__(self, model, example):
        """`model`: the eager model in float32 and eval mode; `example`: an input batch like the handler's."""
        self.model = model
        self.layer_name, self.layer = _last_feature_map(self.model, example)
        self.method = "grad-cam" if self.layer is not None else "saliency"

    def maps(self, inputs, targets, probabilities_out):
        """Heatmaps for one image: `inputs` is its 1 x C x H x W view, `targets` the label indexes to
        explain; `probabilities_out` says the model already outputs probabilities. Returns one list
        of rows (h x w floats in [0, 1]) per target."""
        captured = {}
        inputs = inputs.detach().float().requires_grad_(self.method == "saliency")
        handle = None
        if self.layer is not None:
            handle = self.layer.register_forward_hook(lambda module, args, output: captured.update(map=output))
        try:
            with torch.enable_grad():
                outputs = self.model(inputs).float()
                if probabilities_out:
                    outputs = torch.logit(outputs.clamp(1e-6, 1 - 1e-6))
                return [self._one(outputs[0, t], captured.get("map"), inputs) for t in targets]
        finally:
            if handle is not None:
                handle.remove()

    def _one(self, score, feature_map, inputs):
        if feature_map is not None:
            [grads] = torch.autograd.grad(score, feature_map, retain_graph=True)
            cam = torch.relu((grads.mean(dim=(2, 3), keepdim=True) * feature_map).sum(dim=1))[0]
        else:
            [grads] = torch.autograd.grad(score, inputs, retain_graph=True)
            cam = grads.abs().amax(dim=1)[0]
        cam = cam.detach()
        peak = float(cam.max())
        cam = cam / peak if peak > 0 else cam
        return [[round(v, 4) for v in row] for row in cam.detach().cpu().tolist()]


def _last_feature_map(model, example):
    """(name, module) of the last module to finish with a 4-D output on `example`, or (None, None)."""
    finished = []
    names = {module: name for name, module in model.named_modules() if name}
    hooks = [module.register_forward_hook(lambda m, a, out: finished.append(m) if torch.is_tensor(out)
                                          and out.dim() == 4 else None) for module in names]
    try:
        with torch.no_grad():
            model(example)
    finally:
        for hook in hooks:
            hook.remove()
    if not finished:
        return None, None
    return names[finished[-1]], finished[-1]


def load_eager(model_dir, files, device):
    """The eager model an archive carries (`files`: model file name, weights file name, as
    contract.eager_files gives them), built as BaseHandler builds one, in float32 on `device`."""
    import importlib.util
    import inspect
    import os

    model_file, weights = files
    spec = importlib.util.spec_from_file_location(f"explain_{os.path.splitext(model_file)[0]}",
                                                  os.path.join(model_dir, model_file))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    [model_class] = [c for _, c in inspect.getmembers(module, inspect.isclass)
                     if c.__module__ == module.__name__ and issubclass(c, torch.nn.Module)]
    model = model_class()
    model.load_state_dict(torch.load(os.path.join(model_dir, weights), map_location=device, weights_only=True))
    return model.to(device).float().eval()
