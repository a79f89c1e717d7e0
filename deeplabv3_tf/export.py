"""SavedModel export for TensorFlow Serving.

`export_saved_model` writes EXPORT_DIR/<version>/ (a positive integer, as TF
Serving expects), built from the experiment.json saved beside the checkpoint so
that preprocessing and architecture cannot drift from training; only the
inference output stride may differ (default: the training one). The module owns
preprocessing, model and post-processing. Signatures:

  serving_default   images uint8 [B, H, W, 3] -> semantic int32 [B, H, W]
                    (+ probabilities float32 [B, H, W, C] with with_probabilities)
  multiscale_flip   same, with the export's scales and left-right flip
  encoded_image     images string [B] (JPEG/PNG/GIF/BMP bytes, any sizes) ->
                    semantic int32 [B, Hmax, Wmax] (padded with the ignore label),
                    height, width int32 [B], semantic_png_bytes string [B]
                    (each mask as a PNG at its own size; TF Serving's REST API
                    base64-encodes outputs whose name ends in "_bytes")
  tf_example        examples string [B] (serialised tf.Example with
                    image/encoded) -> as encoded_image
  metadata          unused int32 [] -> class_names string [C], palette int32
                    [C, 3], num_classes, ignore_label, output_stride,
                    training_output_stride, scales, flip, max_side, precision (TF Serving
                    rejects signatures without inputs, hence `unused`)

Class names and the palette also travel as assets (assets/class_names.txt,
assets/palette.txt). assets.extra/tf_serving_warmup_requests holds one
PredictionLog per image signature. No function is XLA-compiled: TF Serving
does not reliably load such graphs (tensorflow/serving#2214).
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import tempfile
from typing import Callable, Sequence

import numpy as np
import tensorflow as tf

from deeplabv3_tf.classes import IGNORE_LABEL, voc_palette
from deeplabv3_tf.data import schema
from deeplabv3_tf.experiments import ExperimentConfig, load_experiment
from deeplabv3_tf.inference import predict_probabilities
from deeplabv3_tf.model import build_deeplabv3
from deeplabv3_tf.model.fold import PRECISIONS, fold_batch_norm
from deeplabv3_tf.model.transfer import latest_checkpoint, restore_model, transfer_weights

DEFAULT_SCALES = (0.5, 0.75, 1.0, 1.25, 1.5, 1.75)
WARMUP_FILE = os.path.join("assets.extra", "tf_serving_warmup_requests")
IMAGE_SIGNATURES = ("serving_default", "multiscale_flip", "encoded_image", "tf_example")


@dataclasses.dataclass(frozen=True)
class ExportOptions:
    """What the exported graph does beyond the trained model.

    Attributes:
      output_stride: Inference output stride (None: the training one).
      scales: Scales of the multiscale_flip signature.
      flip: Left-right flip in multiscale_flip.
      with_probabilities: Add `probabilities` to serving_default and
        multiscale_flip (off by default: 513x513x21 float32 is 22 MB per image,
        above gRPC's default 4 MB message limit).
      max_side: Resize images whose longest side exceeds this inside the graph
        (masks still come back at the original size); 0 = never.
      fold_batch_norm: Fold every BatchNorm into its conv (`model.fold`):
        the same function with fewer ops. In float32 on CPU grappler already
        fuses the (fused) BatchNorm into the conv, so speed is unchanged; the
        bfloat16 graph needs it (Keras' BatchNorm computes in float32).
      precision: "float32", or "bfloat16" for CPUs with AVX512_BF16 or AMX
        (about twice as fast; masks agree with float32 on >= 99.5% of
        pixels). Probabilities stay float32 either way.
    """

    output_stride: int | None = None
    scales: tuple[float, ...] = DEFAULT_SCALES
    flip: bool = True
    with_probabilities: bool = False
    max_side: int = 0
    fold_batch_norm: bool = True
    precision: str = "float32"

    def __post_init__(self):
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision={self.precision!r} is not one of {PRECISIONS}.")
        if self.precision != "float32" and not self.fold_batch_norm:
            raise ValueError("precision='bfloat16' exports the folded graph; "
                             "leave fold_batch_norm on.")


class SegmentationModule(tf.Module):
    """Preprocessing, model and post-processing, as tf.functions for serving."""

    def __init__(self, model, experiment: ExperimentConfig, options: ExportOptions):
        super().__init__(name="deeplabv3")
        self.model = model
        self.options = options
        self.num_classes = experiment.model.num_classes
        self.class_names = list(experiment.data.class_names) or [
            str(i) for i in range(self.num_classes)]
        self.palette = voc_palette()[: self.num_classes].astype(np.int32)
        self.training_output_stride = experiment.model.output_stride
        self.output_stride = options.output_stride or experiment.model.output_stride

        images_spec = tf.TensorSpec([None, None, None, 3], tf.uint8, name="images")
        bytes_spec = tf.TensorSpec([None], tf.string, name="images")
        examples_spec = tf.TensorSpec([None], tf.string, name="examples")
        self.serving_default = tf.function(
            lambda images: self._dense(images, (1.0,), False), input_signature=[images_spec])
        self.multiscale_flip = tf.function(
            lambda images: self._dense(images, options.scales, options.flip),
            input_signature=[images_spec])
        self.encoded_image = tf.function(self._encoded, input_signature=[bytes_spec])
        self.tf_example = tf.function(self._examples, input_signature=[examples_spec])
        self.metadata = tf.function(
            self._metadata, input_signature=[tf.TensorSpec([], tf.int32, name="unused")])

    def signatures(self) -> dict:
        return {name: getattr(self, name) for name in IMAGE_SIGNATURES + ("metadata",)}

    def _probabilities(self, images, scales, flip):
        """float32 [B, H, W, C] for float32 images [B, H, W, 3] in [0, 255]."""
        max_side = self.options.max_side
        if not max_side:
            return predict_probabilities(self.model, images, scales, flip)
        size = tf.shape(images)[1:3]
        longest = tf.reduce_max(size)

        def shrunk():
            target = tf.cast(tf.round(tf.cast(size, tf.float32) * max_side
                                      / tf.cast(longest, tf.float32)), tf.int32)
            small = tf.image.resize(images, tf.maximum(target, 1))
            probabilities = predict_probabilities(self.model, small, scales, flip)
            return tf.image.resize(probabilities, size)

        return tf.cond(longest > max_side, shrunk,
                       lambda: predict_probabilities(self.model, images, scales, flip))

    def _dense(self, images, scales, flip):
        probabilities = self._probabilities(tf.cast(images, tf.float32), scales, flip)
        outputs = {"semantic": tf.argmax(probabilities, axis=-1, output_type=tf.int32)}
        if self.options.with_probabilities:
            outputs["probabilities"] = probabilities
        return outputs

    def _encoded(self, images):
        def segment(data):
            image = tf.io.decode_image(data, channels=3, dtype=tf.uint8,
                                       expand_animations=False)
            image.set_shape([None, None, 3])
            mask = self._dense(image[None], (1.0,), False)["semantic"][0]
            png = tf.io.encode_png(tf.cast(mask, tf.uint8)[..., None])
            return tf.RaggedTensor.from_tensor(mask), png, tf.shape(mask)

        # Each image is decoded once; masks of different sizes come back ragged
        # and are padded to the largest with the ignore label.
        masks, pngs, sizes = tf.map_fn(
            segment, images, fn_output_signature=(
                tf.RaggedTensorSpec([None, None], tf.int32, ragged_rank=1),
                tf.TensorSpec([], tf.string), tf.TensorSpec([2], tf.int32)))
        return {"semantic": masks.to_tensor(default_value=IGNORE_LABEL), "height": sizes[:, 0], "width": sizes[:, 1],
                "semantic_png_bytes": pngs}

    def _examples(self, examples):
        parsed = tf.io.parse_example(
            examples, {schema.IMAGE_ENCODED: tf.io.FixedLenFeature([], tf.string)})
        return self._encoded(parsed[schema.IMAGE_ENCODED])

    def _metadata(self, unused):
        del unused
        return {
            "class_names": tf.constant(self.class_names),
            "palette": tf.constant(self.palette),
            "num_classes": tf.constant(self.num_classes),
            "ignore_label": tf.constant(IGNORE_LABEL),
            "output_stride": tf.constant(self.output_stride),
            "training_output_stride": tf.constant(self.training_output_stride),
            "scales": tf.constant(list(self.options.scales), tf.float32),
            "flip": tf.constant(self.options.flip),
            "max_side": tf.constant(self.options.max_side),
            "precision": tf.constant(self.options.precision),
        }


def load_trained_model(run_dir: str, output_stride: int | None = None,
                       checkpoint: str | None = None):
    """Rebuilds a run's model from its experiment.json and restores its weights.

    Args:
      run_dir: Training run directory (experiment.json + checkpoints).
      output_stride: Inference output stride (None: the training one).
      checkpoint: A checkpoint prefix (default: the run's latest).

    Returns:
      (model, experiment as trained, checkpoint prefix).
    """
    experiment = load_experiment(run_dir)
    if experiment.task != "segmentation":
        raise ValueError(f"{run_dir} is a {experiment.task} run, not a segmentation run.")
    trained_config = dataclasses.replace(experiment.model, sync_bn=False)
    # Restore into the graph as trained: tf.train.Checkpoint matches Keras layers
    # by position, and another output stride adds or removes padding layers.
    model = build_deeplabv3(trained_config)
    prefix = checkpoint or latest_checkpoint(run_dir)
    restore_model(model, prefix)
    other_stride = output_stride and output_stride != trained_config.output_stride
    if other_stride or trained_config.aux_head:
        # The inference graph: at the requested stride, without the auxiliary head.
        inference = build_deeplabv3(
            dataclasses.replace(trained_config, output_stride=output_stride or
                                trained_config.output_stride), include_aux=False)
        transfer_weights(model, inference, skip_mismatched=(), log=lambda _: None)
        model = inference
    return model, experiment, prefix


def next_version(export_dir: str) -> int:
    """1 + the largest integer version directory in `export_dir` (1 if none)."""
    versions = [int(d) for d in os.listdir(export_dir) if d.isdigit()] \
        if os.path.isdir(export_dir) else []
    return max(versions, default=0) + 1


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
                       log: Callable[[str], None] = print) -> str:
    """Exports a training run as EXPORT_DIR/<version>/, ready for TF Serving.

    The version directory appears only when complete (written under a
    temporary name, then renamed), so a server watching EXPORT_DIR never
    loads a half-written model.

    Returns:
      The version directory.
    """
    model, experiment, prefix = load_trained_model(run_dir, options.output_stride, checkpoint)
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
    staging = tempfile.mkdtemp(prefix=f".{version}-", dir=export_dir)
    try:
        asset_dir = tempfile.mkdtemp(dir=staging)
        module = SegmentationModule(model, experiment, options)
        names_path = os.path.join(asset_dir, "class_names.txt")
        palette_path = os.path.join(asset_dir, "palette.txt")
        with open(names_path, "w") as f:
            f.write("".join(f"{name}\n" for name in module.class_names))
        with open(palette_path, "w") as f:
            f.write("".join(f"{r} {g} {b}\n" for r, g, b in module.palette))
        module.assets = [tf.saved_model.Asset(names_path), tf.saved_model.Asset(palette_path)]
        saved = os.path.join(staging, "model")
        tf.saved_model.save(module, saved, signatures=module.signatures())
        rng = np.random.default_rng(0)
        warm = [rng.integers(0, 255, (97, 131, 3), dtype=np.uint8),
                rng.integers(0, 255, (64, 48, 3), dtype=np.uint8)]
        _warmup_requests(os.path.join(saved, WARMUP_FILE), warm)
        with open(os.path.join(saved, "assets.extra", "export_config.json"), "w") as f:
            json.dump({"experiment": experiment.to_dict(), "checkpoint": prefix,
                       "options": dataclasses.asdict(options),
                       "output_stride": module.output_stride}, f, indent=2)
        os.rename(saved, final)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    log(f"exported {experiment.name} ({prefix}) at output stride {module.output_stride} "
        f"to {final}")
    return final
