"""Evaluation of a segmentation model over records: confusion matrix, IoU, accuracy."""

from __future__ import annotations

import json
import os
from typing import Callable, Sequence

import keras
import numpy as np
import tensorflow as tf

from deeplabv3_tf.classes import IGNORE_LABEL
from deeplabv3_tf.inference import predict_labels
from deeplabv3_tf.metrics import confusion_matrix, iou_from_confusion
from deeplabv3_tf.progress import ProgressBar


def evaluate_model(model: keras.Model, dataset: tf.data.Dataset, num_classes: int,
                   scales: Sequence[float] = (1.0,), flip: bool = False,
                   ignore_label: int = IGNORE_LABEL, progress: bool = False,
                   total: int | None = None,
                   on_batch: Callable[[dict, np.ndarray], None] | None = None) -> dict:
    """Runs the model over an evaluation dataset and scores it.

    Args:
      model: Segmentation model (float RGB [0, 255] -> logits).
      dataset: From `make_dataset(..., training=False)`: whole images, any sizes.
      num_classes: Number of classes.
      scales, flip: Inference scales and left-right flip (multi-scale + flip
        when more than one scale or flip).
      ignore_label: Label excluded from the scores.
      progress: Show a progress bar (needs `total` for an ETA).
      total: Number of batches, for the progress bar.
      on_batch: Called with each batch and its int32 predictions [B, H, W].

    Returns:
      {"miou", "iou" [C], "pixel_accuracy", "pixels", "confusion" int64 [C, C],
       "images"}.
    """
    spec = dataset.element_spec

    @tf.function(input_signature=[spec["image"], spec["label"]])
    def step(images, labels):
        predictions = predict_labels(model, images, scales, flip)
        return predictions, confusion_matrix(labels, predictions, num_classes, ignore_label)

    matrix = np.zeros((num_classes, num_classes), np.int64)
    images = 0
    bar = ProgressBar(total or 0, desc="[eval]", unit="img", enabled=progress)
    for batch in dataset:
        predictions, batch_matrix = step(batch["image"], batch["label"])
        matrix += batch_matrix.numpy()
        images += int(batch["image"].shape[0])
        if on_batch is not None:
            on_batch(batch, predictions.numpy())
        bar.update(int(batch["image"].shape[0]))
    bar.close()
    result = iou_from_confusion(matrix)
    result.update(confusion=matrix, images=images)
    return result


def _format(result: dict, class_names) -> str:
    lines = [f"  mIoU {100 * result['miou']:.2f}   pixel accuracy "
             f"{100 * result['pixel_accuracy']:.2f}   ({result['images']} images)"]
    for name, iou in zip(class_names, result["iou"]):
        lines.append(f"    {name:<16} {'n/a' if np.isnan(iou) else f'{100 * iou:6.2f}'}")
    return "\n".join(lines)


def evaluate_run(run_dir: str, output_dir: str, records: str | None = None,
                 output_stride: int | None = None, scales: Sequence[float] | None = None,
                 flip: bool | None = None, checkpoint: str | None = None,
                 progress: bool = True, log: Callable[[str], None] = print) -> dict:
    """Evaluates a training run's checkpoint and writes its reports.

    With no output_stride, scales or flip given, runs the experiment's own
    protocol (e.g. voc_r101_os16: OS16, OS8, OS8 + multi-scale + flip) and
    prints the paper's figures beside. Otherwise runs the one setting asked.

    Args:
      run_dir: Training run (experiment.json + checkpoints).
      output_dir: Where CSVs, charts and results.json go.
      records: Glob of evaluation shards (default: the experiment's val records).
      output_stride: Inference output stride.
      scales: Inference scales (several = multi-scale).
      flip: Add left-right flipped inputs.
      checkpoint: A checkpoint prefix (default: the latest).
      progress: Show progress bars.
      log: Where the report lines go.

    Returns:
      {setting name: result dict (miou, iou, pixel_accuracy, confusion, images)}.
    """
    # Imported here: export imports this module's neighbours.
    from deeplabv3_tf.data import make_dataset
    from deeplabv3_tf.data.pipeline import count_elements, list_files
    from deeplabv3_tf.experiments import load_experiment
    from deeplabv3_tf.export import load_trained_model
    from deeplabv3_tf.report import draw_chart, write_csv_reports

    experiment = load_experiment(run_dir)
    records = records or experiment.data.val_records
    if not records:
        raise ValueError(f"{run_dir}: no evaluation records; pass --records.")
    protocol = experiment.eval
    if output_stride is None and scales is None and flip is None:
        settings = [(os_, (1.0,), False) for os_ in protocol.output_strides
                    or (experiment.model.output_stride,)]
        if protocol.multiscale_output_stride:
            settings.append((protocol.multiscale_output_stride, tuple(protocol.scales), True))
    else:
        settings = [(output_stride or experiment.model.output_stride,
                     tuple(scales or (1.0,)), bool(flip))]
    class_names = list(experiment.data.class_names)
    # For the progress bar: count records without decoding them.
    count = count_elements(tf.data.TFRecordDataset(list_files(records)))
    results, summary, models = {}, {}, {}
    for os_, setting_scales, setting_flip in settings:
        name = f"os{os_}" + ("_ms" if len(setting_scales) > 1 else "") + ("_flip" if setting_flip else "")
        if os_ not in models:
            models[os_] = load_trained_model(run_dir, os_, checkpoint)
        model, _, prefix = models[os_]
        log(f"{experiment.name} [{name}] {prefix}: output stride {os_}, scales "
            f"{list(setting_scales)}, flip {setting_flip}")
        result = evaluate_model(model, make_dataset(records, training=False),
                                experiment.model.num_classes, setting_scales, setting_flip,
                                experiment.data.ignore_label, progress=progress, total=count)
        log(_format(result, class_names))
        paper = experiment.paper_results.get(f"val_miou_{name}")
        if paper is not None:
            log(f"  paper (DeepLabv3, {name}): {paper:.2f}")
        files = write_csv_reports(output_dir, result, class_names, prefix=f"{name}_")
        files["chart"] = draw_chart(os.path.join(output_dir, f"{name}_chart.png"), result,
                                    class_names, title=f"{experiment.name} {name}: "
                                    f"mIoU {100 * result['miou']:.2f}")
        results[name] = result
        summary[name] = {"miou": result["miou"], "pixel_accuracy": result["pixel_accuracy"],
                         "iou": {n: (None if np.isnan(v) else float(v))
                                 for n, v in zip(class_names, result["iou"])},
                         "images": result["images"], "output_stride": os_,
                         "scales": list(setting_scales), "flip": setting_flip,
                         "checkpoint": prefix, "paper_miou": paper, "files": files}
    with open(os.path.join(output_dir, "results.json"), "w") as f:
        json.dump(summary, f, indent=2)
    return results
