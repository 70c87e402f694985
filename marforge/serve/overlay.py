"""An explanation drawn over its image: what `make explain` writes as a PNG.

The answer of /explanations carries, per explained label, a heatmap (values in [0, 1] at the model's
feature-map or input resolution) and the box of the original image that the model's view covered.
Each heatmap is stretched over that box, coloured from blue (0) through green to red (1) and
blended with the image; one panel per label, side by side, each captioned with its label and
probability.
"""

import io

import numpy as np
from PIL import Image, ImageDraw

ALPHA = 0.45  # the heatmap's share of each blended pixel
CAPTION = 18  # pixels above each panel


def colour(values):
    """[0, 1] values (H x W) -> H x W x 3 uint8, a blue-cyan-green-yellow-red ramp."""
    v = np.clip(values, 0, 1)[..., None]
    stops = np.array([[0, 0, 255], [0, 255, 255], [0, 255, 0], [255, 255, 0], [255, 0, 0]], dtype=np.float64)
    position = v * (len(stops) - 1)
    low = np.floor(position).astype(int).clip(0, len(stops) - 2)
    frac = position - low
    return (stops[low[..., 0]] * (1 - frac) + stops[low[..., 0] + 1] * frac).astype(np.uint8)


def panel(image, heatmap, box, caption):
    """One labelled panel: `image` (RGB) with `heatmap` blended over `box`."""
    left, top, right, bottom = (round(v) for v in box)
    width, height = max(1, right - left), max(1, bottom - top)
    values = np.asarray(Image.fromarray(np.asarray(heatmap, dtype=np.float32), "F").resize((width, height), Image.BILINEAR))
    region = image.crop((left, top, left + width, top + height))
    blended = (np.asarray(region, dtype=np.float64) * (1 - ALPHA) + colour(values) * ALPHA).astype(np.uint8)
    shown = image.copy()
    shown.paste(Image.fromarray(blended, "RGB"), (left, top))
    framed = Image.new("RGB", (shown.width, shown.height + CAPTION), "white")
    framed.paste(shown, (0, CAPTION))
    ImageDraw.Draw(framed).text((4, 3), caption, fill="black")
    return framed


def render(image_bytes, answer):
    """The PNG bytes of every explained label's panel, side by side."""
    image = Image.open(io.BytesIO(image_bytes)).convert("RGB")
    explanation = answer["explanation"]
    panels = [panel(image, m["heatmap"], explanation["box"],
                    f"{m['label']} {m['probability']:.3f} ({explanation['method']})") for m in explanation["maps"]]
    strip = Image.new("RGB", (sum(p.width for p in panels), max(p.height for p in panels)), "white")
    x = 0
    for p in panels:
        strip.paste(p, (x, 0))
        x += p.width
    out = io.BytesIO()
    strip.save(out, format="PNG")
    return out.getvalue()
