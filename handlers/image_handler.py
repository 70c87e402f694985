"""The one TorchServe handler for every image classifier marforge serves.

Configured per archive by the `handler:` section of its model-config.yaml (image size, grayscale or
RGB, mean/std, labels, top-k, pixel limit); model loading and device choice stay in BaseHandler,
which also opens a `.onnx` serialized file as an onnxruntime InferenceSession: then the inputs are
fed to it as numpy instead of calling a module.
Each request of a batch is answered on its own: a bad image gets a 4xx JSON error for that request
only, while the others of the batch are still predicted, and the worker keeps running.

Answer:  {"model": "fashion", "version": "2.0",
          "predictions": [{"label": "Ankle boot", "index": 9, "probability": 0.97}, ...]}
Error:   {"code": 400, "type": "InvalidImage", "message": "...", "model": ..., "version": ...}

The file is not called image_classifier.py on purpose: when a handler fails to import, TorchServe
tries `ts.torch_handler.<same name>`, and would silently serve its own ImageClassifier instead.
"""

import torch
from ts.torch_handler.base_handler import BaseHandler

import image_io


class ImageClassifier(BaseHandler):
    def initialize(self, context):
        self.config = image_io.HandlerConfig.from_dict((context.model_yaml_config or {}).get("handler"))
        super().initialize(context)
        # BaseHandler's rule: a .onnx serialized file is served by an onnxruntime InferenceSession
        self.onnx_input = self.model.get_inputs()[0].name if (self.model_pt_path or "").endswith(".onnx") else None
        self.identity = {"model": context.model_name, "version": context.manifest["model"]["modelVersion"]}

    def preprocess(self, data):
        """Decode every request; returns (stacked inputs of the good ones, one slot per request).

        A slot holds the row of the good request in the stacked tensor, or the BadInput that
        explains why that request cannot be answered.
        """
        tensors, slots = [], []
        for row in data:
            try:
                tensors.append(image_io.prepare(row, self.config))
                slots.append(len(tensors) - 1)
            except image_io.BadInput as error:
                slots.append(error)
        return (torch.stack(tensors) if tensors else None), slots

    def inference(self, data, *args, **kwargs):
        """Class probabilities for the good requests (softmax also turns log-probabilities into probabilities)."""
        inputs, slots = data
        if inputs is None:
            return None, slots
        if self.onnx_input is not None:
            outputs = torch.from_numpy(self.model.run(None, {self.onnx_input: inputs.numpy()})[0])
        else:
            with torch.inference_mode():
                outputs = self.model(inputs.to(self.device), *args, **kwargs)
        return torch.softmax(outputs.float(), dim=1).cpu(), slots

    def postprocess(self, data):
        """One JSON answer per request, in request order, with a per-request HTTP status."""
        probabilities, slots = data
        answers = []
        for idx, slot in enumerate(slots):
            self.context.set_response_content_type(idx, "application/json")
            if isinstance(slot, image_io.BadInput):
                self.context.set_response_status(slot.code, slot.kind, idx)
                answers.append({**slot.as_dict(), **self.identity})
            else:
                answers.append({**self.identity, "predictions": image_io.top_k(probabilities[slot], self.config)})
        return answers
