"""Run a `.mar` archive the way a TorchServe Python worker does, without a server.

The archive is unpacked, its handler loaded by TorchServe's own `ts.model_loader`, and requests go
through `Service.predict`, whose binary answer (the one a worker writes to the frontend) is decoded
back into a status, a content type and a body per request. Archive verification and the archive
tests use it; it is the closest thing to a worker that needs no Java frontend.

    with LoadedArchive("model_store/fashion-2.0.mar") as archive:
        [answer] = archive.predict([{"body": png_bytes}])
        answer.status, answer.json()
"""

import contextlib
import importlib
import json
import logging
import os
import shutil
import struct
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

from marforge import shipped


@dataclass
class Answer:
    status: int
    content_type: str
    body: bytes

    def json(self):
        return json.loads(self.body)


class LoadedArchive:
    """A context manager holding one loaded archive; leaves sys.path and sys.modules as it found them.

    `mar_path` is a .mar file (unpacked to a temp dir, removed afterwards) or a directory laid out
    as an unpacked archive (used as it is).
    """

    def __init__(self, mar_path, batch_size=8, gpu_id=None):
        """`gpu_id`: the GPU TorchServe would assign the worker (None: none, the worker runs on the CPU)."""
        self.mar_path = Path(mar_path)
        self.batch_size = batch_size
        self.gpu_id = gpu_id
        self.unpacked = self.mar_path.is_dir()
        self.model_dir = None
        self.service = None
        self._isolation = contextlib.ExitStack()

    def __enter__(self):
        from ts.metrics.metric_cache_yaml_impl import MetricsCacheYamlImpl
        from ts.model_loader import ModelLoaderFactory

        if self.unpacked:
            self.model_dir = str(self.mar_path.resolve())
        else:
            self.model_dir = tempfile.mkdtemp(prefix=f"{self.mar_path.stem}-")
            with zipfile.ZipFile(self.mar_path) as archive:
                archive.extractall(self.model_dir)
        manifest = json.loads(Path(self.model_dir, "MAR-INF", "MANIFEST.json").read_text())
        # The archive's own modules must be imported from it, even if a module of the same name
        # (e.g. the repo's handlers/image_io.py) is already loaded: set those aside until exit.
        self._isolation.enter_context(shipped.isolated(Path(self.model_dir)))
        ts_logger = logging.getLogger("ts")
        level = ts_logger.level
        ts_logger.setLevel(logging.ERROR)  # BaseHandler warns about every optional backend it lacks
        try:
            metrics = MetricsCacheYamlImpl(config_file_path=_ts_metrics_config())
            metrics.initialize_cache()
            metrics.model_name = manifest["model"]["modelName"]
            # TorchServe's loader answers an ImportError in the handler by trying a built-in handler
            # of the same name, which hides the real error: import it first so that error surfaces.
            importlib.import_module(manifest["model"]["handler"].split(":")[0].removesuffix(".py"))
            self.service = ModelLoaderFactory.get_model_loader().load(
                manifest["model"]["modelName"], self.model_dir, manifest["model"]["handler"],
                self.gpu_id, self.batch_size, None, True, metrics,
            )
            self.service.set_cl_socket(None)  # predict() hands it to the context; only streaming uses it
        except BaseException:
            self.__exit__(None, None, None)
            raise
        finally:
            ts_logger.setLevel(level)
        return self

    @property
    def handler(self):
        """The handler object the worker built (its `model` is what BaseHandler loaded); None for a function."""
        return getattr(self.service._entry_point, "__self__", None)

    def predict(self, rows, headers=None):
        """Send one batch; each row maps parameter names to values, as the frontend would send them.

        A value that is a dict or list is sent as JSON (as for Content-Type: application/json).
        `headers` (one dict per row, or None) are request headers as the frontend passes them, e.g.
        {"explain": "True"} for a request to /explanations.
        """
        batch = []
        for i, row in enumerate(rows):
            parameters = [
                {"name": name, "contentType": "application/json" if isinstance(v, (dict, list)) else "",
                 "value": v}
                for name, v in row.items()
            ]
            request_headers = [{"name": k.encode(), "value": v.encode()} for k, v in ((headers or [{}] * len(rows))[i]).items()]
            batch.append({"requestId": f"req-{i}".encode(), "parameters": parameters, "headers": request_headers})
        return decode_predict_response(self.service.predict(batch))

    def __exit__(self, *exc):
        self._isolation.close()
        if not self.unpacked:
            shutil.rmtree(self.model_dir, ignore_errors=True)
        return False


def _ts_metrics_config():
    import ts

    return os.path.join(os.path.dirname(ts.__file__), "configs", "metrics.yaml")


def decode_predict_response(message):
    """Decode the bytes a worker sends for a predict command into one Answer per request."""
    view = memoryview(bytes(message))
    pos = 0

    def read_int():
        nonlocal pos
        (value,) = struct.unpack_from("!i", view, pos)
        pos += 4
        return value

    def read_bytes():
        nonlocal pos
        length = read_int()
        data = bytes(view[pos:pos + length])
        pos += length
        return data

    batch_code = read_int()
    batch_message = read_bytes().decode()
    answers = []
    while True:
        if read_int() == -1:  # length of the next request id, -1 ends the list
            return answers
        pos -= 4
        read_bytes()  # request id
        content_type = read_bytes().decode()
        status = read_int()
        read_bytes()  # reason phrase
        for _ in range(read_int()):  # response headers
            read_bytes(), read_bytes()
        body = read_bytes()
        if body == b"error" and status == batch_code and batch_code != 200:
            body = json.dumps({"code": batch_code, "message": batch_message}).encode()
        answers.append(Answer(status, content_type, body))
