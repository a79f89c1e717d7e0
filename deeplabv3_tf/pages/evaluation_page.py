"""The evaluation as a page: report.html beside results.json.

Per-class IoU of every setting side by side (and the paper's mIoU where the
recipe has one), each setting's confusion matrix as a heatmap, and the K worst
and K best images by per-image IoU (`metrics.per_image_iou`: the mean IoU over
the classes present in that image's label or prediction) with the image, its
ground truth, the prediction and an error map. The page and its pictures are
one folder, opened from disk; the figures on it are results.json's.
"""

from __future__ import annotations

import csv
import heapq
import os
from typing import Sequence

import numpy as np

from deeplabv3_tf.core import html as pages
from deeplabv3_tf.data.dataset import IGNORE_LABEL
from deeplabv3_tf.ops.metrics import per_image_iou
from deeplabv3_tf.data.visualize import colorize

REPORT_FILE = "report.html"
PICTURE_SIDE = 320  # longest side of the picture files
SHOWN_WIDTH = 160  # CSS pixels of each picture on the page (four per example)


class ImageRanking:
    """Per-image IoU of every image evaluated; keeps the k worst and k best.

    Pass as `evaluate_model(..., on_batch=ranking)`.

    Args:
      num_classes: Number of classes.
      ignore_label: Label excluded from the scores.
      k: Images kept at each end.
    """

    def __init__(self, num_classes: int, ignore_label: int = IGNORE_LABEL, k: int = 6):
        self.num_classes, self.ignore_label, self.k = num_classes, ignore_label, k
        self.scores: list[tuple[str, float]] = []
        self._worst: list = []  # max-heap by score (negated): the k lowest scores
        self._best: list = []  # min-heap by score: the k highest

    def __call__(self, batch: dict, predictions: np.ndarray) -> None:
        images = batch["image"].numpy()
        labels = batch["label"].numpy()
        heights, widths = batch["height"].numpy(), batch["width"].numpy()
        names = batch["filename"].numpy()
        for i in range(len(images)):
            h, w = int(heights[i]), int(widths[i])
            label, prediction = labels[i, :h, :w], predictions[i, :h, :w]
            score = per_image_iou(label, prediction, self.num_classes, self.ignore_label)
            name = names[i].decode("utf8", "replace") or f"#{len(self.scores)}"
            self.scores.append((name, score))
            if np.isnan(score) or not self.k:
                continue
            index = len(self.scores)
            enters_worst = len(self._worst) < self.k or -score > self._worst[0][0]
            enters_best = len(self._best) < self.k or score > self._best[0][0]
            if not (enters_worst or enters_best):
                continue
            # Kept at the size the page shows: a Cityscapes image and its two maps at
            # full size are 22 MB, times 2k per setting.
            entry = (name, *_shrunk(images[i, :h, :w], label, prediction), (h, w))
            if enters_worst:
                heapq.heappush(self._worst, (-score, -index, entry))
                if len(self._worst) > self.k:
                    heapq.heappop(self._worst)
            if enters_best:
                heapq.heappush(self._best, (score, -index, entry))
                if len(self._best) > self.k:
                    heapq.heappop(self._best)

    def _ends(self) -> tuple[list, list]:
        # With fewer than 2k images scored, the two ends share images: split them
        # instead, the lower half shown as worst and the upper half as best.
        scored = sum(1 for _, score in self.scores if not np.isnan(score))
        worst_count = min(self.k, (scored + 1) // 2)
        best_count = min(self.k, scored - worst_count)
        worst = sorted(self._worst, key=lambda x: (-x[0], -x[1]))[:worst_count]
        best = sorted(self._best, key=lambda x: (-x[0], -x[1]))[:best_count]
        return ([(-s, *e) for s, _, e in worst], [(s, *e) for s, _, e in best])

    def worst(self) -> list[tuple]:
        """(score, id, image, label, prediction, (height, width)), lowest score first;
        the arrays uint8, shrunk to at most PICTURE_SIDE, the size the original's."""
        return self._ends()[0]

    def best(self) -> list[tuple]:
        """As `worst`, highest score first."""
        return self._ends()[1]

    def write_csv(self, path: str) -> str:
        with open(path, "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["image", "iou"])
            for name, score in self.scores:
                writer.writerow([name, "" if np.isnan(score) else f"{score:.6f}"])
        return path


def _shrunk(image: np.ndarray, label: np.ndarray, prediction: np.ndarray,
            max_side: int = PICTURE_SIDE):
    """uint8 copies of an image (bilinear) and its label and prediction (nearest)
    with the longest side at most `max_side`."""
    image = np.clip(image + 0.5, 0, 255).astype(np.uint8)
    label, prediction = label.astype(np.uint8), prediction.astype(np.uint8)
    height, width = label.shape
    scale = min(1.0, max_side / max(height, width))
    if scale == 1.0:
        return image, label, prediction
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    return (pages.resized(image, size, photo=True), pages.resized(label, size, photo=False),
            pages.resized(prediction, size, photo=False))


def error_map(image: np.ndarray, label: np.ndarray, prediction: np.ndarray,
              ignore_label: int = IGNORE_LABEL) -> np.ndarray:
    """uint8 [H, W, 3]: the image darkened where the prediction is right, red
    where it is wrong, blue where the label is ignored."""
    grey = image.astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)
    out = np.repeat((0.35 * grey)[..., None], 3, axis=-1).astype(np.uint8)
    out[(prediction != label) & (label != ignore_label)] = (235, 40, 40)
    out[label == ignore_label] = (70, 90, 190)
    return out


def _percent(value) -> str:
    return "n/a" if value is None or (isinstance(value, float) and np.isnan(value)) \
        else f"{100 * value:.2f}"


def _heatmap(setting: str, matrix: np.ndarray, class_names: Sequence[str]) -> str:
    """Row-normalised confusion matrix as a table; counts in each cell's title."""
    esc = pages.escape
    matrix = np.asarray(matrix, np.int64)
    with np.errstate(invalid="ignore", divide="ignore"):
        rows = np.nan_to_num(matrix / matrix.sum(axis=1, keepdims=True))
    head = "".join(f'<th class="col">{esc(n)}</th>' for n in class_names)
    body = []
    for i, name in enumerate(class_names):
        cells = []
        for j in range(len(class_names)):
            share = rows[i, j]
            light = int(255 - 200 * share)
            colour = f"rgb({light}, {int(255 - 130 * share)}, 255)"
            text = f"{100 * share:.0f}" if share >= 0.005 else ""
            style = f"background: {colour}" + ("; outline: 1px solid #333" if i == j else "")
            cells.append(f'<td style="{style}" title="{esc(name)} labelled, '
                         f'{esc(class_names[j])} predicted: {matrix[i, j]:,} pixels '
                         f'({100 * share:.1f} % of the row)" data-setting="{esc(setting)}" '
                         f'data-row="{i}" data-col="{j}" data-count="{matrix[i, j]}">'
                         f"{text}</td>")
        body.append(f'<tr><th class="row">{esc(name)}</th>{"".join(cells)}</tr>')
    return (f'<table class="heatmap"><thead><tr><th class="row">label \\ prediction</th>'
            f'{head}</tr></thead><tbody>{"".join(body)}</tbody></table>')


def _examples(output_dir: str, setting: str, kind: str, entries, class_names,
              colours: np.ndarray, ignore_label: int) -> list[str]:
    esc = pages.escape
    body = ['<div class="sheet">']
    for rank, (score, name, image, label, prediction, size) in enumerate(entries):
        stem = f"{setting}_{kind}{rank:02d}"
        # The entries are uint8 and already at most PICTURE_SIDE (ImageRanking).
        pictures = [
            (pages.save_picture(output_dir, f"{stem}_image.jpg", image), "image"),
            (pages.save_picture(output_dir, f"{stem}_label.png", colorize(label, colours)),
             "ground truth"),
            (pages.save_picture(output_dir, f"{stem}_prediction.png",
                                colorize(prediction, colours)), "prediction"),
            (pages.save_picture(output_dir, f"{stem}_errors.png",
                                error_map(image, label, prediction, ignore_label)), "errors"),
        ]
        present = sorted(set(np.unique(label).tolist()) | set(np.unique(prediction).tolist()))
        names = {c: class_names[c] if c < len(class_names) else f"void ({c})" for c in present}
        cells = "".join(f'<div>{pages.img(src, f"{name} {what}", SHOWN_WIDTH)}'
                        f'<span class="muted">{what}</span></div>' for src, what in pictures)
        body.append(f'<figure data-setting="{esc(setting)}" data-kind="{kind}" '
                    f'data-image="{esc(name)}" data-iou="{score:.6f}">'
                    f'<div style="display: flex; gap: 4px">{cells}</div>'
                    f"<figcaption><b>{esc(name)}</b>: IoU {100 * score:.2f} "
                    f"({size[0]}x{size[1]})<br>"
                    + "".join(f"{pages.swatch(colours[c])}{esc(n)}" for c, n in names.items())
                    + "</figcaption></figure>")
    body.append("</div>")
    return body


def write_report(output_dir: str, summary: dict, confusions: dict, rankings: dict,
                 class_names: Sequence[str], colours: np.ndarray, title: str,
                 ignore_label: int = IGNORE_LABEL, records: str = "") -> str:
    """Writes output_dir/report.html and its pictures.

    Args:
      output_dir: The evaluation's directory (results.json's).
      summary: results.json's content {setting: {"miou", "iou", ...}}.
      confusions: {setting: int64 [C, C] confusion matrix}.
      rankings: {setting: ImageRanking}.
      class_names: Name of each class.
      colours: uint8 [256, 3] colour of each label value (DatasetInfo.lookup()).
      title: The experiment's name.
      ignore_label: Label value of void pixels.
      records: The evaluation records' glob, shown on the page.

    Returns:
      The page's path.
    """
    first = summary[next(iter(summary))]
    body = [f"<h1>Evaluation: {pages.escape(title)}</h1>",
            f"<p>Checkpoint {pages.escape(first['checkpoint'])}<br>Records "
            f"{pages.escape(records)} ({first['images']} images). Figures in % (IoU, pixel "
            "accuracy); the same numbers as results.json.</p>"]
    body += _settings_section(summary)
    body += _boundary_section(summary)
    body += _class_section(summary, class_names, colours)
    body += _confusion_section(confusions, class_names)
    body += _examples_section(output_dir, rankings, list(summary), class_names, colours,
                              ignore_label)
    return pages.write_page(os.path.join(output_dir, REPORT_FILE), f"Evaluation: {title}", body)


def _settings_section(summary: dict) -> list[str]:
    """The table of settings: stride, scales, flip, windows, mIoU beside the paper's."""
    esc = pages.escape
    body = ["<h2>Settings</h2>"]
    rows = []
    for name, result in summary.items():
        window = result.get("window")
        paper = "-" if result["paper_miou"] is None else f"{result['paper_miou']:.2f}"
        rows.append([
            f'<td class="name">{esc(name)}</td>', str(result["output_stride"]),
            esc(", ".join(f"{s:g}" for s in result["scales"])), "yes" if result["flip"] else "no",
            "whole image" if not window else esc("{}x{} stride {}x{}".format(
                *window["size"], *window["stride"])),
            f'<td data-setting="{esc(name)}" data-key="miou"><b>{_percent(result["miou"])}</b>'
            "</td>",
            f'<td data-setting="{esc(name)}" data-key="paper_miou">{paper}</td>',
            f'<td data-setting="{esc(name)}" data-key="pixel_accuracy">'
            f'{_percent(result["pixel_accuracy"])}</td>', str(result["images"])])
    body.append(pages.table(["setting", "output stride", "scales", "flip", "inference",
                             "mIoU", "paper mIoU", "pixel accuracy", "images"], rows))

    return body


def _boundary_section(summary: dict) -> list[str]:
    """mIoU inside the trimap bands around label boundaries, beside the whole image's."""
    esc = pages.escape
    widths = list(next(iter(summary.values())).get("trimap") or {})
    if not widths:
        return []
    body = ["<h2>Boundaries</h2>",
            "<p>mIoU counted only over the pixels within w pixels of a label boundary "
            "(the trimap of DeepLabv3+ Fig. 5): a pixel is in the band when the (2w + 1)-pixel "
            "square around it holds more than one label, void included; void pixels are not "
            "scored. Object outlines are where a decoder helps and where the band mIoU falls "
            "furthest below the whole image's.</p>"]
    rows = []
    for name, result in summary.items():
        cells = [f'<td class="name">{esc(name)}</td>', _percent(result["miou"])]
        for width in widths:
            band = result["trimap"][width]
            cells.append(f'<td data-setting="{esc(name)}" data-key="trimap" '
                         f'data-band="{esc(width)}" title="{band["pixels"]} pixels">'
                         f'{_percent(band["miou"])}</td>')
        rows.append(cells)
    body.append(pages.table(["setting", "whole image"] + [f"{w} px band" for w in widths],
                            rows))
    return body


def _class_section(summary: dict, class_names: Sequence[str], colours: np.ndarray) -> list[str]:
    """Per-class IoU of every setting: a table and a bar chart (the paper's mIoU beside)."""
    esc = pages.escape
    settings = list(summary)
    body = []
    body.append("<h2>Per-class IoU</h2>")
    chart_rows = ["mIoU"] + list(class_names)
    series = []
    for k, (name, result) in enumerate(summary.items()):
        values = [result["miou"]] + [result["iou"][c] for c in class_names]
        series.append((name, [None if v is None else 100 * v for v in values],
                       pages.SERIES_COLOURS[k % len(pages.SERIES_COLOURS)]))
    papers = [r["paper_miou"] for r in summary.values()]
    if any(p is not None for p in papers):
        for name, result in summary.items():
            if result["paper_miou"] is not None:
                series.append((f"paper ({name})", [result["paper_miou"]] + [None] * len(
                    class_names), "#999999"))
    body.append('<div style="display: flex; gap: 32px; align-items: flex-start">')
    table_rows = []
    for c, class_name in enumerate(class_names):
        cells = [f'<td class="name">{pages.swatch(colours[c])}{esc(class_name)}</td>']
        for name, result in summary.items():
            value = result["iou"][class_name]
            cells.append(f'<td data-setting="{esc(name)}" data-class="{esc(class_name)}" '
                         f'data-key="iou">{_percent(value)}</td>')
        table_rows.append(cells)
    table_rows.append(['<td class="name"><b>mean</b></td>'] + [
        f"<td><b>{_percent(r['miou'])}</b></td>" for r in summary.values()])
    body.append(pages.table(["class", *settings], table_rows))
    body.append(pages.bar_chart(chart_rows, series, maximum=100))
    body.append("</div>")

    return body


def _confusion_section(confusions: dict, class_names: Sequence[str]) -> list[str]:
    """One heat map of the confusion matrix per setting (the first open)."""
    esc = pages.escape
    settings = list(confusions)
    body = []
    body.append("<h2>Confusion matrices</h2><p class=\"muted\">Rows: ground truth; columns: "
                "prediction; each row in % of its pixels (hover a cell for its count).</p>")
    for k, name in enumerate(settings):
        body.append(f"<details{' open' if k == 0 else ''}><summary><b>{esc(name)}</b>"
                    "</summary>")
        body.append(_heatmap(name, confusions[name], class_names))
        body.append("</details>")

    return body


def _examples_section(output_dir: str, rankings: dict, settings: list[str],
                      class_names: Sequence[str], colours: np.ndarray,
                      ignore_label: int) -> list[str]:
    """The worst and best images of each setting, with their error maps."""
    esc = pages.escape
    body = []
    body.append("<h2>Worst and best images</h2><p class=\"muted\">Per-image IoU: the mean "
                "IoU, in that image, over the classes present in its label or its prediction "
                "(void pixels excluded). Error map: red wrong, dark right, blue void.</p>")
    for k, name in enumerate(settings):
        ranking = rankings.get(name)
        if ranking is None:
            continue
        body.append(f"<details{' open' if k == 0 else ''}><summary><b>{esc(name)}</b>: "
                    f"{len(ranking.worst())} worst and {len(ranking.best())} best of "
                    f"{len(ranking.scores)} images</summary>")
        body.append("<h3>Worst</h3>")
        body += _examples(output_dir, name, "worst", ranking.worst(), class_names, colours,
                          ignore_label)
        body.append("<h3>Best</h3>")
        body += _examples(output_dir, name, "best", ranking.best(), class_names, colours,
                          ignore_label)
        body.append("</details>")
    return body
