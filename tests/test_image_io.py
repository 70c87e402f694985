"""Request decoding and preprocessing (handlers/protocols.py reads the body, handlers/image_io.py decodes it),
with images made here by Pillow."""

import base64
import io
import json

import classification
import contract
import image_io
import numpy as np
import protocols
import pytest
import torch
from images import encode, gradient, multi_frame, png_declaring, sixteen_bit_png, truncated
from PIL import Image

CONFIG = contract.HandlerConfig.from_dict({
    "image_size": [28, 28], "color": "grayscale", "mean": [0.5], "std": [0.25],
    "labels": [str(i) for i in range(10)], "top_k": 3, "max_pixels": 4096 * 4096,
})


def pixels(tensor):
    """Back from a normalised tensor to 0..255 values, for comparing with source pixels."""
    return (tensor * CONFIG.std[0] + CONFIG.mean[0]) * 255


def test_grayscale_png_round_trips_exactly():
    image = gradient()
    tensor = protocols.prepare({"body": bytearray(encode(image))}, CONFIG)
    assert tensor.shape == (1, 28, 28)
    assert torch.allclose(pixels(tensor)[0], torch.tensor(np.asarray(image), dtype=torch.float32), atol=1e-3)


def test_normalisation_uses_mean_and_std():
    white = Image.new("L", (28, 28), 255)
    tensor = protocols.prepare({"body": encode(white)}, CONFIG)
    assert torch.allclose(tensor, torch.full((1, 28, 28), (1.0 - 0.5) / 0.25))


@pytest.mark.parametrize("mode", ["RGB", "P", "CMYK", "1", "LA", "RGBA"])
def test_other_modes_become_grayscale(mode):
    image = gradient().convert(mode)
    fmt = "JPEG" if mode == "CMYK" else "PNG"
    tensor = protocols.prepare({"body": encode(image, fmt)}, CONFIG)
    assert tensor.shape == (1, 28, 28)
    if mode in ("RGB", "P", "LA", "RGBA"):  # lossless and opaque: the same pixels come back
        assert torch.allclose(pixels(tensor)[0], torch.tensor(np.asarray(gradient()), dtype=torch.float32), atol=1.5)


def test_sixteen_bit_png_is_scaled_not_clipped():
    assert Image.open(io.BytesIO(sixteen_bit_png())).mode == "I;16"
    tensor = protocols.prepare({"body": sixteen_bit_png()}, CONFIG)
    assert torch.allclose(pixels(tensor)[0], torch.tensor(np.asarray(gradient()), dtype=torch.float32), atol=1e-3)


def test_transparent_pixels_become_black():
    image = Image.new("RGBA", (28, 28), (255, 255, 255, 0))
    tensor = protocols.prepare({"body": encode(image)}, CONFIG)
    assert torch.allclose(pixels(tensor), torch.zeros(1, 28, 28), atol=1e-3)


def test_any_size_is_resized():
    tensor = protocols.prepare({"body": encode(gradient((300, 200)).convert("RGB"), "JPEG")}, CONFIG)
    assert tensor.shape == (1, 28, 28)


def test_rgb_config_gives_three_channels():
    config = contract.HandlerConfig.from_dict({**vars(CONFIG), "color": "rgb", "mean": [0.5] * 3, "std": [0.25] * 3})
    tensor = protocols.prepare({"body": encode(Image.new("RGB", (10, 10), (255, 0, 0)))}, config)
    assert tensor.shape == (3, 28, 28)
    assert tensor[0].min() > 1.9 and tensor[1].max() < -1.9


@pytest.mark.parametrize("row", [
    {"body": encode(gradient())},
    {"data": encode(gradient())},  # multipart field "data"
    {"file": encode(gradient())},  # multipart field of another name
    {"body": {"data": base64.b64encode(encode(gradient())).decode()}},  # JSON parsed by TorchServe
    {"body": json.dumps({"data": base64.b64encode(encode(gradient())).decode()}).encode()},  # JSON as bytes
])
def test_every_way_of_sending_an_image(row):
    assert protocols.parse(row, CONFIG).items == [("image", encode(gradient()))]


@pytest.mark.parametrize("row, kind, fragment", [
    ({"body": b""}, "EmptyInput", "no image"),
    ({}, "EmptyInput", "no image"),
    ({"body": "hello"}, "InvalidInput", "text, not an image"),
    ({"body": b"{not json"}, "InvalidJSON", "not valid JSON"),
    ({"body": {"image": "abc"}}, "InvalidJSON", "got keys image"),
    ({"body": [1, 2]}, "InvalidJSON", "got list"),
    ({"body": {"data": "@@not base64@@"}}, "InvalidBase64", "not valid base64"),
])
def test_bad_requests_say_what_is_wrong(row, kind, fragment):
    with pytest.raises(image_io.BadInput) as caught:
        protocols.prepare(row, CONFIG)
    assert caught.value.kind == kind and fragment in caught.value.message
    assert 400 <= caught.value.code < 500


def test_random_bytes_are_not_an_image():
    with pytest.raises(image_io.BadInput, match="not an image format") as caught:
        protocols.prepare({"body": bytes(range(256)) * 4}, CONFIG)
    assert caught.value.code == 400


@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
def test_truncated_files_are_refused(fmt):
    with pytest.raises(image_io.BadInput, match="broken or truncated"):
        protocols.prepare({"body": truncated(fmt)}, CONFIG)


@pytest.mark.parametrize("side, fragment", [
    (5000, "declares 5000x5000 pixels"),  # over our max_pixels, under Pillow's own limit
    (100000, "decompression bomb"),  # Pillow refuses this itself
])
def test_absurd_declared_dimensions_are_refused_before_decoding(side, fragment):
    with pytest.raises(image_io.BadInput) as caught:
        protocols.prepare({"body": png_declaring(side, side)}, CONFIG)
    assert caught.value.kind == "ImageTooLarge" and caught.value.code == 413
    assert fragment in caught.value.message


@pytest.mark.parametrize("fmt", ["GIF", "TIFF"])
def test_multi_frame_images_are_refused(fmt):
    with pytest.raises(image_io.BadInput, match=f"the {fmt} image has 2 frames") as caught:
        protocols.prepare({"body": multi_frame(fmt)}, CONFIG)
    assert caught.value.kind == "UnsupportedImage"


@pytest.mark.parametrize("data", [encode(Image.new("L", (1, 1))), encode(Image.new("L", (200, 3))),
                                  png_declaring(0, 0)], ids=["1x1", "200x3", "0x0"])
def test_images_too_small_to_classify_are_refused(data):
    with pytest.raises(image_io.BadInput) as caught:
        protocols.prepare({"body": data}, CONFIG)
    assert caught.value.code == 400 and caught.value.kind in {"ImageTooSmall", "InvalidImage"}


def test_top_k_orders_labels_by_probability():
    probabilities = torch.tensor([0.1, 0.6, 0.05, 0.25] + [0.0] * 6)
    top = classification.top_k(probabilities, CONFIG)
    assert [t["label"] for t in top] == ["1", "3", "0"]
    assert top[0]["probability"] == pytest.approx(0.6)


@pytest.mark.parametrize("change, message", [
    ({"color": "cmyk"}, "color must be one of"),
    ({"mean": [0.1, 0.2]}, "need 1 value"),
    ({"shape": 3}, "unknown key"),
    ({"labels": []}, "labels must not be empty"),
])
def test_config_errors_are_specific(change, message):
    with pytest.raises(ValueError, match=message):
        contract.HandlerConfig.from_dict({**vars(CONFIG), **change})


EXACT = [  # (row, status, type, message): every error type a client can get, word for word
    ({"body": b""}, 400, "EmptyInput", 'the request has no image: send the image bytes as the body (curl -T image.png), '
     'as a multipart field, or as base64 in JSON {"data": ...}'),
    ({"body": "hello"}, 400, "InvalidInput", 'the body is text, not an image: send the image bytes, or JSON '
     '{"data": "<base64 image>"} with Content-Type: application/json'),
    ({"body": b"{not json"}, 400, "InvalidJSON", "the body starts like JSON but is not valid JSON: Expecting property "
     "name enclosed in double quotes: line 1 column 2 (char 1)"),
    ({"body": {"image": "abc"}}, 400, "InvalidJSON", 'a JSON body must be an object with one key, "data", holding a '
     "base64-encoded image (got keys image)"),
    ({"body": {"data": "@@not base64@@"}}, 400, "InvalidBase64", '"data" is not valid base64: Only base64 data is allowed'),
    ({"body": bytes(range(256)) * 4}, 400, "InvalidImage", "the body (1024 bytes) is not an image format Pillow can "
     "read (PNG, JPEG, GIF, BMP, TIFF, WebP, ...)"),
    ({"body": truncated("PNG")}, 400, "InvalidImage", "the image data is broken or truncated: OSError: image file is truncated"),
    ({"body": multi_frame("GIF")}, 400, "UnsupportedImage", "the GIF image has 2 frames: send one frame"),
    ({"body": encode(Image.fromarray(np.zeros((10, 10), dtype=np.float32)), "TIFF")}, 400, "UnsupportedImage",
     "floating-point images (mode F) are not supported: send 8- or 16-bit pixels"),
    ({"body": encode(Image.new("L", (1, 1)))}, 400, "ImageTooSmall",
     "the image is 1x1 pixels: too small to classify (each side needs at least 8)"),
    ({"body": png_declaring(5000, 5000)}, 413, "ImageTooLarge",
     "the image declares 5000x5000 pixels, more than the 16777216 this model accepts"),
]


@pytest.mark.parametrize("row, status, kind, message", EXACT, ids=[f"{e[2]}-{i}" for i, e in enumerate(EXACT)])
def test_each_error_type_says_exactly_what_was_wrong(row, status, kind, message):
    with pytest.raises(image_io.BadInput) as caught:
        protocols.prepare(row, CONFIG)
    assert caught.value.as_dict() == {"code": status, "type": kind, "message": message}
