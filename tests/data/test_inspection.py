"""The record inspector: statistics equal a NumPy count, each classic label mistake is caught."""

import io
import json
import os
import subprocess
import sys

import numpy as np
import tensorflow as tf
from PIL import Image

from deeplabv3_tf.data.dataset import PASCAL_VOC, voc_palette
from deeplabv3_tf.data import schema
from deeplabv3_tf.data.inspection import Thresholds, findings, scan_split
from deeplabv3_tf.pages.records_page import inspect_records
from tests.helpers import ROOT


def _png(label: np.ndarray, mode: str = "L") -> bytes:
    image = Image.fromarray(label.astype(np.uint8), "L")
    if mode == "P":
        image = image.convert("P")
        image.putpalette(voc_palette().ravel().tolist())
        image.frombytes(label.astype(np.uint8).tobytes())
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return buffer.getvalue()


def _scene(rng, height, width, classes=(1, 2), void=True):
    """A noise image with a rectangle per class and a void border, as VOC draws."""
    image = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
    label = np.zeros((height, width), np.uint8)
    for k, c in enumerate(classes):
        label[2 + 3 * k:height // 2 + 3 * k, 2 + 4 * k:width // 2 + 4 * k] = c
    if void:
        label[0, :] = 255
    return image, label


def write_records(path, examples, label_mode="L"):
    """examples: (id, image uint8 [H, W, 3], label [h, w]); no manifest."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with tf.io.TFRecordWriter(str(path)) as writer:
        for example_id, image, label in examples:
            buffer = io.BytesIO()
            Image.fromarray(image).save(buffer, "PNG")
            writer.write(schema.segmentation_example(
                buffer.getvalue(), "png", image.shape[0], image.shape[1],
                _png(label, label_mode), example_id))
    return str(path)


def _inspect(tmp_path, patterns, **kwargs):
    lines = []
    result = inspect_records(patterns, str(tmp_path / "out"), progress=False,
                             log=lines.append, **kwargs)
    return result, lines


def _titles(result):
    return {f.title for f in result["findings"]}


def test_counts_equal_numpy_and_classes_come_from_the_manifest(tmp_path):
    from deeplabv3_tf.data.tfrecord_builders.voc import build_voc
    from deeplabv3_tf.data.synthetic import write_voc_dataset

    info = write_voc_dataset(str(tmp_path / "data"), num_train=6, num_val=3, with_sbd=False,
                             size_range=(40, 60), max_objects=2)
    build_voc(info["voc_dir"], str(tmp_path / "records"), splits=("train", "val"),
              num_workers=1, progress=False, log=lambda _: None)
    result, lines = _inspect(tmp_path, [str(tmp_path / "records" / "train-*"),
                                        str(tmp_path / "records" / "val-*")],
                             samples=4, crop_size=(33, 33))
    expected = np.zeros(256, np.int64)
    for example_id in info["train"]:
        label = np.asarray(Image.open(os.path.join(info["voc_dir"], "SegmentationClass",
                                                   f"{example_id}.png")))
        expected += np.bincount(label.ravel(), minlength=256)
    train = result["splits"]["train"]
    assert train["images"] == 6 and train["classes_from"].startswith("manifest")
    assert [train["classes"][n]["pixels"] for n in train["dataset"]["class_names"]] == \
        expected[:21].tolist()
    assert train["void_pixels"] == expected[255]
    assert not train["other_values"]
    assert train["label_png_types"] == {"greyscale": 6}
    # Generated VOC data is clean: no error-level findings, and no duplicates across splits.
    assert not [f for f in result["findings"] if f.level == "error"], lines
    page = open(result["page"]).read()
    assert page.count("<figure>") == 4 + 3  # 4 sampled of train, all 3 of val
    pictures = os.listdir(tmp_path / "out" / "pictures")
    assert len(pictures) == 7
    summary = json.load(open(tmp_path / "out" / "summary.json"))
    assert summary["splits"]["val"]["images"] == 3


def test_palette_pngs_and_luminance_masks_are_errors(tmp_path):
    rng = np.random.default_rng(0)
    scenes = [(f"img{i}",) + _scene(rng, 40, 50, classes=(1, 15, 7)) for i in range(4)]
    palette = write_records(tmp_path / "palette" / "train-00000-of-00001.tfrecord", scenes, "P")
    result, lines = _inspect(tmp_path, [palette], num_classes=21)
    assert {"palette label PNGs", "masks hold palette luminance"} <= _titles(result), lines
    # What TensorFlow decodes from palette PNGs: the grey levels of the VOC colours
    # (classes 1, 15, 7 and void).
    assert set(result["splits"]["train"]["other_values"]) == {"38", "147", "128", "220"}
    # Greyscale masks holding luminance, no manifest and no class count: the values
    # themselves (sparse, each the grey of a VOC colour) give it away.
    grey = voc_palette()[[0, 1, 15, 7, 255]] @ np.array([0.299, 0.587, 0.114])
    table = np.zeros(256, np.uint8)
    table[[0, 1, 15, 7, 255]] = np.round(grey).astype(np.uint8)
    converted = [(i, image, table[label]) for i, image, label in scenes]
    luminance = write_records(tmp_path / "lum" / "train-00000-of-00001.tfrecord", converted)
    result, lines = _inspect(tmp_path, [luminance])
    assert _titles(result) & {"masks hold palette luminance"}, lines
    assert "no manifest" in result["splits"]["train"]["classes_from"]
    # The same scenes written right: no label error.
    right = write_records(tmp_path / "right" / "train-00000-of-00001.tfrecord", scenes)
    result, _ = _inspect(tmp_path, [right])
    assert not [f for f in result["findings"] if f.level == "error"]
    assert result["splits"]["train"]["dataset"]["class_names"][-1] == "class 15"


def test_out_of_range_binary_and_shifted_labels(tmp_path):
    rng = np.random.default_rng(1)
    scenes = [(f"a{i}",) + _scene(rng, 30, 30, classes=(1, 30)) for i in range(3)]
    path = write_records(tmp_path / "range" / "train-00000-of-00001.tfrecord", scenes)
    result, lines = _inspect(tmp_path, [path], num_classes=21)
    assert "label values outside the classes" in _titles(result), lines
    assert result["splits"]["train"]["other_values"] == {
        "30": int(sum((label == 30).sum() for _, _, label in scenes))}
    # Binary masks written 0/255: the foreground is the ignore label.
    binary = [(i, image, np.where(label > 0, 255, 0)) for i, image, label in scenes]
    path = write_records(tmp_path / "binary" / "train-00000-of-00001.tfrecord", binary)
    result, lines = _inspect(tmp_path, [path], num_classes=2)
    assert "masks of 0 and 255 only" in _titles(result), lines
    # Background mapped to the ignore label (reduce_zero_label): no class 0 at all.
    shifted = [(i, image, np.where(label == 0, 255, label)) for i, image, label in scenes]
    path = write_records(tmp_path / "shifted" / "train-00000-of-00001.tfrecord", shifted)
    result, lines = _inspect(tmp_path, [path], num_classes=31)
    assert "background labelled as ignore" in _titles(result), lines


def test_void_background_duplicates_sizes_and_leaks(tmp_path):
    rng = np.random.default_rng(2)
    train = [(f"t{i}",) + _scene(rng, 20, 24) for i in range(6)]
    train.append(("copy", train[0][1], train[0][2]))  # the same pixels again
    image = rng.integers(0, 256, (20, 24, 3), dtype=np.uint8)
    train += [(f"void{i}", image + i, np.full((20, 24), 255, np.uint8)) for i in range(2)]
    train += [(f"bg{i}", image + 10 + i, np.zeros((20, 24), np.uint8)) for i in range(3)]
    train.append(("mismatch", image + 20, np.zeros((10, 24), np.uint8)))
    val = [("v0", train[3][1], train[3][2])] + [(f"v{i}",) + _scene(rng, 20, 24)
                                                  for i in range(1, 3)]
    train_path = write_records(tmp_path / "r" / "train-00000-of-00001.tfrecord", train)
    val_path = write_records(tmp_path / "r" / "val-00000-of-00001.tfrecord", val)
    thresholds = Thresholds(nearly_background_images=0.2)
    result, lines = _inspect(tmp_path, [train_path, val_path], crop_size=(97, 97),
                             thresholds=thresholds, samples=3)
    by_title = {f.title: f for f in result["findings"]}
    assert by_title["duplicate images"].examples == ["t0 = copy"]
    assert by_title["images in two splits"].examples == ["t3 = v0"]
    assert by_title["images nearly all void"].examples == ["void0", "void1"]
    # Class 0 is named (VOC colours, inferred names "class k"); background images are flagged
    # only where class 0 is called background: not here.
    assert "images nearly all background" not in by_title
    assert by_title["image and label sizes differ"].examples == [
        "mismatch (image 20x24, label 10x24)"]
    assert "images small for the crop" in by_title
    assert any("[train] duplicate images" in line for line in lines)
    assert lines[-1].startswith("Wrote ")
    # Where class 0 is named background (a manifest's VOC names), those images are flagged.
    stats = scan_split(train_path, PASCAL_VOC, progress=False)
    by_title = {f.title: f for f in findings(stats, PASCAL_VOC, thresholds)}
    assert by_title["images nearly all background"].examples == ["bg0", "bg1", "bg2",
                                                                 "mismatch"]
    # Without the crop, no size finding; with a looser void threshold, no void finding.
    result, _ = _inspect(tmp_path, [train_path],
                         thresholds=Thresholds(nearly_void_images=0.5))
    assert not _titles(result) & {"images small for the crop", "images nearly all void"}


def test_tool_refuses_classification_records(tmp_path):
    from tests.data.fixtures import write_classification

    from deeplabv3_tf.data.tfrecord_builders.classification import build_classification

    manifest = write_classification(str(tmp_path / "cls"))
    build_classification(manifest, str(tmp_path / "records"), num_workers=1, progress=False,
                         log=lambda _: None)
    pattern = next(str(p) for p in (tmp_path / "records").glob("*.tfrecord"))
    out = subprocess.run([sys.executable, "tools/inspect_records.py", pattern,
                          f"--output_dir={tmp_path / 'out'}"], cwd=ROOT,
                         capture_output=True, text=True)
    assert out.returncode != 0
    assert "classification records, not segmentation records" in out.stderr
    assert pattern in out.stderr


def test_tool_names_a_bad_crop_size(tmp_path):
    out = subprocess.run([sys.executable, "tools/inspect_records.py", "x-*",
                          f"--output_dir={tmp_path}", "--crop_size=0x5"], cwd=ROOT,
                         capture_output=True, text=True)
    assert out.returncode != 0 and "--crop_size" in out.stderr
