"""The one TorchServe handler for every image classifier marforge serves.

Configured per archive by the `handler:` section of its model-config.yaml (image size, grayscale or
RGB, mean/std, labels, top-k, pixel limit, half precision, pinned memory); model loading stays in
BaseHandler, which also opens a `.onnx` serialized file as an onnxruntime InferenceSession: then the
inputs are fed to it as numpy instead of calling a module. `placement.decide` picks the device
(TorchServe's GPU for the worker, else the CPU; always the CPU for a quantized archive) and whether
to use float16 and pinned memory; the model and each batch go there, the answers come back as CPU
float32.
Each request of a batch is answered on its own: a bad image gets a 4xx JSON error for that request
only, while the others of the batch are still predicted, and the worker keeps running.

Answer:  {"model": "fashion", "version": "2.0",
          "predictions": [{"label": "Ankle boot", "index": 9, "probability": 0.97}, ...]}
Error:   {"code": 400, "type": "InvalidImage", "message": "...", "model": ..., "version": ...}

The file is not called image_classifier.py on purpose: when a handler fails to import, TorchServe
tries `ts.torch_handler.<same name>`, and would silently serve its own ImageClassifier instead.
"""

import json
import logging

import torch
from ts.torch_handler.base_handler import BaseHandler

import image_io
import placement

logger = logging.getLogger(__name__)
# TorchServe's worker logs this line for every batch (ts/protocol/otf_message_handler.py); writing it,
# and the frontend reading it back into model_log.log, cost ~3% of a busy worker and say nothing
# that the PredictionTime metric and the access log do not.
PER_BATCH_LINE = "Backend received inference at: %d"


def _not_per_batch_chatter(record):
    """Root-logger filter: drop TorchServe's per-batch line, keep everything else."""
    return record.msg != PER_BATCH_LINE


class ImageClassifier(BaseHandler):
    def initialize(self, context):
        self.config = image_io.HandlerConfig.from_dict((context.model_yaml_config or {}).get("handler"))
        self.placement = placement.decide(context.system_properties.get("gpu_id"), torch.cuda.is_available(),
                                          placement.archive_format(context.model_yaml_config), self.config)
        for note in self.placement.notes:
            logger.info(note)
        self._load(context)
        if self.device != self.placement.device:  # BaseHandler's MPS/XPU/XLA devices: used as they are
            self.placement = placement.Placement(self.device)
        if self.placement.half:
            self.model.half()
        if isinstance(self.model, torch.jit.ScriptModule) and self.placement.device.type == "cpu":
            self.model = placement.for_cpu(self.model)
        logger.info("model on %s, half precision %s, pinned memory %s",
                    self.placement.device, self.placement.half, self.placement.pin)
        self.onnx_input = None
        if (self.model_pt_path or "").endswith(".onnx"):  # BaseHandler opened an onnxruntime InferenceSession
            self.model = placement.onnx_session(self.model_pt_path, self.placement.device)
            self.onnx_input = self.model.get_inputs()[0].name
            if self.placement.device.type == "cuda" and "CUDAExecutionProvider" not in self.model.get_providers():
                logger.warning("onnxruntime has no CUDA provider here: %s runs on the CPU "
                               "(pip install onnxruntime-gpu to run it on %s)", self.model_pt_path, self.placement.device)
        logging.getLogger().addFilter(_not_per_batch_chatter)
        self.identity = {"model": context.model_name, "version": context.manifest["model"]["modelVersion"]}

    def _load(self, context):
        """BaseHandler's initialize, with the worker's gpu_id hidden from it for a CPU-only format.

        BaseHandler picks cuda:<gpu_id> whenever CUDA is available and a gpu_id is assigned, and loads
        the model there (map_location, model.to). Without a gpu_id its own rule gives the CPU, and
        self.device, map_location and the load all follow from that one value; it is put back once
        the model is loaded, so the context still says which GPU TorchServe assigned.
        """
        properties = context.system_properties
        gpu_id = properties.get("gpu_id")
        if not self.placement.cpu_only or gpu_id is None:
            return super().initialize(context)
        properties["gpu_id"] = None
        try:
            super().initialize(context)
        finally:
            properties["gpu_id"] = gpu_id

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
                outputs = self.model(placement.to_device(inputs, self.placement), *args, **kwargs)
        return torch.softmax(outputs.float(), dim=1).cpu(), slots

    def postprocess(self, data):
        """One JSON answer per request, in request order, with a per-request HTTP status.

        Answers are encoded here (compact, by json's C encoder): handed a dict, TorchServe encodes
        it with indent=2, which runs the pure-Python encoder, ~7% of a worker's CPU at 64 clients.
        """
        probabilities, slots = data
        answers = []
        for idx, slot in enumerate(slots):
            self.context.set_response_content_type(idx, "application/json")
            if isinstance(slot, image_io.BadInput):
                self.context.set_response_status(slot.code, slot.kind, idx)
                answer = {**slot.as_dict(), **self.identity}
            else:
                answer = {**self.identity, "predictions": image_io.top_k(probabilities[slot], self.config)}
            answers.append(json.dumps(answer).encode())
        return answers
