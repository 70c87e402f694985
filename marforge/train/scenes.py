"""Scenes composed from real Fashion-MNIST photos; the composition is synthetic.

There is no detection or segmentation data set on these machines, so the detector and segmenter
trained here (fashiondet, fashionseg) learn from scenes made of real Fashion-MNIST product photos
placed on a black canvas: each scene is CANVAS x CANVAS 8-bit grayscale, holding 1 to MAX_ITEMS items,
each resized (PIL bilinear) to a random square side in ITEM_SIDES and put at a random position.

- An item's pixels are those of its resized photo above THRESHOLD; only they are drawn (the rest of
  its square is left as it was), so what the scene shows of an item is exactly its mask.
- Later items are drawn over earlier ones. A placement is refused (and redrawn) when it would leave
  an earlier item less than MIN_VISIBLE of its pixels, or cover more than MAX_BOX_OVERLAP of either
  item's box; after each placement every earlier item's mask loses the pixels now covered and its box
  is made again from what is left, so every mask and box describes what the scene really shows.
- A box is xyxy in canvas pixels, at pixel edges: the tight box of the mask's pixels, [x0, y0, x1 + 1,
  y1 + 1] for a mask whose columns are x0..x1 and rows y0..y1 (so its area is the pixel rectangle's).
- Training scenes use only the train split's photos, held-out scenes only the test split's; a
  composition is a pure function of (split, count, seed): the same seed gives the same scenes.

    from marforge.train import datasets, scenes
    held_out = scenes.compose(datasets.load("fashion-mnist"), "test", 500, seed=1)
"""

from dataclasses import dataclass

import numpy as np
import torch

from marforge.train import datasets

PROVENANCE = "scenes composed from real Fashion-MNIST photos; the composition is synthetic"
CANVAS = 96  # scenes are CANVAS x CANVAS pixels
MAX_ITEMS = 4
ITEM_SIDES = (22, 44)  # an item's resized side, drawn uniformly from this inclusive range
THRESHOLD = 16  # an item's pixels (0..255, after resizing) above this are drawn: its mask
MIN_PIXELS = 40  # a resized photo with fewer mask pixels than this is not used
MIN_VISIBLE = 0.6  # every item keeps at least this fraction of its own mask pixels in view
MAX_BOX_OVERLAP = 0.3  # two items' boxes may share at most this fraction of the smaller box
PLACEMENT_TRIES = 30
SPLITS = ("train", "test")


@dataclass(frozen=True)
class SceneSet:
    """Composed scenes. Item j of scene i is instance j + 1 in instances[i]; labels are 0-based
    Fashion-MNIST class indices (the models add 1: 0 is their background); sources are the items'
    indices into the split's photos, each resized to side x side and placed with its top left corner
    at (top, left)."""

    split: str
    seed: int
    images: torch.Tensor  # N x H x W uint8
    instances: torch.Tensor  # N x H x W uint8: 0 background, j + 1 where item j is seen
    boxes: list  # per scene: K x 4 float32 xyxy at pixel edges
    labels: list  # per scene: K int64, 0-based Fashion-MNIST class indices
    sources: list  # per scene: K int64 indices into the split's images
    placements: list  # per scene: K x 3 int64 (top, left, side) of each item's resized square

    def __len__(self) -> int:
        return len(self.images)

    def masks(self, i: int) -> torch.Tensor:
        """K x H x W bool: the visible pixels of each item of scene i."""
        ids = torch.arange(1, len(self.labels[i]) + 1, dtype=torch.uint8)
        return self.instances[i].unsqueeze(0) == ids[:, None, None]

    def class_maps(self) -> torch.Tensor:
        """N x H x W int64 segmentation targets: 0 background, else the item's class index + 1."""
        maps = torch.zeros(self.instances.shape, dtype=torch.int64)
        for i, labels in enumerate(self.labels):
            table = torch.cat([torch.zeros(1, dtype=torch.int64), labels + 1])
            maps[i] = table[self.instances[i].long()]
        return maps


def tight_box(mask: np.ndarray) -> np.ndarray:
    """[x0, y0, x1 + 1, y1 + 1] (float32) of the True pixels of an H x W mask (which has some)."""
    rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
    return np.array([cols[0], rows[0], cols[-1] + 1, rows[-1] + 1], dtype=np.float32)


def _box_overlap(a: np.ndarray, b: np.ndarray) -> float:
    """The intersection of boxes a and b as a fraction of the smaller one's area."""
    w = min(a[2], b[2]) - max(a[0], b[0])
    h = min(a[3], b[3]) - max(a[1], b[1])
    if w <= 0 or h <= 0:
        return 0.0
    smaller = min((a[2] - a[0]) * (a[3] - a[1]), (b[2] - b[0]) * (b[3] - b[1]))
    return float(w * h / smaller)


def _resized(photo: np.ndarray, side: int) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.fromarray(photo).resize((side, side), Image.Resampling.BILINEAR), dtype=np.uint8)


def _place(rng: np.random.Generator, item: np.ndarray, visible: list, full_counts: list,
           boxes: list) -> tuple[int, int, np.ndarray] | None:
    """(top, left, canvas-sized mask) for `item` at a random position the overlap rules allow, or None."""
    side = item.shape[0]
    for _ in range(PLACEMENT_TRIES):
        top, left = (int(v) for v in rng.integers(0, CANVAS - side + 1, size=2))
        mask = np.zeros((CANVAS, CANVAS), dtype=bool)
        mask[top : top + side, left : left + side] = item > THRESHOLD
        box = tight_box(mask)
        if all(_box_overlap(box, other) <= MAX_BOX_OVERLAP for other in boxes) and all(
            (seen & ~mask).sum() >= MIN_VISIBLE * full for seen, full in zip(visible, full_counts, strict=True)
        ):
            return top, left, mask
    return None


def _compose_one(rng: np.random.Generator, photos: np.ndarray, photo_labels: np.ndarray) -> tuple:
    """(image, instances, boxes, labels, sources, placements) of one scene drawn with `rng`."""
    image = np.zeros((CANVAS, CANVAS), dtype=np.uint8)
    visible: list = []  # each item's pixels still in view
    full_counts: list = []  # each item's own mask size, before anything covered it
    boxes: list = []
    labels: list = []
    sources: list = []
    placements: list = []
    for _ in range(int(rng.integers(1, MAX_ITEMS + 1))):
        index = int(rng.integers(len(photos)))
        item = _resized(photos[index], int(rng.integers(ITEM_SIDES[0], ITEM_SIDES[1] + 1)))
        if (item > THRESHOLD).sum() < MIN_PIXELS:
            continue
        placed = _place(rng, item, visible, full_counts, boxes)
        if placed is None:
            continue
        top, left, mask = placed
        side = item.shape[0]
        window = image[top : top + side, left : left + side]
        window[item > THRESHOLD] = item[item > THRESHOLD]
        visible = [seen & ~mask for seen in visible]
        boxes = [tight_box(seen) for seen in visible]
        visible.append(mask)
        full_counts.append(int(mask.sum()))
        boxes.append(tight_box(mask))
        labels.append(int(photo_labels[index]))
        sources.append(index)
        placements.append((top, left, side))
    instances = np.zeros((CANVAS, CANVAS), dtype=np.uint8)
    for j, seen in enumerate(visible):
        instances[seen] = j + 1
    return image, instances, boxes, labels, sources, placements


def compose(data: datasets.Dataset, split: str, count: int, seed: int) -> SceneSet:
    """`count` scenes from the `split` ("train" or "test") photos of a datasets.Dataset, drawn with
    numpy's Generator seeded `seed` (the same arguments give the same scenes)."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, not {split!r}")
    photos = (data.train_images if split == "train" else data.test_images).numpy()
    photo_labels = (data.train_labels if split == "train" else data.test_labels).numpy()
    rng = np.random.default_rng(seed)
    images: list = []
    instances: list = []
    boxes: list = []
    labels: list = []
    sources: list = []
    placements: list = []
    while len(images) < count:
        image, inst, scene_boxes, scene_labels, scene_sources, scene_places = _compose_one(rng, photos, photo_labels)
        if not scene_labels:  # every photo drawn was too faint to use: draw the scene again
            continue
        images.append(torch.from_numpy(image))
        instances.append(torch.from_numpy(inst))
        boxes.append(torch.from_numpy(np.stack(scene_boxes)))
        labels.append(torch.tensor(scene_labels, dtype=torch.int64))
        sources.append(torch.tensor(scene_sources, dtype=torch.int64))
        placements.append(torch.tensor(scene_places, dtype=torch.int64))
    return SceneSet(split, seed, torch.stack(images), torch.stack(instances), boxes, labels, sources, placements)
