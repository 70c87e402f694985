"""The one TorchServe handler for every image model marforge serves: classifiers, detectors, segmenters.

Configured per archive by the `handler:` section of its model-config.yaml (task, image size, grayscale
or RGB, mean/std, labels, top-k, thresholds, pixel limit, half precision, pinned memory;
`contract.HandlerConfig`). The task's module (`contract.TASK_MODULES`: classification.py,
detection.py, segmentation.py) turns a batch's outputs into per-image results (`results`), answers
each (`answer`, `v2_outputs`) and says whether it explains (`EXPLAINS`); this file reads requests,
batches them (images of their own sizes go to a detector as a list) and runs the model;
model loading stays in BaseHandler, which also opens a `.onnx` serialized file as an onnxruntime
InferenceSession (sized and placed by `placement.onnx_session`): then the inputs are fed to it as
numpy instead of calling a module. `placement.decide` picks the device
(TorchServe's GPU for the worker, else the CPU; always the CPU for a quantized archive) and whether
to use float16 and pinned memory; the model and each batch go there, the answers come back as CPU
float32.
Each request of a batch is answered on its own: a bad image gets a 4xx JSON error for that request
only, while the others of the batch are still predicted, and the worker keeps running.

Answer:  {"model": "fashion", "version": "2.0", <the task's answer, e.g. a classifier's:>
          "predictions": [{"label": "Ankle boot", "index": 9, "probability": 0.97}, ...]}
Error:   {"code": 400, "type": "InvalidImage", "message": "...", "model": ..., "version": ...}

The file is not called image_classifier.py on purpose: when a handler fails to import, TorchServe
tries `ts.torch_handler.<same name>`, and would silently serve its own ImageClassifier instead.
"""

import importlib
import json
import logging
import os
import sys
import time

import contract
import explain
import image_io
import placement
import programs
import protocols
import torch
from ts.torch_handler import base_handler
from ts.torch_handler.base_handler import BaseHandler

logger = logging.getLogger(__name__)
# TorchServe's worker logs this line for every batch (ts/protocol/otf_message_handler.py, through the
# root logger); writing it, and the frontend reading it back into model_log.log, costs a busy worker
# time and says nothing that the PredictionTime metric and the access log do not.
PER_BATCH_LINE = "Backend received inference at: %d"


def drop_per_batch_line(record):
    """A logging filter (a function: TorchServe wants exactly one class in a handler module) that
    drops TorchServe's per-batch line and keeps every other record."""
    return record.msg != PER_BATCH_LINE


def quiet_worker_log():
    """Put `drop_per_batch_line` on the worker's own log output: the root logger's handler that writes to
    stdout, which a TorchServe worker sets up (logging.basicConfig) and the frontend reads into
    model_log.log. A process that merely loads the handler (marforge's verification, the tests) has
    no such handler, so its logging is left as it was."""
    for handler in logging.getLogger().handlers:
        if (type(handler) is logging.StreamHandler and handler.stream in (sys.stdout, sys.__stdout__)
                and drop_per_batch_line not in handler.filters):
            handler.addFilter(drop_per_batch_line)


class ImageHandler(BaseHandler):
    def initialize(self, context):
        self.config = contract.HandlerConfig.from_dict((context.model_yaml_config or {}).get("handler"))
        self.task = importlib.import_module(contract.TASK_MODULES[self.config.task])
        self.identity = {"model": context.model_name, "version": context.manifest["model"]["modelVersion"]}
        threads = contract.threads_of(os.environ, "{model}-{version}".format(**self.identity))
        if threads:  # as `make tune` chose for this version; before any model (onnxruntime's pool follows it)
            torch.set_num_threads(threads)
        self.placement = placement.decide(context.system_properties.get("gpu_id"), torch.cuda.is_available(),
                                          contract.archive_format(context.model_yaml_config), self.config,
                                          context.system_properties.get("batch_size") or 1)
        for note in self.placement.notes:
            logger.info(note)
        self._load(context)
        if self.device != self.placement.device:  # BaseHandler's MPS/XPU/XLA devices: used as they are
            self.placement = placement.Placement(self.device)
        if self.placement.half:
            self.model.half()
        if self.placement.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        if isinstance(self.model, torch.jit.ScriptModule) and self.placement.device.type == "cpu":
            self.model = placement.for_cpu(self.model)
        logger.info("model on %s, %d threads, half precision %s, pinned memory %s",
                    self.placement.device, torch.get_num_threads(), self.placement.half, self.placement.pin)
        self.onnx_input = None
        if (self.model_pt_path or "").endswith(".onnx"):  # an onnxruntime InferenceSession, opened in _load
            self.onnx_input = self.model.get_inputs()[0].name
            if self.placement.device.type == "cuda" and "CUDAExecutionProvider" not in self.model.get_providers():
                logger.warning("onnxruntime has no CUDA provider here: %s runs on the CPU "
                               "(pip install onnxruntime-gpu to run it on %s)", self.model_pt_path, self.placement.device)
        self._explainer_cache = None
        self._decoder = self.placement.device if self.placement.gpu_decode else None  # JPEGs decoded there
        quiet_worker_log()
        if self.config.warm_up:
            self._warm_up(context.system_properties.get("batch_size") or 1)

    def _warm_up(self, batch_size):
        """Run every batch size the worker will be sent (1 to its batch_size) through the whole request
        path, before the worker reports ready: request bodies of blank PNG and JPEG images of the
        model's input size, decoded and preprocessed, the model, the task's results and the JSON answers
        (`postprocess` outside a request: no statuses to set). A library's first call (PIL's decoder
        plugins, oneDNN's primitives for a shape, TorchScript's profiling runs, onnxruntime's first run,
        inductor's compile of a shape) then falls here, not on a user's request."""
        started = time.perf_counter()
        height, width = self.config.image_size
        bodies = [image_io.encoded(width, height, self.config.color, fmt) for fmt in ("PNG", "JPEG")]
        for n in range(1, batch_size + 1):
            self.postprocess(self.inference(self.preprocess([{"body": bodies[i % 2]} for i in range(n)])))
        logger.info("warmed up on batch sizes 1 to %d in %.2f s", batch_size, time.perf_counter() - started)

    def _load(self, context):
        """BaseHandler's initialize, with two of its choices made by the worker's Placement instead.

        - A CPU-only format: BaseHandler picks cuda:<gpu_id> whenever CUDA is available and a gpu_id
          is assigned, and loads the model there. With the gpu_id hidden its own rule gives the CPU,
          and self.device, map_location and the load all follow from that one value; the gpu_id is
          put back afterwards, so the context still says which GPU TorchServe assigned.
        - An ONNX file: BaseHandler opens it with its module's `setup_ort_session` (every core, GPU 0
          for every worker), which it looks up when it loads. For the load's duration that name is
          `placement.onnx_session` for this worker (its share of the cores, its own GPU), so the
          session is opened once, the right way.
        """
        if self.config.task in ("detection", "segmentation"):
            import torchvision  # noqa: F401  # registers torchvision::nms and the other ops a scripted torchvision model calls

        properties = context.system_properties
        gpu_id = properties.get("gpu_id")
        if self.placement.cpu_only:
            properties["gpu_id"] = None
        bases_session = base_handler.setup_ort_session
        base_handler.setup_ort_session = lambda path, map_location: placement.onnx_session(path, self.placement.device)
        try:
            super().initialize(context)
        finally:
            base_handler.setup_ort_session = bases_session
            properties["gpu_id"] = gpu_id

    def _load_torchscript_model(self, model_pt_path):
        """BaseHandler's loader of a serialized file with no model file: an export archive's torch.export
        program (named <key><contract.EXPORT_SUFFIX>) through programs.py, else TorchScript as BaseHandler does."""
        if model_pt_path.endswith(contract.EXPORT_SUFFIX):
            return programs.load(model_pt_path, self.device)
        return super()._load_torchscript_model(model_pt_path)

    def preprocess(self, data):
        """Read and decode every request; returns (the views of every good request's items stacked,
        one entry per request, the items' picture sizes).

        An entry is (the Parsed request, the indexes of its items among all good items), or (its
        protocol, the BadInput that says why it cannot be answered). An image has `config.crops`
        views (ten-crop: 10); a v2 tensor item has one.
        """
        views, requests, sizes = [], [], []
        for row in data:
            mark, parsed = len(views), None
            try:
                parsed = protocols.parse(row, self.config)
                if not self.task.EXPLAINS and self._asks_explanation(len(requests)):
                    raise image_io.BadInput("ExplanationUnavailable", f"a {self.config.task} model has no explanations: "
                                            "send the image to /predictions instead")
                for kind, value in parsed.items:
                    view, size = protocols.view_of(kind, value, self.config, self._decoder)
                    views.append(view)
                    sizes.append(size)
                requests.append((parsed, range(mark, len(views))))
            except image_io.BadInput as error:
                del views[mark:], sizes[mark:]
                if parsed is not None:  # an item of a well-formed request is bad
                    error = error.located(parsed.protocol, parsed.id)
                requests.append((error.protocol or protocols.PLAIN, error))
        if not views:
            return None, requests, sizes
        if self._decoder is not None:  # some views may be on the GPU already: all go there
            views = [view.to(self._decoder) for view in views]
        if self.config.input_size is None:  # each image at its own size: batched per size (_by_size)
            return views, requests, sizes
        return (torch.stack(views) if self.config.crops == 1 else torch.cat(views)), requests, sizes

    def inference(self, data, *args, **kwargs):
        """The task's results for every good item (a classifier's probabilities: the activation applied,
        then averaged over an image's views); for requests to /explanations, the heatmaps too."""
        inputs, requests, sizes = data
        if inputs is None:
            return None, requests, {}
        if self.onnx_input is not None:
            outputs = torch.from_numpy(self.model.run(None, {self.onnx_input: inputs.numpy()})[0])
        elif isinstance(inputs, list):
            outputs = self._by_size(inputs, *args, **kwargs)
        else:
            batch, rows = placement.pad(inputs, self.placement.pad_to) if self.placement.pad_to else (inputs, None)
            with torch.inference_mode():
                outputs = self.model(placement.to_device(batch, self.placement), *args, **kwargs)
            outputs = {k: v[:rows] for k, v in outputs.items()} if isinstance(outputs, dict) else outputs[:rows]
        results = self.task.results(outputs, self.config, sizes)
        return results, requests, self._explanations(inputs, results, requests, sizes) if self.task.EXPLAINS else {}

    def _by_size(self, views, *args, **kwargs):
        """The model's per-image outputs for images of their own sizes, each size in a call of its own
        (the task's `batch`: a detector's list, a segmenter's stacked tensor): a detector pads a batch
        to its largest image, and what it finds (near the padding, and through any normalisation over
        the feature maps, such as FCOS's GroupNorm) would then depend on the other images of the batch.
        Images of one size are still batched."""
        sizes = {}
        for i, view in enumerate(views):
            sizes.setdefault(tuple(view.shape), []).append(i)
        outputs = [None] * len(views)
        with torch.inference_mode():
            for indexes in sizes.values():
                batch = self.task.batch([placement.to_device(views[i], self.placement) for i in indexes])
                found = self.model(batch, *args, **kwargs)
                for i, output in zip(indexes, self.task.per_image(found)):
                    outputs[i] = output
        return outputs

    def postprocess(self, data):
        """One JSON answer per request, in request order and in its protocol, with a per-request HTTP status.

        Answers are encoded here (compact, by json's C encoder): handed a dict, TorchServe encodes
        it with indent=2, which runs the pure-Python encoder, a visible share of a busy worker's CPU.
        """
        results, requests, explanations = data
        answers = []
        for idx, (parsed, items) in enumerate(requests):
            if self.context is not None:  # None in the warm-up: no request to answer
                self.context.set_response_content_type(idx, "application/json")
            if isinstance(items, image_io.BadInput):
                if self.context is not None:
                    self.context.set_response_status(items.code, items.kind, idx)
                answer = protocols.error(parsed, items, self.identity)
            else:
                said = [{**self.task.answer(results[i], self.config), **explanations.get(i, {})} for i in items]
                answer = protocols.answer(parsed, said, self.task.v2_outputs(results[items.start:items.stop], self.config),
                                          self.identity)
            answers.append(json.dumps(answer).encode())
        return answers

    def explain_handle(self, data_preprocess, raw_data):
        """BaseHandler sends a batch here when its first request came to /explanations; each request
        is answered as what it asked for, like any batch (TorchServe may batch both kinds)."""
        return self.postprocess(self.inference(data_preprocess))

    def _explanations(self, inputs, probabilities, requests, sizes):
        """{item index: explanation fields} for the items of the good requests that came to /explanations."""
        if self.context is None:  # called outside handle(): no request headers to read
            return {}
        asked = [i for idx, (_, items) in enumerate(requests)
                 if not isinstance(items, image_io.BadInput) and self._asks_explanation(idx) for i in items]
        if not asked:
            return {}
        explainer = self._explainer(inputs)
        center = 4 if self.config.crops == 10 else 0  # ten-crop: the center view
        found = {}
        for i in asked:
            view = inputs[i * self.config.crops + center].unsqueeze(0).to(self.placement.device)
            targets = self.task.explained(probabilities[i], self.config)
            maps = explainer.maps(view, targets, self.config.activation == "none")
            found[i] = {"explanation": {
                "method": explainer.method, "layer": explainer.layer_name,
                "box": contract.crop_box(sizes[i], self.config),
                "maps": [{"label": self.config.labels[t], "index": t, "probability": float(probabilities[i][t]),
                          "heatmap": heatmap} for t, heatmap in zip(targets, maps)]}}
        return found

    def _asks_explanation(self, idx):
        """Whether request `idx` of the batch came to /explanations (outside handle() no request says so)."""
        return self.context is not None and self.context.get_request_header(idx, "explain") == "True"

    def _explainer(self, inputs):
        """The Explainer, made on the first explanation: on the served model when it is eager float32
        PyTorch, else on the eager model the archive carries."""
        if self._explainer_cache is None:
            model = getattr(self.model, "_orig_mod", self.model)  # torch.compile wraps the eager model
            if not isinstance(model, torch.nn.Module) or isinstance(model, torch.jit.ScriptModule) or self.placement.half:
                files = contract.eager_files(self.context.model_yaml_config, self.context.manifest)
                model = explain.load_eager(self.context.system_properties["model_dir"], files, self.placement.device)
            self._explainer_cache = explain.Explainer(model, inputs[:1].float().to(self.placement.device))
        return self._explainer_cache
