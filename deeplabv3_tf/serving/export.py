"""SavedModel export for TensorFlow Serving.

`export_saved_model` writes EXPORT_DIR/<version>/ (a positive integer, as TF
Serving expects), built from the experiment.json saved beside the checkpoint so
that preprocessing and architecture cannot drift from training; only the
inference output stride may differ (default: the training one). What is served
(signatures, request checks, the pixel budget) is `serving.SegmentationModule`.

The dataset's description (names, colours, label ids: the run's, which
training took from its records, or one given at export) is in the metadata
signature and travels as assets (assets/class_names.txt, assets/palette.txt,
assets/label_ids.txt). assets.extra/tf_serving_warmup_requests holds one
PredictionLog per image signature; assets.extra/export_config.json the
experiment, checkpoint and export options. No function is XLA-compiled: TF
Serving does not reliably load such graphs (tensorflow/serving#2214).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import tempfile
from typing import Callable, Sequence

import numpy as np
import tensorflow as tf

from deeplabv3_tf.core.files import staged_directory
from deeplabv3_tf.data.palette_file import with_palette_file
from deeplabv3_tf.data import schema
from deeplabv3_tf.model.fold import fold_batch_norm
from deeplabv3_tf.core.precision import check_precision
from deeplabv3_tf.runs import load_trained_model
from deeplabv3_tf.serving.module import SegmentationModule
from deeplabv3_tf.serving.options import ExportOptions

WARMUP_FILE = os.path.join("assets.extra", "tf_serving_warmup_requests")
CONFIG_FILE = os.path.join("assets.extra", "export_config.json")


def next_version(export_dir: str) -> int:
    """1 + the largest integer version directory in `export_dir` (1 if none)."""
    versions = [int(d) for d in os.listdir(export_dir) if d.isdigit()] \
        if os.path.isdir(export_dir) else []
    return max(versions, default=0) + 1


def _warmup_images(module: SegmentationModule) -> list[np.ndarray]:
    """Two random images of odd sizes (97x131 and 64x48) that every signature
    answers within its budget: a warm-up request that fails stops TF Serving from
    loading the model, so with a small budget they are made smaller."""
    sizes = [(97, 131), (64, 48)]
    # multiscale_flip has the smallest budgets; encoded_image gets both images in
    # one request, answered as 2 x 97 x 131.
    per_image, per_request, _ = module.checks.dense_budgets(module.options.scales)
    limits = [limit for limit in (per_image, per_request // 2) if limit]
    if limits:
        factor = min(1.0, math.sqrt(min(limits) / (97 * 131)))
        sizes = [(max(1, int(h * factor)), max(1, int(w * factor))) for h, w in sizes]
    rng = np.random.default_rng(0)
    return [rng.integers(0, 255, (h, w, 3), dtype=np.uint8) for h, w in sizes]


def _warmup_requests(path: str, images: Sequence[np.ndarray]) -> int:
    """Writes PredictionLog records (one per image signature) for TF Serving warm-up."""
    from tensorflow_serving.apis import model_pb2, predict_pb2, prediction_log_pb2

    encoded = [tf.io.encode_png(image).numpy() for image in images]
    example = tf.train.Example(features=tf.train.Features(feature={
        schema.IMAGE_ENCODED: tf.train.Feature(bytes_list=tf.train.BytesList(value=encoded[:1]))}))
    inputs = {
        "serving_default": ("images", tf.make_tensor_proto(images[0][None])),
        "multiscale_flip": ("images", tf.make_tensor_proto(images[0][None])),
        "encoded_image": ("images", tf.make_tensor_proto(encoded)),
        "tf_example": ("examples", tf.make_tensor_proto([example.SerializeToString()])),
    }
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with tf.io.TFRecordWriter(path) as writer:
        for signature, (name, tensor) in inputs.items():
            request = predict_pb2.PredictRequest(
                model_spec=model_pb2.ModelSpec(signature_name=signature))
            request.inputs[name].CopyFrom(tensor)
            log = prediction_log_pb2.PredictionLog(
                predict_log=prediction_log_pb2.PredictLog(request=request))
            writer.write(log.SerializeToString())
    return len(inputs)


def export_saved_model(run_dir: str, export_dir: str, options: ExportOptions = ExportOptions(),
                       version: int | None = None, checkpoint: str | None = None,
                       palette_file: str | None = None,
                       log: Callable[[str], None] = print) -> str:
    """Exports a training run as EXPORT_DIR/<version>/, ready for TF Serving.

    The version directory appears only when complete (written under a
    temporary name, then renamed), so a server watching EXPORT_DIR never
    loads a half-written model.

    Args:
      palette_file: Colours (and optionally names, label ids) to export
        instead of the run's (`data.palette_file.with_palette_file`).

    Returns:
      The version directory.
    """
    check_precision(options.precision)  # before the run is loaded
    model, experiment, prefix = load_trained_model(run_dir, options.output_stride, checkpoint)
    dataset = experiment.data.info
    if palette_file:
        dataset = with_palette_file(dataset, palette_file)
    if options.fold_batch_norm:
        config = dataclasses.replace(experiment.model, output_stride=(
            options.output_stride or experiment.model.output_stride))
        model = fold_batch_norm(model, config, options.precision)
    version = version or next_version(export_dir)
    if version < 1:
        raise ValueError(f"version={version}: TF Serving versions are positive integers.")
    final = os.path.join(export_dir, str(version))
    if os.path.exists(final):
        raise FileExistsError(f"{final} exists; choose another --version.")
    os.makedirs(export_dir, exist_ok=True)
    # The asset files are copied into the SavedModel by the save; both temporaries have
    # names TF Serving does not take for versions.
    with tempfile.TemporaryDirectory(prefix=f".{version}-assets-", dir=export_dir) as asset_dir, \
            staged_directory(final) as saved:
        module = SegmentationModule(model, experiment, options, dataset)
        assets = {"class_names.txt": [str(name) for name in module.class_names],
                  "palette.txt": [f"{r} {g} {b}" for r, g, b in module.palette],
                  "label_ids.txt": [str(i) for i in module.label_ids]}
        module.assets = []
        for name, lines in assets.items():
            path = os.path.join(asset_dir, name)
            with open(path, "w") as f:
                f.write("".join(f"{line}\n" for line in lines))
            module.assets.append(tf.saved_model.Asset(path))
        tf.saved_model.save(module, saved, signatures=module.signatures())
        warm = _warmup_images(module)
        _warmup_requests(os.path.join(saved, WARMUP_FILE), warm)
        with open(os.path.join(saved, CONFIG_FILE), "w") as f:
            json.dump({"experiment": experiment.to_dict(), "checkpoint": prefix,
                       "dataset": dataset.to_dict(),
                       "options": dataclasses.asdict(options),
                       "max_request_pixels": options.request_pixels,
                       "output_stride": module.output_stride}, f, indent=2)
    windows = "" if options.window is None else ", by {}x{} windows".format(*options.window.size)
    log(f"exported {experiment.name} ({prefix}) at output stride {module.output_stride}"
        f"{windows}, {dataset.name or 'unnamed dataset'} classes and colours, to {final}")
    return final
