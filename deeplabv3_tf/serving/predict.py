"""Segmenting image files: colour masks and overlays, from a run or a SavedModel.

Colours, names and label ids are the dataset's (the run's experiment.json or
the SavedModel's metadata signature).
"""

from __future__ import annotations

import io
import os
from typing import Callable, Sequence

import numpy as np
import tensorflow as tf
from PIL import Image

from deeplabv3_tf.data.dataset import background_class
from deeplabv3_tf.data.images import InvalidExampleError, read_bytes, read_image
from deeplabv3_tf.serving.image_header import OK, PROBLEMS, read_header
from deeplabv3_tf.evaluation.inference import Windows, predict_labels
from deeplabv3_tf.runs import load_trained_model
from deeplabv3_tf.serving.options import DEFAULT_MAX_PIXELS, DEFAULT_WINDOWED_MAX_PIXELS
from deeplabv3_tf.data.visualize import colorize, overlay

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp")


@tf.function(input_signature=[tf.TensorSpec([], tf.string)])
def _header(data):
    header = read_header(data)
    return header.height, header.width, header.frames, header.problem


def budget_problem(data: bytes, max_pixels: int) -> str | None:
    """Why an encoded image cannot be segmented within `max_pixels`, or None.

    Read from its header, as the exported model does, before anything decodes it.
    """
    height, width, frames, problem = (int(v) for v in _header(tf.constant(data)))
    if problem != OK:
        return PROBLEMS[problem]
    pixels = height * width * frames
    if max_pixels and pixels > max_pixels:
        shown = f"{height}x{width}" + (f" x {frames} frames" if frames > 1 else "")
        return (f"{shown} = {pixels} pixels, over the budget of {max_pixels} pixels "
                "(--max_pixels)")
    return None


def reason_of(error: Exception, path: str) -> str:
    """One line saying why an image was skipped (a served model's refusal, a
    decoding error or an unreadable file), without the path again."""
    if isinstance(error, tf.errors.OpError):
        text = error.message
        if "assertion failed: [" in text:  # the served model's own check
            text = text.split("assertion failed: [", 1)[1].split("\n")[0].removesuffix("]")
            text = text.removeprefix("image 0: ")
        text = text.split("[Op:")[0].split("\n")[0]
        return text.split("}} ")[-1].strip()
    return str(error).removeprefix(f"{path}: ")


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
        # Exports made before label ids were exported have none: class ids.
        self.label_ids = (metadata["label_ids"].numpy() if "label_ids" in metadata
                          else np.arange(len(self.class_names)))
        self.dataset = metadata["dataset"].numpy().decode() if "dataset" in metadata else ""

    def __call__(self, encoded: bytes) -> np.ndarray:
        out = self.signature(images=tf.constant([encoded]))
        h, w = int(out["height"][0]), int(out["width"][0])
        return out["semantic"][0, :h, :w].numpy()


class CheckpointPredictor:
    """Masks from a training run's checkpoint (any output stride, scales, flip)."""

    def __init__(self, run_dir: str, output_stride: int | None = None,
                 scales: Sequence[float] = (1.0,), flip: bool = False,
                 windows: Windows | None = None):
        model, experiment, _ = load_trained_model(run_dir, output_stride)
        info = experiment.data.info
        self.class_names = list(info.class_names)
        self.palette = np.asarray(info.colors, np.uint8)
        self.label_ids = np.asarray(info.own_ids)
        self.dataset = info.name
        self._predict = tf.function(
            lambda images: predict_labels(model, images, scales, flip, windows),
            input_signature=[tf.TensorSpec([1, None, None, 3], tf.float32)])

    def __call__(self, encoded: bytes) -> np.ndarray:
        image = tf.io.decode_image(encoded, channels=3, expand_animations=False)
        return self._predict(tf.cast(image, tf.float32)[None])[0].numpy()


def predict_files(source: str, inputs: Sequence[str], output_dir: str,
                  output_stride: int | None = None, scales: Sequence[float] = (1.0,),
                  flip: bool = False, max_pixels: int | None = None,
                  windows: Windows | None = None, label_ids: bool = False,
                  log: Callable[[str], None] = print) -> list[dict]:
    """Writes <name>_mask.png (colour), <name>_overlay.png and <name>_labels.png (ids).

    With `label_ids`, also label_ids/<image file name>.png: the dataset's own
    id of each pixel's class (Cityscapes: train id -> label id, the files
    cityscapesScripts and the Cityscapes test server read: they find each
    image's prediction by the <city>_<seq>_<frame> its name starts with).

    Args:
      source: A training run directory (has experiment.json) or a SavedModel
        version directory (has saved_model.pb).
      inputs: Image files and/or directories.
      output_dir: Where the PNGs go.
      output_stride, scales, flip, windows: Inference settings (checkpoint
        source only; a SavedModel uses what was exported).
      max_pixels: Images with more pixels (GIF: x frames) are skipped before
        decoding, as are unreadable ones; 0 = no limit; None: the serving
        default (DEFAULT_WINDOWED_MAX_PIXELS with windows, else
        DEFAULT_MAX_PIXELS). A SavedModel applies its own budget as well.
      log: Where one line per image goes.

    Returns:
      One dict per image: path, and outputs and classes present (names), or
      "skipped" (why) for an image over budget or unreadable.
    """
    if max_pixels is None:
        max_pixels = DEFAULT_WINDOWED_MAX_PIXELS if windows else DEFAULT_MAX_PIXELS
    if os.path.exists(os.path.join(source, "saved_model.pb")):
        predictor = SavedModelPredictor(source)
    else:
        predictor = CheckpointPredictor(source, output_stride, scales, flip, windows)
    if label_ids and np.array_equal(predictor.label_ids, np.arange(len(predictor.class_names))):
        log(f"note: {source} has no label ids of its own ({predictor.dataset or 'unnamed'} "
            "dataset): label_ids/ holds the class ids.")
    os.makedirs(output_dir, exist_ok=True)
    if label_ids:
        os.makedirs(os.path.join(output_dir, "label_ids"), exist_ok=True)
    results = []
    for path in list_images(inputs):
        try:
            data = read_bytes(path)
            problem = budget_problem(data, max_pixels)
            if problem:
                raise InvalidExampleError(problem)
            image = read_image(path, data)  # Validates and converts to RGB 8-bit.
            labels = predictor(image.data)
        except (InvalidExampleError, tf.errors.InvalidArgumentError) as e:
            reason = reason_of(e, path)
            log(f"{path}: skipped: {reason}")
            results.append({"path": path, "skipped": reason})
            continue
        rgb = np.asarray(Image.open(io.BytesIO(image.data)).convert("RGB"))
        stem = os.path.splitext(os.path.basename(path))[0]
        outputs = {"mask": os.path.join(output_dir, f"{stem}_mask.png"),
                   "overlay": os.path.join(output_dir, f"{stem}_overlay.png"),
                   "labels": os.path.join(output_dir, f"{stem}_labels.png")}
        Image.fromarray(colorize(labels.astype(np.uint8), predictor.palette)).save(outputs["mask"])
        Image.fromarray(overlay(rgb, labels, predictor.palette,
                                background=background_class(predictor.class_names))).save(
            outputs["overlay"])
        Image.fromarray(labels.astype(np.uint8)).save(outputs["labels"])
        if label_ids:
            outputs["label_ids"] = os.path.join(output_dir, "label_ids", f"{stem}.png")
            ids = predictor.label_ids[labels]
            Image.fromarray(ids.astype(np.uint8 if ids.max() < 256 else np.uint16)).save(
                outputs["label_ids"])
        present = [predictor.class_names[c] for c in np.unique(labels)
                   if c < len(predictor.class_names)]
        log(f"{path}: {', '.join(present)} -> {outputs['overlay']}")
        results.append({"path": path, "outputs": outputs, "classes": present})
    return results

