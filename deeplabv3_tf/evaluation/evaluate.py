"""Evaluation of a segmentation model over records: confusion matrix, IoU, accuracy."""

from __future__ import annotations

import dataclasses
import os
from typing import Callable, Sequence

import keras
import numpy as np
import tensorflow as tf

from deeplabv3_tf.configs.experiment import ExperimentConfig
from deeplabv3_tf.core.files import write_json_atomically
from deeplabv3_tf.core.progress import ProgressBar
from deeplabv3_tf.data.dataset import IGNORE_LABEL
from deeplabv3_tf.data.pipeline import count_elements, list_files, make_dataset
from deeplabv3_tf.evaluation.inference import Windows, predict_labels
from deeplabv3_tf.evaluation.report import draw_chart, write_csv_reports
from deeplabv3_tf.ops.metrics import (
    TRIMAP_BANDS, confusion_matrix, iou_from_confusion, trimap_confusions)
from deeplabv3_tf.pages.evaluation_page import ImageRanking, write_report
from deeplabv3_tf.runs import load_experiment, load_trained_model


def evaluate_model(model: keras.Model, dataset: tf.data.Dataset, num_classes: int,
                   scales: Sequence[float] = (1.0,), flip: bool = False,
                   ignore_label: int = IGNORE_LABEL, progress: bool = False,
                   total: int | None = None,
                   on_batch: Callable[[dict, np.ndarray], None] | None = None,
                   windows: Windows | None = None,
                   trimap_bands: Sequence[int] = TRIMAP_BANDS) -> dict:
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
      trimap_bands: Widths of the bands around label boundaries whose mIoU
        is reported too (`metrics.boundary_band`); () for none.

    Returns:
      {"miou", "iou" [C], "pixel_accuracy", "pixels", "confusion" int64 [C, C],
       "images", "trimap": {width: {"miou", "pixel_accuracy", "pixels"}}}.
    """
    spec = dataset.element_spec
    trimap_bands = tuple(trimap_bands)

    @tf.function(input_signature=[spec["image"], spec["label"]])
    def step(images, labels):
        predictions = predict_labels(model, images, scales, flip, windows)
        bands = (trimap_confusions(labels, predictions, num_classes, trimap_bands, ignore_label)
                 if trimap_bands else tf.zeros([0, num_classes, num_classes], tf.int64))
        return (predictions, confusion_matrix(labels, predictions, num_classes, ignore_label),
                bands)

    matrix = np.zeros((num_classes, num_classes), np.int64)
    band_matrices = np.zeros((len(trimap_bands), num_classes, num_classes), np.int64)
    images = 0
    bar = ProgressBar(total or 0, desc="[eval]", unit="img", enabled=progress)
    for batch in dataset:
        predictions, batch_matrix, batch_bands = step(batch["image"], batch["label"])
        matrix += batch_matrix.numpy()
        band_matrices += batch_bands.numpy()
        images += int(batch["image"].shape[0])
        if on_batch is not None:
            on_batch(batch, predictions.numpy())
        bar.update(int(batch["image"].shape[0]))
    bar.close()
    result = iou_from_confusion(matrix)
    trimap = {}
    for width, band in zip(trimap_bands, band_matrices):
        scores = iou_from_confusion(band)
        trimap[width] = {k: scores[k] for k in ("miou", "pixel_accuracy", "pixels")}
    result.update(confusion=matrix, images=images, trimap=trimap)
    return result


def _format(result: dict, class_names) -> str:
    lines = [f"  mIoU {100 * result['miou']:.2f}   pixel accuracy "
             f"{100 * result['pixel_accuracy']:.2f}   ({result['images']} images)"]
    if result.get("trimap"):
        lines.append("  trimap mIoU  " + "   ".join(
            f"{width}px " + ("n/a" if np.isnan(band["miou"]) else f"{100 * band['miou']:.2f}")
            for width, band in result["trimap"].items()))
    for name, iou in zip(class_names, result["iou"]):
        lines.append(f"    {name:<16} {'n/a' if np.isnan(iou) else f'{100 * iou:6.2f}'}")
    return "\n".join(lines)


@dataclasses.dataclass(frozen=True)
class Setting:
    """One evaluation setting: output stride, scales, flip, sliding windows."""

    output_stride: int
    scales: tuple[float, ...] = (1.0,)
    flip: bool = False
    windows: Windows | None = None

    @property
    def base_name(self) -> str:
        """"os8_ms_flip": the key of the paper's figure for this setting."""
        return (f"os{self.output_stride}" + ("_ms" if len(self.scales) > 1 else "")
                + ("_flip" if self.flip else ""))

    @property
    def name(self) -> str:
        """base_name, plus "_win769x769" by windows."""
        windows = "" if self.windows is None else "_win{}x{}".format(*self.windows.size)
        return self.base_name + windows

    def describe(self) -> str:
        described = "whole images" if self.windows is None else (
            "windows {}x{} stride {}x{}".format(*self.windows.size, *self.windows.stride))
        return (f"output stride {self.output_stride}, scales {list(self.scales)}, "
                f"flip {self.flip}, {described}")


def protocol_settings(experiment: ExperimentConfig, output_stride: int | None = None,
                      scales: Sequence[float] | None = None, flip: bool | None = None,
                      windows: Windows | None | bool = None) -> list[Setting]:
    """The settings to run: the experiment's protocol when no setting is asked
    (its output strides, its windowed run, its multi-scale + flip run), the one
    asked otherwise; `windows` (when given) applies to every setting."""
    protocol = experiment.eval
    if output_stride is None and scales is None and flip is None:
        settings = [Setting(os_) for os_ in protocol.output_strides
                    or (experiment.model.output_stride,)]
        if protocol.windowed_output_stride and windows is None:
            settings.append(Setting(protocol.windowed_output_stride, windows=Windows(
                protocol.window, protocol.window_stride or None)))
        if protocol.multiscale_output_stride:
            settings.append(Setting(protocol.multiscale_output_stride, tuple(protocol.scales),
                                    True))
    else:
        settings = [Setting(output_stride or experiment.model.output_stride,
                            tuple(scales or (1.0,)), bool(flip))]
    if windows:
        settings = [dataclasses.replace(s, windows=windows) for s in settings]
    return settings


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
      output_dir: Where CSVs, charts, results.json and report.html go.
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
    class_names = list(experiment.data.class_names)
    # For the progress bar: count records without decoding them.
    count = count_elements(tf.data.TFRecordDataset(list_files(records)))
    results, summary, models, rankings = {}, {}, {}, {}
    for setting in protocol_settings(experiment, output_stride, scales, flip, windows):
        name, os_ = setting.name, setting.output_stride
        if os_ not in models:  # one model per output stride, shared by its settings
            models[os_] = load_trained_model(run_dir, os_, checkpoint)
        model, _, prefix = models[os_]
        log(f"{experiment.name} [{name}] {prefix}: {setting.describe()}")
        rankings[name] = ImageRanking(experiment.model.num_classes,
                                      experiment.data.ignore_label, examples)
        result = evaluate_model(model, make_dataset(records, training=False),
                                experiment.model.num_classes, setting.scales, setting.flip,
                                experiment.data.ignore_label, progress=progress, total=count,
                                windows=setting.windows, on_batch=rankings[name])
        log(_format(result, class_names))
        # The paper's figures are of whole images.
        paper = experiment.paper_results.get(f"val_miou_{setting.base_name}")
        if paper is not None:
            log(f"  paper ({experiment.model.architecture_name}, {name}): {paper:.2f}")
        results[name] = result
        summary[name] = _summary(result, setting, class_names, prefix, paper, _write_files(
            output_dir, experiment, name, result, class_names, rankings[name]))
    write_json_atomically(os.path.join(output_dir, "results.json"), summary)
    page = write_report(output_dir, summary, {n: r["confusion"] for n, r in results.items()},
                        rankings, class_names, experiment.data.info.lookup(), experiment.name,
                        experiment.data.ignore_label, records)
    log(f"Report: {page}")
    return results


def _write_files(output_dir: str, experiment: ExperimentConfig, name: str, result: dict,
                 class_names: list[str], ranking: ImageRanking) -> dict:
    """A setting's CSVs and chart; {kind: path}."""
    files = write_csv_reports(output_dir, result, class_names, prefix=f"{name}_")
    files["chart"] = draw_chart(os.path.join(output_dir, f"{name}_chart.png"), result,
                                class_names, title=f"{experiment.name} {name}: "
                                f"mIoU {100 * result['miou']:.2f}")
    files["per_image_iou"] = ranking.write_csv(
        os.path.join(output_dir, f"{name}_per_image_iou.csv"))
    return files


def _summary(result: dict, setting: Setting, class_names: list[str], prefix: str,
             paper: float | None, files: dict) -> dict:
    """A setting's entry of results.json."""
    def number(value):
        return None if np.isnan(value) else float(value)

    return {"miou": result["miou"], "pixel_accuracy": result["pixel_accuracy"],
            "iou": {n: number(v) for n, v in zip(class_names, result["iou"])},
            # Keyed by band width in pixels; mIoU None when no pixel lies in the band.
            "trimap": {str(w): {"miou": number(band["miou"]), "pixels": band["pixels"]}
                       for w, band in result["trimap"].items()},
            "images": result["images"], "output_stride": setting.output_stride,
            "scales": list(setting.scales), "flip": setting.flip,
            "window": setting.windows.to_dict() if setting.windows else None,
            "checkpoint": prefix, "paper_miou": paper, "files": files}
