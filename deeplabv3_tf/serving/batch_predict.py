"""Segmenting a large image collection offline, on Apache Beam, with RunInference.

  images (glob patterns, through tf.io.gfile) -> read and checked as
  `tools/predict.py` checks them (unreadable, over the export's pixel budget:
  a line in rejects.jsonl, not a failed job) -> RunInference over the exported
  SavedModel's `encoded_image` signature (images of any sizes batch together)
  -> <stem>_mask.png and <stem>_labels.png, the same files `tools/predict.py`
  writes, and a line of predictions.jsonl per image (its size, the classes
  present and their pixel counts).

The same pipeline runs on the DirectRunner here and on Dataflow, Flink or Spark
(`data.tfrecord_builders.beam_shards.BeamEngine` gives the runner and its
options). Apache Beam is optional (`requirements-beam.txt`), imported when the
pipeline runs.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Callable, Sequence

import numpy as np
import tensorflow as tf
from PIL import Image

from deeplabv3_tf.data.images import InvalidExampleError, read_bytes, read_image
from deeplabv3_tf.data.tfrecord_builders.beam_shards import BEAM_MISSING, BeamEngine
from deeplabv3_tf.data.visualize import colorize
from deeplabv3_tf.serving.predict import IMAGE_SUFFIXES, budget_problem, reason_of

PREDICTIONS_FILE, REJECTS_FILE = "predictions.jsonl", "rejects.jsonl"


@dataclasses.dataclass(frozen=True)
class ExportInfo:
    """What the pipeline needs of an export, read once by the driver."""

    path: str
    class_names: tuple[str, ...]
    palette: np.ndarray
    max_pixels: int

    @classmethod
    def read(cls, path: str) -> "ExportInfo":
        if not tf.io.gfile.exists(f"{path}/saved_model.pb"):
            raise FileNotFoundError(f"No SavedModel in {path} (a version directory, e.g. "
                                    "exports/voc/1, holds saved_model.pb).")
        metadata = tf.saved_model.load(path).signatures["metadata"](unused=tf.constant(0))
        return cls(path, tuple(n.decode() for n in metadata["class_names"].numpy()),
                   metadata["palette"].numpy().astype(np.uint8), int(metadata["max_pixels"]))


def list_inputs(patterns: Sequence[str]) -> list[str]:
    """Image files of glob patterns or directories (through tf.io.gfile), sorted."""
    paths = []
    for pattern in patterns:
        if tf.io.gfile.isdir(pattern):
            pattern = pattern.rstrip("/") + "/*"
        paths += [p for p in tf.io.gfile.glob(pattern) if p.lower().endswith(IMAGE_SUFFIXES)]
    if not paths:
        raise FileNotFoundError(f"No images match {list(patterns)}.")
    return sorted(set(paths))


def _prepare(path: str, max_pixels: int):
    """(path, RGB bytes the model reads) or (path, reason it cannot be segmented)."""
    try:
        data = read_bytes(path)
        problem = budget_problem(data, max_pixels)
        if problem:
            raise InvalidExampleError(problem)
        return path, read_image(path, data).data
    except InvalidExampleError as e:
        return path, reason_of(e, path)


def encoded_image_handler(path: str, max_batch_size: int):
    """A RunInference model handler over a SavedModel's `encoded_image` signature.

    A batch runs as one request; a request the model refuses (an image over its
    pixel budget that got past the header check, the request's budget) runs
    again image by image, so that only the refused image is rejected (its
    result is the reason, a string).
    """
    from apache_beam.ml.inference.base import ModelHandler

    class EncodedImageHandler(ModelHandler):
        def load_model(self):
            return tf.saved_model.load(path).signatures["encoded_image"]

        def run_inference(self, batch, model, inference_args=None):
            from apache_beam.ml.inference.base import PredictionResult

            batch = list(batch)
            try:
                results = _masks(model, batch)
            except tf.errors.InvalidArgumentError:
                results = []
                for image in batch:
                    try:
                        results += _masks(model, [image])
                    except tf.errors.InvalidArgumentError as e:
                        results.append(reason_of(e, ""))
            return [PredictionResult(example, result) for example, result in zip(batch, results)]

        def batch_elements_kwargs(self):
            return {"min_batch_size": 1, "max_batch_size": max_batch_size}

        def get_metrics_namespace(self):
            return "deeplabv3_tf_batch_predict"

    return EncodedImageHandler()


def _masks(signature, images: list[bytes]) -> list[np.ndarray]:
    out = signature(images=tf.constant(images))
    semantic, heights, widths = (out[k].numpy() for k in ("semantic", "height", "width"))
    return [semantic[i, :heights[i], :widths[i]] for i in range(len(images))]


def _write(item, output_dir: str, info: ExportInfo) -> tuple[str, str]:
    """(kind, JSON line): the image's PNGs written and its prediction, or a reject."""
    path, result = item
    if isinstance(result, str):
        return "reject", json.dumps({"path": path, "reason": result})
    labels = result.inference
    if isinstance(labels, str):
        return "reject", json.dumps({"path": path, "reason": labels})
    stem = os.path.splitext(os.path.basename(path))[0]
    outputs = {"mask": f"{output_dir}/{stem}_mask.png", "labels": f"{output_dir}/{stem}_labels.png"}
    for key, array in (("mask", colorize(labels.astype(np.uint8), info.palette)),
                       ("labels", labels.astype(np.uint8))):
        with tf.io.gfile.GFile(outputs[key], "wb") as f:
            Image.fromarray(array).save(f, format="PNG")
    ids, counts = np.unique(labels, return_counts=True)
    classes = {info.class_names[i] if i < len(info.class_names) else str(i): int(c)
               for i, c in zip(ids, counts)}
    return "ok", json.dumps({"path": path, "height": int(labels.shape[0]),
                             "width": int(labels.shape[1]), "classes": classes,
                             "outputs": outputs})


def batch_predict(saved_model: str, inputs: Sequence[str], output_dir: str,
                  engine: BeamEngine = BeamEngine(), batch_size: int = 8,
                  num_workers: int | None = None,
                  log: Callable[[str], None] = print) -> dict:
    """Segments every image of `inputs` with the export at `saved_model`, on Beam.

    Args:
      saved_model: A SavedModel version directory (tools/export.py's).
      inputs: Glob patterns or directories of images (local, gs://, ...).
      output_dir: Where the PNGs, predictions.jsonl and rejects.jsonl go.
      engine: The runner and its pipeline options.
      batch_size: Most images in one request to the model.
      num_workers: DirectRunner processes (default: all cores).
      log: Where progress lines go.

    Returns:
      {"images", "predicted", "rejected", "predictions", "rejects"}: counts and the
      two JSON-lines files.
    """
    try:
        import apache_beam as beam
        from apache_beam.ml.inference.base import KeyedModelHandler, RunInference
    except ImportError as e:
        raise ImportError(BEAM_MISSING) from e
    info = ExportInfo.read(saved_model)
    paths = list_inputs(inputs)
    tf.io.gfile.makedirs(output_dir)
    handler = KeyedModelHandler(encoded_image_handler(saved_model, batch_size))
    log(f"{len(paths)} images, {saved_model}, on Beam's {engine.runner}")
    files = {kind: f"{output_dir}/{name}" for kind, name in
             (("ok", PREDICTIONS_FILE), ("reject", REJECTS_FILE))}
    with beam.Pipeline(options=engine.options(num_workers)) as pipeline:
        prepared = (pipeline
                    | "Paths" >> beam.Create(paths)
                    | "Read" >> beam.Map(_prepare, info.max_pixels))
        readable = prepared | "Readable" >> beam.Filter(lambda item: isinstance(item[1], bytes))
        unreadable = prepared | "Unreadable" >> beam.Filter(
            lambda item: not isinstance(item[1], bytes))
        predicted = readable | "Segment" >> RunInference(handler)
        lines = ((predicted, unreadable)
                 | "Together" >> beam.Flatten()
                 | "Write" >> beam.Map(_write, output_dir, info))
        for kind, path in files.items():
            _ = (lines
                 | f"Only {kind}" >> beam.Filter(lambda line, k=kind: line[0] == k)
                 | f"Line {kind}" >> beam.Map(lambda line: line[1])
                 | f"File {kind}" >> beam.io.WriteToText(path, shard_name_template="",
                                                         num_shards=1))
    counts = {}
    for kind, path in files.items():
        with tf.io.gfile.GFile(path) as f:
            rows = sorted(f.read().splitlines())  # in path order, whatever the runner's
        with tf.io.gfile.GFile(path, "w") as f:
            f.write("".join(row + "\n" for row in rows))
        counts[kind] = len(rows)
    log(f"{counts['ok']} images segmented, {counts['reject']} rejected -> {output_dir}")
    return {"images": len(paths), "predicted": counts["ok"], "rejected": counts["reject"],
            "predictions": files["ok"], "rejects": files["reject"]}
