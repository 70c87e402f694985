"""A client for TorchServe's gRPC inference API (`inference.proto`, port 7070 by default).

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
"""

import importlib
import json
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from marforge.errors import ApiError, ServerError

PROTOS = ("inference.proto", "google/rpc/status.proto")
CODES = {"INVALID_ARGUMENT": 400, "NOT_FOUND": 404, "PERMISSION_DENIED": 403, "RESOURCE_EXHAUSTED": 503,
         "UNAVAILABLE": 503, "DEADLINE_EXCEEDED": 504, "INTERNAL": 500, "UNIMPLEMENTED": 501}


def stubs_dir():
    return Path(sys.prefix) / "marforge-grpc"


def frontend_jar():
    import ts

    [jar] = (Path(ts.__file__).parent / "frontend").glob("*.jar")
    return jar


def generate_stubs(out=None):
    """Generate Python stubs for the frontend jar's inference.proto into `out`; returns `out`."""
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


def stubs():
    """(inference_pb2, inference_pb2_grpc), generated first when missing."""
    folder = stubs_dir()
    if not (folder / "inference_pb2_grpc.py").is_file():
        generate_stubs(folder)
    if str(folder) not in sys.path:
        sys.path.insert(0, str(folder))
    return importlib.import_module("inference_pb2"), importlib.import_module("inference_pb2_grpc")


class GrpcClient:
    def __init__(self, target, key_file=None, timeout=30.0):
        import grpc

        self.target = target
        self.key_file = Path(key_file) if key_file else None
        self.timeout = timeout
        self.messages, services = stubs()
        self.channel = grpc.insecure_channel(target)
        self.stub = services.InferenceAPIsServiceStub(self.channel)

    def close(self):
        self.channel.close()

    def key(self, kind="inference"):
        if self.key_file is None or not self.key_file.exists():
            return None
        return json.loads(self.key_file.read_text())[kind]["key"]

    def predict(self, name, data, version=None, refresh=None):
        """Send one image (bytes); returns the decoded JSON answer, or raises ApiError / ServerError.

        `refresh` renews the inference key (the HTTP client's refresh_key) after a refused one.
        """
        import grpc

        request = self.messages.PredictionsRequest(model_name=name, model_version=version or "", input={"data": data})
        where = f"grpc://{self.target}/{name}" + (f"/{version}" if version else "")
        for attempt in (1, 2):
            key = self.key()
            try:
                answer = self.stub.Predictions(request, timeout=self.timeout,
                                               metadata=[("authorization", f"Bearer {key}")] if key else None)
                break
            except grpc.RpcError as exc:
                code = exc.code().name
                if code == "PERMISSION_DENIED" and attempt == 1 and refresh and refresh("inference"):
                    continue
                if code in ("UNAVAILABLE", "DEADLINE_EXCEEDED") and "Connection" in (exc.details() or ""):
                    raise ServerError(f"gRPC {where} failed: {code} {exc.details()}", "make serve") from None
                raise ApiError(CODES.get(code, 500), where, f"{code}: {exc.details()}") from None
        try:
            body = json.loads(answer.prediction)
        except (UnicodeDecodeError, json.JSONDecodeError):
            raise ApiError(500, where, f"the answer is not JSON: {answer.prediction[:200]!r}") from None
        if isinstance(body, dict) and isinstance(body.get("code"), int) and body["code"] >= 400 and "type" in body:
            raise ApiError(body["code"], where, answer.prediction.decode())
        return body
