"""Hostile and broken input over HTTP against the real server: a clear 4xx, then the next request works."""

import base64
import json
import os

import pytest
import requests
from images import encode, gradient, multi_frame, png_declaring, sixteen_bit_png, truncated
from PIL import Image

pytestmark = pytest.mark.integration

BAD = {  # name: (body, content type, expected status, expected error type)
    "empty body": (b"", "application/octet-stream", 400, "EmptyInput"),
    "random bytes": (os.urandom(3000), "application/octet-stream", 400, "InvalidImage"),
    "text": (b"a cat, probably", "text/plain", 400, "InvalidInput"),
    "truncated PNG": (truncated("PNG"), "image/png", 400, "InvalidImage"),
    "truncated JPEG": (truncated("JPEG"), "image/jpeg", 400, "InvalidImage"),
    "1x1 image": (encode(Image.new("L", (1, 1))), "image/png", 400, "ImageTooSmall"),
    "0x0 image": (png_declaring(0, 0), "image/png", 400, None),
    "decompression bomb": (png_declaring(30000, 30000), "image/png", 413, "ImageTooLarge"),
    "multi-frame GIF": (multi_frame("GIF"), "image/gif", 400, "UnsupportedImage"),
    "multi-frame TIFF": (multi_frame("TIFF"), "image/tiff", 400, "UnsupportedImage"),
    "JSON of the wrong shape": (b'{"image": "abc"}', "application/json", 400, "InvalidJSON"),
    "JSON list": (b"[1, 2, 3]", "application/json", 400, "InvalidJSON"),
    "invalid base64": (b'{"data": "@@@not base64@@@"}', "application/json", 400, "InvalidBase64"),
}
VALID = {
    "CMYK JPEG": (encode(gradient().convert("CMYK"), "JPEG"), "image/jpeg"),
    "16-bit PNG": (sixteen_bit_png(), "image/png"),
    "palette PNG": (encode(gradient().convert("P")), "image/png"),
    "RGBA PNG, any size": (encode(gradient((300, 180)).convert("RGBA")), "image/png"),
    "base64 JSON": (json.dumps({"data": base64.b64encode(encode(gradient())).decode()}).encode(), "application/json"),
}


@pytest.fixture(scope="module")
def worker_pid(live_server):
    """The fashion 2.0 workers' pids before any hostile request: the same ones must serve after them all."""
    [description] = live_server.client.describe("fashion", "2.0")
    return sorted(w["pid"] for w in description["workers"])


def post(server, body, content_type, version="2.0"):
    return requests.post(f"{server.client.endpoints.inference}/predictions/fashion/{version}", data=body, timeout=30,
                         headers={"Authorization": f"Bearer {server.client.key('inference')}", "Content-Type": content_type})


def next_request_succeeds(server, samples):
    path, label = samples["fashion"][0]
    response = post(server, path.read_bytes(), "image/png")
    assert response.status_code == 200 and response.json()["predictions"][0]["label"] == label


@pytest.mark.parametrize("case", BAD, ids=list(BAD))
def test_bad_input_gets_a_clear_4xx_and_the_server_keeps_serving(live_server, samples, worker_pid, case):
    body, content_type, status, kind = BAD[case]
    response = post(live_server, body, content_type)
    assert response.status_code == status, response.text
    error = response.json()
    assert error["code"] == status and error["message"] and (kind is None or error["type"] == kind)
    assert (error["model"], error["version"]) == ("fashion", "2.0")
    next_request_succeeds(live_server, samples)


@pytest.mark.parametrize("case", VALID, ids=list(VALID))
def test_awkward_but_valid_images_are_answered(live_server, case):
    body, content_type = VALID[case]
    response = post(live_server, body, content_type)
    assert response.status_code == 200, response.text
    assert len(response.json()["predictions"]) == 3


def test_a_body_over_the_size_limit_is_refused_by_the_frontend(live_server, samples):
    # TorchServe's max_request_size (6553500 bytes) is checked before any handler runs: 413, empty body.
    response = post(live_server, os.urandom(7_000_000), "image/png")
    assert response.status_code == 413
    next_request_succeeds(live_server, samples)


def test_the_worker_survived_every_bad_request(live_server, worker_pid):
    [description] = live_server.client.describe("fashion", "2.0")
    assert sorted((w["pid"], w["status"]) for w in description["workers"]) == [(pid, "READY") for pid in worker_pid]
