"""Evaluation of a segmentation model over records: confusion matrix, IoU, accuracy."""

from __future__ import annotations

import json
import os
from typing import Callable, Sequence

import keras
import numpy as np
import tensorflow as tf

from deeplabv3_tf.classes import IGNORE_LABEL
from deeplabv3_tf.data import make_dataset
from deeplabv3_tf.data.pipeline import count_elements, list_files
from deeplabv3_tf.experiments import load_experiment
from deeplabv3_tf.inference import Windows, predict_labels
from deeplabv3_tf.metrics import confusion_matrix, iou_from_confusion
from deeplabv3_tf.progress import ProgressBar
from deeplabv3_tf.report import draw_chart, write_csv_reports
from deeplabv3_tf.report_page import ImageRanking, write_report
from deeplabv3_tf.runs import load_trained_model


def evaluate_model(model: keras.Model, dataset: tf.data.Dataset, num_classes: int,
                   scales: Sequence[float] = (1.0,), flip: bool = False,
                   ignore_label: int = IGNORE_LABEL, progress: bool = False,
                   total: int | None = None,
                   on_batch: Callable[[dict, np.ndarray], None] | None = None,
                   windows: Windows | None = None) -> dict:
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
      windows: Sliding-window inference (None: whole images).

    Returns:
      {"miou", "iou" [C], "pixel_accuracy", "pixels", "confusion" int64 [C, C],
       "images"}.
    """
    spec = dataset.element_spec

    @tf.function(input_signature=[spec["image"], spec["label"]])
    def step(images, labels):
        predictions = predict_labels(model, images, scales, flip, windows)
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
                 windows: Windows | None | bool = None, progress: bool = True,
                 examples: int = 6, log: Callable[[str], None] = print) -> dict:
    """Evaluates a training run's checkpoint and writes its reports.

    With no output_stride, scales or flip given, runs the experiment's own
    protocol (e.g. voc_r101_os16: OS16, OS8, OS8 + multi-scale + flip;
    cityscapes_r101_os16 adds OS8 by 769x769 windows) and prints the paper's
    figures beside. Otherwise runs the one setting asked.

    Args:
      run_dir: Training run (experiment.json + checkpoints).
      output_dir: Where CSVs, charts and results.json go.
      records: Glob of evaluation shards (default: the experiment's val records).
      output_stride: Inference output stride.
      scales: Inference scales (several = multi-scale).
      flip: Add left-right flipped inputs.
      checkpoint: A checkpoint prefix (default: the latest).
      windows: Sliding windows for every setting run; False: whole images
        only; None: the protocol's (its windowed setting, if it has one).
      progress: Show progress bars.
      examples: Worst and best images per setting on report.html.
      log: Where the report lines go.

    Returns:
      {setting name: result dict (miou, iou, pixel_accuracy, confusion, images)}.
    """
    experiment = load_experiment(run_dir)
    records = records or experiment.data.val_records
    if not records:
        raise ValueError(f"{run_dir}: no evaluation records; pass --records.")
    protocol = experiment.eval
    if output_stride is None and scales is None and flip is None:
        settings = [(os_, (1.0,), False, None) for os_ in protocol.output_strides
                    or (experiment.model.output_stride,)]
        if protocol.windowed_output_stride and windows is None:
            settings.append((protocol.windowed_output_stride, (1.0,), False, protocol.windows))
        if protocol.multiscale_output_stride:
            settings.append((protocol.multiscale_output_stride, tuple(protocol.scales), True,
                             None))
    else:
        settings = [(output_stride or experiment.model.output_stride,
                     tuple(scales or (1.0,)), bool(flip), None)]
    if windows:
        settings = [setting[:3] + (windows,) for setting in settings]
    class_names = list(experiment.data.class_names)
    # For the progress bar: count records without decoding them.
    count = count_elements(tf.data.TFRecordDataset(list_files(records)))
    results, summary, models, rankings = {}, {}, {}, {}
    for os_, setting_scales, setting_flip, setting_windows in settings:
        base = f"os{os_}" + ("_ms" if len(setting_scales) > 1 else "") + ("_flip" if setting_flip else "")
        name = base
        if setting_windows:
            name += "_win{}x{}".format(*setting_windows.size)
        if os_ not in models:
            models[os_] = load_trained_model(run_dir, os_, checkpoint)
        model, _, prefix = models[os_]
        described = "whole images" if setting_windows is None else (
            "windows {}x{} stride {}x{}".format(*setting_windows.size, *setting_windows.stride))
        log(f"{experiment.name} [{name}] {prefix}: output stride {os_}, scales "
            f"{list(setting_scales)}, flip {setting_flip}, {described}")
        rankings[name] = ImageRanking(experiment.model.num_classes,
                                      experiment.data.ignore_label, examples)
        result = evaluate_model(model, make_dataset(records, training=False),
                                experiment.model.num_classes, setting_scales, setting_flip,
                                experiment.data.ignore_label, progress=progress, total=count,
                                windows=setting_windows, on_batch=rankings[name])
        log(_format(result, class_names))
        # The paper's figures are of whole images.
        paper = experiment.paper_results.get(f"val_miou_{base}")
        if paper is not None:
            log(f"  paper (DeepLabv3, {name}): {paper:.2f}")
        files = write_csv_reports(output_dir, result, class_names, prefix=f"{name}_")
        files["chart"] = draw_chart(os.path.join(output_dir, f"{name}_chart.png"), result,
                                    class_names, title=f"{experiment.name} {name}: "
                                    f"mIoU {100 * result['miou']:.2f}")
        files["per_image_iou"] = rankings[name].write_csv(
            os.path.join(output_dir, f"{name}_per_image_iou.csv"))
        results[name] = result
        summary[name] = {"miou": result["miou"], "pixel_accuracy": result["pixel_accuracy"],
                         "iou": {n: (None if np.isnan(v) else float(v))
                                 for n, v in zip(class_names, result["iou"])},
                         "images": result["images"], "output_stride": os_,
                         "scales": list(setting_scales), "flip": setting_flip,
                         "window": setting_windows.to_dict() if setting_windows else None,
                         "checkpoint": prefix, "paper_miou": paper, "files": files}
    with open(os.path.join(output_dir, "results.json"), "w") as f:
        json.dump(summary, f, indent=2)
    page = write_report(output_dir, summary, {n: r["confusion"] for n, r in results.items()},
                        rankings, class_names, experiment.data.info.lookup(), experiment.name,
                        experiment.data.ignore_label, records)
    log(f"Report: {page}")
    return results
