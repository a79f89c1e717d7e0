"""Segmenting image files: colour masks and overlays, from a run or a SavedModel."""

from __future__ import annotations

import io
import os
from typing import Callable, Sequence

import numpy as np
import tensorflow as tf
from PIL import Image

from deeplabv3_tf.classes import voc_palette
from deeplabv3_tf.data.images import read_image
from deeplabv3_tf.visualize import colorize, overlay

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif")


def list_images(inputs: Sequence[str]) -> list[str]:
    """Image files from a list of files and directories (directories: sorted, not recursive)."""
    paths = []
    for item in inputs:
        if os.path.isdir(item):
            paths += sorted(os.path.join(item, n) for n in os.listdir(item)
                            if n.lower().endswith(IMAGE_SUFFIXES))
        elif os.path.exists(item):
            paths.append(item)
        else:
            raise FileNotFoundError(f"No such image or directory: {item}")
    if not paths:
        raise FileNotFoundError(f"No images in {list(inputs)}.")
    return paths


class SavedModelPredictor:
    """Masks from an exported SavedModel's `encoded_image` signature."""

    def __init__(self, path: str):
        self.loaded = tf.saved_model.load(path)
        self.signature = self.loaded.signatures["encoded_image"]
        metadata = self.loaded.signatures["metadata"](unused=tf.constant(0))
        self.class_names = [n.decode() for n in metadata["class_names"].numpy()]
        self.palette = metadata["palette"].numpy().astype(np.uint8)

    def __call__(self, encoded: bytes) -> np.ndarray:
        out = self.signature(images=tf.constant([encoded]))
        h, w = int(out["height"][0]), int(out["width"][0])
        return out["semantic"][0, :h, :w].numpy()


class CheckpointPredictor:
    """Masks from a training run's checkpoint (any output stride, scales, flip)."""

    def __init__(self, run_dir: str, output_stride: int | None = None,
                 scales: Sequence[float] = (1.0,), flip: bool = False):
        from deeplabv3_tf.export import load_trained_model
        from deeplabv3_tf.inference import predict_labels

        model, experiment, _ = load_trained_model(run_dir, output_stride)
        self.class_names = list(experiment.data.class_names)
        self.palette = voc_palette()[: len(self.class_names)]
        self._predict = tf.function(
            lambda images: predict_labels(model, images, scales, flip),
            input_signature=[tf.TensorSpec([1, None, None, 3], tf.float32)])

    def __call__(self, encoded: bytes) -> np.ndarray:
        image = tf.io.decode_image(encoded, channels=3, expand_animations=False)
        return self._predict(tf.cast(image, tf.float32)[None])[0].numpy()


def predict_files(source: str, inputs: Sequence[str], output_dir: str,
                  output_stride: int | None = None, scales: Sequence[float] = (1.0,),
                  flip: bool = False, log: Callable[[str], None] = print) -> list[dict]:
    """Writes <name>_mask.png (colour), <name>_overlay.png and <name>_labels.png (ids).

    Args:
      source: A training run directory (has experiment.json) or a SavedModel
        version directory (has saved_model.pb).
      inputs: Image files and/or directories.
      output_dir: Where the PNGs go.
      output_stride, scales, flip: Inference settings (checkpoint source only;
        a SavedModel uses what was exported).
      log: Where one line per image goes.

    Returns:
      One dict per image: path, outputs, classes present (names).
    """
    if os.path.exists(os.path.join(source, "saved_model.pb")):
        predictor = SavedModelPredictor(source)
    else:
        predictor = CheckpointPredictor(source, output_stride, scales, flip)
    os.makedirs(output_dir, exist_ok=True)
    results = []
    for path in list_images(inputs):
        image = read_image(path)  # Validates and converts to RGB 8-bit.
        labels = predictor(image.data)
        rgb = np.asarray(Image.open(io.BytesIO(image.data)).convert("RGB"))
        stem = os.path.splitext(os.path.basename(path))[0]
        outputs = {"mask": os.path.join(output_dir, f"{stem}_mask.png"),
                   "overlay": os.path.join(output_dir, f"{stem}_overlay.png"),
                   "labels": os.path.join(output_dir, f"{stem}_labels.png")}
        Image.fromarray(colorize(labels.astype(np.uint8), predictor.palette)).save(outputs["mask"])
        Image.fromarray(overlay(rgb, labels, predictor.palette)).save(outputs["overlay"])
        Image.fromarray(labels.astype(np.uint8)).save(outputs["labels"])
        present = [predictor.class_names[c] for c in np.unique(labels)
                   if c < len(predictor.class_names)]
        log(f"{path}: {', '.join(present)} -> {outputs['overlay']}")
        results.append({"path": path, "outputs": outputs, "classes": present})
    return results

