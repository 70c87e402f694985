"""A client for TorchServe's gRPC inference API (port 7070 by default): its own `inference.proto`,
and the Open Inference Protocol's `open_inference_grpc.proto` (KServe v2 over gRPC), which TorchServe
serves on the same port with `ts_open_inference_protocol=true` (marforge's config.properties sets it).

The stubs are generated from the protos inside the installed TorchServe's frontend jar (so they are
always the server's own) into `<venv>/marforge-grpc/`, by `make setup` (`python -m marforge
stubs`) or on first use. Like the HTTP client it sends the inference key (metadata `authorization:
Bearer <key>`), renews an expired one once, and turns failures into the same typed errors: the
answer of a request that could not be answered is an ApiError with the HTTP status it carries.
Over gRPC TorchServe reports a request's own status nowhere but in the answer's body (it answers
OK), so the client reads it there; errors of the whole call (PERMISSION_DENIED, UNAVAILABLE, ...)
come from gRPC's status.

    client = GrpcClient("127.0.0.1:7070", key_file=".run/key_file.json")
    client.predict("fashion", png_bytes, version="2.0")      # the same JSON as over HTTP
    client.infer("fashion", [png_bytes, jpeg_bytes])         # v2 over gRPC: the same dict as v2 JSON

TorchServe 0.12's Open Inference Protocol service (package `org.pytorch.serve.grpc.openinference`,
not KServe's `inference`, so KServe's and Triton's gRPC clients cannot call it) reads `contents`,
never `raw_input_contents`, ignores the outputs asked for, drops the handler's status (a v2 error
comes back as outputs `error` and `code`, see handlers/protocols.py) and sends each BYTES output
element as its JSON text; `infer` undoes all of that.
"""

import importlib
import json
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from marforge.errors import ApiError, ServerError
from marforge.serve.client import read_key

PROTOS = ("inference.proto", "open_inference_grpc.proto", "google/rpc/status.proto")
# Where each v2 datatype's values travel in InferTensorContents.
CONTENTS = {"BOOL": "bool_contents", "INT8": "int_contents", "INT16": "int_contents", "INT32": "int_contents",
            "INT64": "int64_contents", "UINT8": "uint_contents", "UINT16": "uint_contents", "UINT32": "uint_contents",
            "UINT64": "uint64_contents", "FP32": "fp32_contents", "FP64": "fp64_contents", "BYTES": "bytes_contents"}
CODES = {"INVALID_ARGUMENT": 400, "NOT_FOUND": 404, "PERMISSION_DENIED": 403, "RESOURCE_EXHAUSTED": 503,
         "UNAVAILABLE": 503, "DEADLINE_EXCEEDED": 504, "INTERNAL": 500, "UNIMPLEMENTED": 501}


def stubs_dir():
    return Path(sys.prefix) / "marforge-grpc"


def frontend_jar():
    import ts

    [jar] = (Path(ts.__file__).parent / "frontend").glob("*.jar")
    return jar


def generate_stubs(out=None):
    """Generate Python stubs for the frontend jar's inference protos into `out`; returns `out`."""
    out = Path(out or stubs_dir())
    with tempfile.TemporaryDirectory(prefix="marforge-protos-") as work, zipfile.ZipFile(frontend_jar()) as jar:
        for name in PROTOS:
            (Path(work) / name).parent.mkdir(parents=True, exist_ok=True)
            (Path(work) / name).write_bytes(jar.read(name))
        out.mkdir(parents=True, exist_ok=True)
        import grpc_tools

        include = Path(grpc_tools.__file__).parent / "_proto"  # google/protobuf/empty.proto and the other well-known types
        done = subprocess.run([sys.executable, "-m", "grpc_tools.protoc", f"-I{work}", f"-I{include}",
                               f"--python_out={out}", f"--grpc_python_out={out}", *PROTOS], capture_output=True, text=True)
    if done.returncode != 0:
        raise ServerError(f"generating the gRPC stubs failed: {done.stderr.strip()}", "pip install -r requirements.txt")
    return out


def stubs(proto="inference"):
    """(<proto>_pb2, <proto>_pb2_grpc) for "inference" or "open_inference_grpc", generated first when missing."""
    folder = stubs_dir()
    if not all((folder / f"{Path(name).stem}_pb2_grpc.py").is_file() for name in PROTOS[:2]):
        generate_stubs(folder)
    if str(folder) not in sys.path:
        sys.path.insert(0, str(folder))
    return importlib.import_module(f"{proto}_pb2"), importlib.import_module(f"{proto}_pb2_grpc")


class GrpcClient:
    def __init__(self, target, key_file=None, timeout=30.0):
        import grpc

        self.target = target
        self.key_file = Path(key_file) if key_file else None
        self.timeout = timeout
        self.messages, services = stubs()
        self.oip, oip_services = stubs("open_inference_grpc")
        self.channel = grpc.insecure_channel(target)
        self.stub = services.InferenceAPIsServiceStub(self.channel)
        self.oip_stub = oip_services.GRPCInferenceServiceStub(self.channel)

    def close(self):
        self.channel.close()

    def key(self, kind="inference"):
        return read_key(self.key_file, kind)

    def predict(self, name, data, version=None, refresh=None):
        """Send one image (bytes) to inference.proto's Predictions; returns the decoded JSON answer,
        or raises ApiError / ServerError.

        `refresh` renews the inference key (the HTTP client's refresh_key) after a refused one.
        """
        request = self.messages.PredictionsRequest(model_name=name, model_version=version or "", input={"data": data})
        where = self._where(name, version)
        answer = self._call(self.stub.Predictions, request, where, refresh)
        try:
            body = json.loads(answer.prediction)
        except (UnicodeDecodeError, json.JSONDecodeError):
            raise ApiError(500, where, f"the answer is not JSON: {answer.prediction[:200]!r}") from None
        if isinstance(body, dict) and isinstance(body.get("code"), int) and body["code"] >= 400 and "type" in body:
            raise ApiError(body["code"], where, answer.prediction.decode())
        return body

    def infer(self, name, images, version=None, request_id="", refresh=None):
        """Send images (a list of bytes) as one BYTES input to the Open Inference Protocol's
        ModelInfer; returns the answer as v2 JSON has it ({"model_name", "model_version", "id",
        "outputs": [{"name", "datatype", "shape", "data"}]}), or raises ApiError / ServerError."""
        tensor = self.oip.ModelInferRequest.InferInputTensor(
            name="images", datatype="BYTES", shape=[len(images)],
            contents=self.oip.InferTensorContents(bytes_contents=list(images)))
        request = self.oip.ModelInferRequest(model_name=name, model_version=version or "", id=request_id, inputs=[tensor])
        where = self._where(name, version, "oip")
        answer = self._call(self.oip_stub.ModelInfer, request, where, refresh)
        outputs = [{"name": o.name, "datatype": o.datatype, "shape": list(o.shape), "data": _values(o)} for o in answer.outputs]
        named = {o["name"]: o for o in outputs}
        if "error" in named:
            code = named.get("code", {"data": [500]})["data"][0]
            raise ApiError(code, where, json.dumps({"error": named["error"]["data"][0], "code": code, "id": answer.id}))
        return {"model_name": answer.model_name, "model_version": answer.model_version, "id": answer.id, "outputs": outputs}

    def model_ready(self, name, version=None):
        """The Open Inference Protocol's ModelReady: True when the version's workers are all up."""
        request = self.oip.ModelReadyRequest(name=name, version=version or "")
        return self._call(self.oip_stub.ModelReady, request, self._where(name, version, "oip"), None).ready

    def _where(self, name, version, service=None):
        return f"grpc://{self.target}/" + (f"{service}/" if service else "") + name + (f"/{version}" if version else "")

    def _call(self, method, request, where, refresh):
        """`method(request)` with the inference key in the metadata, renewed once if refused; gRPC
        failures as ApiError (the HTTP status they mean) or ServerError (no server there)."""
        import grpc

        for attempt in (1, 2):
            key = self.key()
            try:
                return method(request, timeout=self.timeout, metadata=[("authorization", f"Bearer {key}")] if key else None)
            except grpc.RpcError as exc:
                code = exc.code().name
                if code == "PERMISSION_DENIED" and attempt == 1 and refresh and refresh("inference"):
                    continue
                if code in ("UNAVAILABLE", "DEADLINE_EXCEEDED") and "Connection" in (exc.details() or ""):
                    raise ServerError(f"gRPC {where} failed: {code} {exc.details()}", "make serve") from None
                raise ApiError(CODES.get(code, 500), where, f"{code}: {exc.details()}") from None


def _values(tensor):
    """A ModelInferResponse output's values as a list; TorchServe sends a BYTES element as its JSON text."""
    values = list(getattr(tensor.contents, CONTENTS.get(tensor.datatype, "bytes_contents")))
    return [json.loads(v) for v in values] if tensor.datatype == "BYTES" else values
