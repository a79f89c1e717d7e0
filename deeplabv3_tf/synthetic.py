"""Generated scenes: images with shapes of known classes and their label maps.

Used by the demo and the tests wherever real data is not available. Each
object is a filled rectangle, ellipse or triangle whose colour is its class's
palette colour (jittered), on a textured background, so that a model can learn
the classes from colour and shape alone.
"""

from __future__ import annotations

import numpy as np

from deeplabv3_tf.classes import IGNORE_LABEL, voc_palette


def _shape_mask(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """A random rectangle, ellipse or triangle covering 4-40% of each side."""
    yy, xx = np.mgrid[:height, :width]
    h = rng.uniform(0.2, 0.6) * height
    w = rng.uniform(0.2, 0.6) * width
    cy = rng.uniform(h / 2, height - h / 2)
    cx = rng.uniform(w / 2, width - w / 2)
    kind = rng.integers(3)
    if kind == 0:
        return (np.abs(yy - cy) <= h / 2) & (np.abs(xx - cx) <= w / 2)
    if kind == 1:
        return ((yy - cy) / (h / 2)) ** 2 + ((xx - cx) / (w / 2)) ** 2 <= 1.0
    # Triangle with apex on top: inside both slanted edges and above the base.
    top, base = cy - h / 2, cy + h / 2
    rel = (yy - top) / max(h, 1.0)
    return (yy <= base) & (yy >= top) & (np.abs(xx - cx) <= rel * w / 2)


def void_band(labels: np.ndarray, width: int) -> np.ndarray:
    """Marks pixels within `width` of a class boundary as IGNORE_LABEL.

    PASCAL VOC annotations carry such a void band around every object.
    """
    if width <= 0:
        return labels
    out = labels.copy()
    edge = np.zeros(labels.shape, bool)
    edge[:-1] |= labels[:-1] != labels[1:]
    edge[1:] |= labels[:-1] != labels[1:]
    edge[:, :-1] |= labels[:, :-1] != labels[:, 1:]
    edge[:, 1:] |= labels[:, :-1] != labels[:, 1:]
    grown = edge.copy()
    for _ in range(width - 1):
        g = grown.copy()
        g[1:] |= grown[:-1]
        g[:-1] |= grown[1:]
        g[:, 1:] |= grown[:, :-1]
        g[:, :-1] |= grown[:, 1:]
        grown = g
    out[grown] = IGNORE_LABEL
    return out


def draw_scene(rng: np.random.Generator, height: int, width: int,
               num_classes: int = 21, max_objects: int = 3,
               void_width: int = 0, classes: list[int] | None = None,
               ) -> tuple[np.ndarray, np.ndarray]:
    """Draws one scene.

    Args:
      rng: Random generator (the scene is a pure function of its state).
      height, width: Image size.
      num_classes: Classes including background 0; objects use 1..C-1.
      max_objects: At most this many objects (at least one).
      void_width: Width of the IGNORE_LABEL band on object boundaries.
      classes: Object classes to draw, instead of random ones.

    Returns:
      image uint8 [H, W, 3] RGB, labels uint8 [H, W] in {0..C-1, IGNORE_LABEL}.
    """
    palette = voc_palette().astype(np.float32)
    if classes is None:
        count = int(rng.integers(1, max_objects + 1))
        classes = [int(c) for c in rng.integers(1, num_classes, count)]
    labels = np.zeros((height, width), np.uint8)
    # Background: low-contrast noise around a dull grey-green.
    image = (np.array([90.0, 100.0, 80.0]) + rng.normal(0, 12, (height, width, 3)))
    for cls in classes:
        mask = _shape_mask(rng, height, width)
        colour = palette[cls] * 0.8 + 25 + rng.normal(0, 8, 3)
        image[mask] = colour + rng.normal(0, 10, (int(mask.sum()), 3))
        labels[mask] = cls
    image = np.clip(image, 0, 255).astype(np.uint8)
    return image, void_band(labels, void_width)
