"""Colour-mapped masks and overlays of predictions on images."""

from __future__ import annotations

import numpy as np

from deeplabv3_tf.data.dataset import voc_palette


def colorize(labels: np.ndarray, palette: np.ndarray | None = None) -> np.ndarray:
    """Maps integer labels [H, W] to colours uint8 [H, W, 3] (VOC palette by default)."""
    palette = voc_palette() if palette is None else np.asarray(palette, np.uint8)
    return palette[np.asarray(labels)]


def overlay(image: np.ndarray, labels: np.ndarray, palette: np.ndarray | None = None,
            alpha: float = 0.5, background: int | None = 0) -> np.ndarray:
    """Blends the colour-mapped labels over an RGB image.

    Args:
      image: uint8 [H, W, 3].
      labels: integer [H, W].
      palette: uint8 [N, 3]; the VOC palette by default.
      alpha: Weight of the mask colour.
      background: Label left unblended (None blends every pixel).

    Returns:
      uint8 [H, W, 3].
    """
    colours = colorize(labels, palette).astype(np.float32)
    blended = (1 - alpha) * image.astype(np.float32) + alpha * colours
    if background is not None:
        keep = np.asarray(labels) == background
        blended[keep] = image[keep]
    return np.clip(blended + 0.5, 0, 255).astype(np.uint8)
