"""A small client for TorchServe's inference, management and metrics APIs.

Every call sends the right token from the server's `key_file.json` (inference key for the inference
API, management key for the management API, none for metrics) and turns an error status into an
ApiError carrying the status, URL and body. Keys are never printed or logged. The HTTP session is
injectable, so the error handling is tested without a server.

    client = RunDir(".run").client()
    client.describe("fashion")            # every version, with workers and their status
    client.predict("fashion", png_bytes, version="2.0")
"""

import json
import time
from dataclasses import dataclass
from pathlib import Path

import requests

from marforge.errors import ApiError, ServerError

# TorchServe's own per-version settings when a register call names none (the management API's
# defaults): what `register` sends unless told otherwise, and what a stock server is measured with.
STOCK_SERVING = {"batch_size": 1, "max_batch_delay_ms": 100, "response_timeout_s": 120}

@dataclass(frozen=True)
class Endpoints:
    """The base URLs of a server's three HTTP APIs, and its gRPC inference target (host:port)."""

    inference: str
    management: str
    metrics: str
    grpc: str | None = None


def read_key(key_file: Path | None, kind: str) -> str | None:
    """The `kind` key (`inference`, `management` or `API`) in TorchServe's key_file.json, or None when
    token auth is off (no key file). The one reader of that file, for the HTTP and the gRPC client."""
    if key_file is None or not key_file.exists():
        return None
    try:
        return json.loads(key_file.read_text())[kind]["key"]
    except (KeyError, TypeError, ValueError) as exc:
        raise ServerError(f"{key_file}: unreadable TorchServe key file ({exc})", "make stop && make serve") from None


class Client:
    def __init__(self, endpoints, key_file=None, session=None, timeout=30.0):
        self.endpoints = endpoints
        self.key_file = Path(key_file) if key_file else None
        self.session = session or requests.Session()
        self.timeout = timeout

    # -- tokens ---------------------------------------------------------------------------------
    def key(self, kind):
        """The current `inference`, `management` or `API` key, or None when token auth is off (no key file)."""
        return read_key(self.key_file, kind)

    # -- plumbing ---------------------------------------------------------------------------------
    def refresh_key(self, kind):
        """Ask TorchServe for a new `inference` or `management` key (they expire after
        token_expiration_min, 60 by default); TorchServe rewrites key_file.json with it."""
        api_key = self.key("API")
        if not api_key:
            return False
        self._send("POST", f"{self.endpoints.management}/token", api_key, params={"type": kind})
        return True

    def _request(self, method, url, key_kind=None, **kwargs):
        key = self.key(key_kind) if key_kind else None
        try:
            return self._send(method, url, key, **kwargs)
        except ApiError as exc:
            if not (key and exc.status == 400 and "InvalidKeyException" in exc.body and self.refresh_key(key_kind)):
                raise
        return self._send(method, url, self.key(key_kind), **kwargs)  # once more, with the new key

    def _send(self, method, url, key, headers=None, **kwargs):
        headers = dict(headers or {})
        if key:
            headers["Authorization"] = f"Bearer {key}"
        try:
            response = self.session.request(method, url, headers=headers, timeout=kwargs.pop("timeout", self.timeout),
                                            **kwargs)
        except requests.RequestException as exc:
            raise ServerError(f"{method} {url} failed: {type(exc).__name__}: {exc}", "make serve") from None
        if response.status_code >= 400:
            raise ApiError(response.status_code, url, response.text)
        return response

    def _management(self, method, path, **kwargs):
        return self._request(method, self.endpoints.management + path, "management", **kwargs)

    # -- inference API ----------------------------------------------------------------------------
    def predict(self, name, data, version=None, content_type="application/octet-stream"):
        """POST one image (bytes) to /predictions/NAME[/VERSION]; returns the decoded JSON answer."""
        path = f"/predictions/{name}" + (f"/{version}" if version else "")
        response = self._request("POST", self.endpoints.inference + path, "inference", data=data,
                                 headers={"Content-Type": content_type})
        return response.json()

    def explain(self, name, data, version=None, content_type="application/octet-stream"):
        """POST one image to /explanations/NAME[/VERSION]: the answer plus where the model looked."""
        path = f"/explanations/{name}" + (f"/{version}" if version else "")
        response = self._request("POST", self.endpoints.inference + path, "inference", data=data,
                                 headers={"Content-Type": content_type})
        return response.json()

    def ping(self):
        return self._request("GET", self.endpoints.inference + "/ping", "inference").json()

    # -- management API ---------------------------------------------------------------------------
    def list_models(self):
        models, token = [], None
        while True:
            page = self._management("GET", "/models", params={"limit": 100, **({"next_page_token": token} if token else {})}).json()
            models += page.get("models", [])
            token = page.get("nextPageToken")
            if not token:
                return models

    def describe(self, name, version="all"):
        """Describe a model: a list of dicts, one per version.

        `version` is "all" (every version), a version string, or None for the default version only.
        """
        return self._management("GET", f"/models/{name}" + (f"/{version}" if version else "")).json()

    def default_version(self, name):
        [description] = self.describe(name, None)
        return description["modelVersion"]

    def is_registered(self, name, version):
        try:
            self.describe(name, version)
            return True
        except ApiError as exc:
            if exc.status == 404:
                return False
            raise

    def register(self, mar_name, workers, batch_size=STOCK_SERVING["batch_size"],
                 max_batch_delay_ms=STOCK_SERVING["max_batch_delay_ms"],
                 response_timeout_s=STOCK_SERVING["response_timeout_s"], timeout=300.0, synchronous=True):
        """Register an archive from the model store. Synchronous: answers once the workers started
        (HTTP 500 if they cannot; TorchServe may or may not leave the version registered then)."""
        params = {"url": mar_name, "initial_workers": workers, "synchronous": str(synchronous).lower(),
                  "batch_size": batch_size, "max_batch_delay": max_batch_delay_ms,
                  "response_timeout": response_timeout_s}
        return self._management("POST", "/models", params=params, timeout=timeout).json()

    def scale(self, name, version, workers, timeout=120.0):
        params = {"min_worker": workers, "max_worker": workers, "synchronous": "true"}
        return self._management("PUT", f"/models/{name}/{version}", params=params, timeout=timeout).json()

    def set_default(self, name, version):
        return self._management("PUT", f"/models/{name}/{version}/set-default").json()

    def unregister(self, name, version):
        """Unregister a version. TorchServe drops its in-flight and queued requests: drain it first."""
        return self._management("DELETE", f"/models/{name}/{version}").json()

    def unregister_if_present(self, name, version):
        """Unregister a version that may or may not be registered (after a failed register, say)."""
        try:
            self.unregister(name, version)
        except ApiError as exc:
            if exc.status != 404:
                raise

    # -- metrics API ------------------------------------------------------------------------------
    def metrics(self):
        """The Prometheus text of /metrics (empty unless the server runs with metrics_mode=prometheus)."""
        return self._request("GET", self.endpoints.metrics + "/metrics").text

    def metric_total(self, name):
        """The sum of one metric's samples over all its label sets in /metrics (0 when absent)."""
        return prometheus_total(self.metrics(), name)

    # -- readiness --------------------------------------------------------------------------------
    def wait_ready(self, expected, timeout=180.0, alive=lambda: True, poll=0.5):
        """Wait until every (name, version) in `expected` has all its workers READY.

        `/ping` is not enough: it says Healthy while workers crash. `alive` is checked between polls
        so a server that died is reported at once instead of at the timeout.
        """
        deadline = time.monotonic() + timeout
        pending = set(expected)
        last_error = None
        while True:
            if not alive():
                raise ServerError("TorchServe exited while its models were loading")
            try:
                for name, version in sorted(pending):
                    if version_ready(self.describe(name, version)):
                        pending.discard((name, version))
                if not pending:
                    return
            except (ApiError, ServerError) as exc:
                last_error = exc
            if time.monotonic() > deadline:
                detail = f" (last error: {last_error})" if last_error else ""
                raise ServerError(
                    f"not ready after {timeout:.0f}s: {', '.join(f'{n} {v}' for n, v in sorted(pending))}{detail}")
            time.sleep(poll)


def prometheus_total(text, name):
    """The sum of the samples of metric `name` in Prometheus text format."""
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name) and line[len(name):len(name) + 1] in ("{", " "):
            total += float(line.rsplit(" ", 1)[1])
    return total


def version_ready(description):
    """True when a describe answer for one version lists workers and all of them are READY."""
    workers = [w for d in description for w in d.get("workers", [])]
    return bool(workers) and all(w.get("status") == "READY" for w in workers)
