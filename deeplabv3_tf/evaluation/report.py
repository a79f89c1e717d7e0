"""Evaluation reports: CSV files and PNG charts drawn with Pillow (no plotting library)."""

from __future__ import annotations

import csv
import os

import numpy as np
from PIL import Image, ImageDraw, ImageFont


def write_csv_reports(directory: str, result: dict, class_names, prefix: str = "") -> dict:
    """Writes <prefix>confusion_matrix.csv and <prefix>per_class_iou.csv.

    Returns:
      {"confusion_matrix": path, "per_class_iou": path}.
    """
    os.makedirs(directory, exist_ok=True)
    matrix = np.asarray(result["confusion"])
    confusion_path = os.path.join(directory, f"{prefix}confusion_matrix.csv")
    with open(confusion_path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["ground_truth \\ prediction", *class_names])
        for name, row in zip(class_names, matrix):
            writer.writerow([name, *row.tolist()])
    iou_path = os.path.join(directory, f"{prefix}per_class_iou.csv")
    with open(iou_path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["class_id", "class", "iou", "ground_truth_pixels", "predicted_pixels"])
        for i, (name, iou) in enumerate(zip(class_names, result["iou"])):
            writer.writerow([i, name, "" if np.isnan(iou) else f"{iou:.6f}",
                             int(matrix[i].sum()), int(matrix[:, i].sum())])
        writer.writerow(["", "mean", f"{result['miou']:.6f}", "", ""])
    return {"confusion_matrix": confusion_path, "per_class_iou": iou_path}


def draw_chart(path: str, result: dict, class_names, title: str = "") -> str:
    """A PNG with per-class IoU bars (left) and the row-normalised confusion matrix (right)."""
    font = ImageFont.load_default()
    count = len(class_names)
    row = 18
    label_width = 110
    bar_width = 260
    cell = max(8, min(24, 420 // max(count, 1)))
    top = 40
    height = top + max(count * row, count * cell) + 40
    width = label_width + bar_width + 60 + label_width + count * cell + 20
    image = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(image)
    draw.text((10, 10), title or f"mIoU {100 * result['miou']:.2f}", fill="black", font=font)
    for i, (name, iou) in enumerate(zip(class_names, result["iou"])):
        y = top + i * row
        draw.text((10, y + 3), str(name)[:16], fill="black", font=font)
        if not np.isnan(iou):
            draw.rectangle([label_width, y + 2, label_width + int(bar_width * iou), y + row - 3],
                           fill=(70, 130, 180))
            draw.text((label_width + bar_width + 5, y + 3), f"{100 * iou:.1f}", fill="black",
                      font=font)
        else:
            draw.text((label_width + 5, y + 3), "n/a", fill="gray", font=font)
    matrix = np.asarray(result["confusion"], np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        normalised = np.nan_to_num(matrix / matrix.sum(axis=1, keepdims=True))
    left = label_width + bar_width + 60 + label_width
    for i in range(count):
        draw.text((left - label_width + 5, top + i * cell + max(0, cell // 2 - 6)),
                  str(class_names[i])[:16], fill="black", font=font)
        for j in range(count):
            shade = int(255 * (1 - normalised[i, j]))
            draw.rectangle([left + j * cell, top + i * cell, left + (j + 1) * cell - 1,
                            top + (i + 1) * cell - 1], fill=(shade, shade, 255))
    draw.text((left, top + count * cell + 5), "prediction ->  (rows: ground truth, row-normalised)",
              fill="black", font=font)
    image.save(path)
    return path
