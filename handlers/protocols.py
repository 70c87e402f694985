"""KServe's v1 and v2 (Open Inference Protocol) bodies, read and answered per request.

Shipped flat beside `image_handler.py` in every archive and imported as a top-level module.
TorchServe's own envelopes for these protocols read only the first request of a server-side batch,
so the handler reads each request's body itself (`parse`) and answers each in the protocol it came
in (`answer`, `error`); batching keeps working whatever mix of protocols a batch holds.

    plain   the image bytes, multipart, or JSON {"data": "<base64 image>"}: marforge's own answer
    v1      {"instances": [{"data": "<base64>"} | {"b64": "<base64>"} | "<base64>", ...]}
            -> {"predictions": [<one answer per instance>]}
    v2      {"id": ..., "inputs": [{"name", "shape", "datatype", "data"}], "outputs": [{"name"}]?}
            with BYTES (one base64 image per element), or UINT8 pixels or FP32 model input of the
            model's input shape [N, C, H, W]
            -> {"model_name", "model_version", "id", "outputs": [{"name", "shape", "datatype", "data"}]}

The v2 outputs are the task's (e.g. classification.v2_outputs). The body is read once (`read`: JSON
parsed once, base64 decoded once, by `_b64`). An error keeps its HTTP status and says the same in each
protocol's shape: {"error": "<type>: <message>", "code", "type"} (plus marforge's own fields; a v2
error carries them as outputs too, for the Open Inference Protocol's gRPC service: see `error`).
"""

import base64
import binascii
import json
from dataclasses import dataclass, field

import contract
import image_io

PLAIN, V1, V2 = "plain", "v1", "v2"
TENSOR_TYPES = {"UINT8": "pixels", "FP32": "input"}  # v2 raw tensors: 8-bit pixels, or the model's input


@dataclass
class Parsed:
    """One request: its protocol and its items, each ("image", bytes), ("pixels", C x H x W uint8
    tensor) or ("input", C x H x W float32 tensor)."""

    protocol: str
    items: list
    id: str | None = None
    outputs: list | None = field(default=None)  # v2: the output names asked for (None: all)


def read(row):
    """The request's body, read once: its JSON value (parsed by TorchServe, or here when the bytes or
    text start like JSON), else its bytes or text; multipart with another field name: its first field
    that holds bytes. BadInput when it starts like JSON but is not."""
    value = row.get("body", row.get("data"))
    if value is None:
        value = next((v for v in row.values() if isinstance(v, (bytes, bytearray))), None)
    if isinstance(value, str) and value.lstrip()[:1] in ("{", "["):
        value = value.encode()  # JSON sent as text/plain
    if isinstance(value, (bytes, bytearray)) and value.lstrip()[:1] in (b"{", b"["):
        try:
            return json.loads(value)
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise image_io.BadInput("InvalidJSON", f"the body starts like JSON but is not valid JSON: {exc}") from None
    return value


def parse(row, config):
    """The Parsed request of one row, or BadInput (with its `protocol`) saying what is wrong with it."""
    protocol, body = PLAIN, None
    try:
        value = read(row)
        body = value if isinstance(value, dict) else None
        protocol = V1 if body is not None and "instances" in body else V2 if body is not None and "inputs" in body else PLAIN
        if protocol == V1:
            instances = _list(body["instances"], "instances")
            return Parsed(V1, [("image", _v1_instance(i, instance)) for i, instance in enumerate(instances)])
        if protocol == V2:
            return _v2(body, config)
        return Parsed(PLAIN, [("image", _plain(value))])
    except image_io.BadInput as error:
        raise error.located(protocol, body.get("id") if protocol == V2 else None) from error


def _plain(value):
    """The image bytes of a plain request's body (`read`'s value)."""
    if isinstance(value, (dict, list, int, float)):  # JSON: {"data": "<base64 image>"}
        data = value.get("data") if isinstance(value, dict) else None
        if not isinstance(data, str) or set(value) - {"data"}:
            got = f"keys {', '.join(sorted(value)) or 'none'}" if isinstance(value, dict) else type(value).__name__
            raise image_io.BadInput("InvalidJSON", 'a JSON body must be an object with one key, "data", holding '
                                    f"a base64-encoded image (got {got})")
        return _b64(data, '"data"')
    if isinstance(value, str):
        raise image_io.BadInput("InvalidInput", "the body is text, not an image: send the image bytes, "
                                'or JSON {"data": "<base64 image>"} with Content-Type: application/json')
    if not value:
        raise image_io.BadInput("EmptyInput", "the request has no image: send the image bytes as the body "
                                '(curl -T image.png), as a multipart field, or as base64 in JSON {"data": ...}')
    return bytes(value)


def prepare(row, config):
    """One plain request row (one image) -> the model's input (C x H x W, or 10 x C x H x W for
    ten-crop), or BadInput saying what was wrong: the handler's own way through, for callers outside it."""
    parsed = parse(row, config)
    if parsed.protocol != PLAIN:
        raise image_io.BadInput("InvalidInput", f"this endpoint takes one image (its bytes, or JSON {{\"data\": ...}}), "
                                f"not a {parsed.protocol} request", protocol=PLAIN)
    [(kind, value)] = parsed.items
    return view_of(kind, value, config)[0]


def _list(value, key):
    if not isinstance(value, list) or not value:
        raise image_io.BadInput("InvalidJSON", f'"{key}" must be a non-empty list')
    return value


def _b64(text, where):
    if not isinstance(text, str):
        raise image_io.BadInput("InvalidJSON", f"{where} must be a base64-encoded image (a string), not {type(text).__name__}")
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise image_io.BadInput("InvalidBase64", f"{where} is not valid base64: {exc}") from None


def _v1_instance(index, instance):
    if isinstance(instance, dict):
        key = next((k for k in ("data", "b64") if k in instance), None)
        if key is None or len(instance) != 1:
            raise image_io.BadInput("InvalidJSON", f'instance {index} must be {{"data": "<base64 image>"}} or '
                                    f'{{"b64": ...}} or the base64 string (got keys {", ".join(sorted(instance)) or "none"})')
        instance = instance[key]
    return _b64(instance, f"instance {index}")


def _v2(body, config):
    inputs = _list(body["inputs"], "inputs")
    if len(inputs) != 1 or not isinstance(inputs[0], dict):
        raise image_io.BadInput("InvalidJSON", f"a v2 request needs exactly one input (the images), got {len(inputs)}")
    tensor = inputs[0]
    missing = [k for k in ("name", "shape", "datatype", "data") if k not in tensor]
    if missing:
        raise image_io.BadInput("InvalidJSON", f"the v2 input lacks {', '.join(missing)}")
    outputs = body.get("outputs")
    asked = [o.get("name") for o in outputs] if isinstance(outputs, list) else None
    kind, data, shape = tensor["datatype"], tensor["data"], tensor["shape"]
    if kind == "BYTES":
        elements = _list(data, "data")
        items = [("image", _b64(e, f"element {i} of input {tensor['name']!r}")) for i, e in enumerate(elements)]
    elif kind in TENSOR_TYPES:
        items = _raw_tensor(kind, data, shape, config)
    else:
        raise image_io.BadInput("InvalidInput", f"input datatype {kind!r} is not served: send BYTES (base64 images), "
                                "UINT8 pixels or FP32 model input")
    return Parsed(V2, items, body.get("id"), asked)


def _raw_tensor(kind, data, shape, config):
    import torch

    expected = [contract.CHANNELS[config.color], *(config.input_size or ("H", "W"))]  # H, W: any size
    if not isinstance(shape, list) or len(shape) != 4 or any(e != d for e, d in zip(expected, shape[1:]) if isinstance(e, int)):
        dims = ", ".join(map(str, expected))
        raise image_io.BadInput("InvalidInput", f"a {kind} input must have the model's input shape [N, {dims}], not {shape}")
    if config.input_size is None and all(isinstance(d, int) for d in shape):
        image_io.check_size(shape[3], shape[2], config)
    if config.crops > 1:
        raise image_io.BadInput("InvalidInput", f"this model answers {config.crops} crops of an image: send the image (BYTES), "
                                "not a tensor of one view")
    try:
        values = torch.tensor(data, dtype=torch.uint8 if kind == "UINT8" else torch.float32)
        tensor = values.reshape(shape)
    except (RuntimeError, TypeError, ValueError, OverflowError) as exc:
        raise image_io.BadInput("InvalidInput", f"the {kind} data do not fill shape {shape}: {exc}") from None
    return [(TENSOR_TYPES[kind], view) for view in tensor]


def view_of(kind, value, config, decoder=None):
    """(the model's input for one item, the size (width, height) of the picture it came from). With a
    `decoder` (a CUDA device), a JPEG is decoded and preprocessed there (image_io.gpu_view)."""
    if kind == "image":
        on_gpu = image_io.gpu_view(value, config, decoder) if decoder is not None else None
        if on_gpu is not None:
            return on_gpu
        image = image_io.decode_image(value, config)
        return contract.to_input(image, config), image.size
    size = (value.shape[-1], value.shape[-2])
    if kind == "pixels":
        return contract.normalise(value.movedim(0, -1), config.mean, config.std), size
    return value, size


def answer(parsed, answers, outputs, identity):
    """The body for one good request: `answers` are the task's answer per item (with an explanation
    when asked), `outputs` the task's v2 outputs for the request's items (used by v2 only)."""
    if parsed.protocol == PLAIN:
        return {**identity, **answers[0]}
    if parsed.protocol == V1:
        return {**identity, "predictions": answers}
    chosen = [o for o in outputs if parsed.outputs is None or o["name"] in parsed.outputs]
    return {"model_name": identity["model"], "model_version": identity["version"], "id": parsed.id, "outputs": chosen}


def error(protocol, bad, identity):
    """The body for a request that cannot be answered, in its protocol's error shape.

    A v2 error also has the shape of a v2 answer, with the error as its outputs `error` (BYTES) and
    `code` (INT32): over the Open Inference Protocol's gRPC service TorchServe 0.12 drops the status
    the handler sets and builds a ModelInferResponse from the body's `id`, `model_name`,
    `model_version` and `outputs` (frontend GRPCJob.response), so the outputs are all that reach a
    gRPC client. Over HTTP the status and `error` say it, as the protocol wants.
    """
    body = {**bad.as_dict(), **identity}
    if protocol != PLAIN:
        body["error"] = f"{bad.kind}: {bad.message}"
    if protocol == V2:
        body.update({"model_name": identity["model"], "model_version": identity["version"],
                     "id": bad.request_id or "",
                     "outputs": [{"name": "error", "shape": [1], "datatype": "BYTES", "data": [body["error"]]},
                                 {"name": "code", "shape": [1], "datatype": "INT32", "data": [bad.code]}]})
    return body
