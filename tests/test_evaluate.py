"""Evaluation against an independent NumPy computation; reports; prediction; the CLIs."""

import csv
import json
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from deeplabv3_tf.data import make_dataset
from deeplabv3_tf.evaluation.evaluate import evaluate_model, evaluate_run
from deeplabv3_tf.runs import load_trained_model
from deeplabv3_tf.ops.metrics import iou_from_confusion
from deeplabv3_tf.serving.predict import predict_files
from tests.helpers import ROOT



@pytest.mark.parametrize("scales,flip", [((1.0,), False), ((0.75, 1.25), True)])
def test_miou_equals_numpy_confusion_matrix(trained_run, scales, flip):
    model, _, _ = load_trained_model(trained_run["run_dir"])
    seen = []
    result = evaluate_model(model, make_dataset(trained_run["val_records"], training=False), 21,
                            scales, flip,
                            on_batch=lambda batch, pred: seen.append((batch["label"].numpy(), pred)))
    # Images of different sizes in one run.
    assert len({labels.shape for labels, _ in seen}) > 1
    matrix = np.zeros((21, 21), np.int64)
    for labels, predictions in seen:
        valid = labels != 255
        matrix += np.bincount(21 * labels[valid] + predictions[valid], minlength=441).reshape(21, 21)
    np.testing.assert_array_equal(result["confusion"], matrix)
    present = (matrix.sum(0) + matrix.sum(1)) > 0
    iou = np.diag(matrix)[present] / (matrix.sum(0) + matrix.sum(1) - np.diag(matrix))[present]
    assert result["miou"] == pytest.approx(iou.mean(), abs=1e-12)
    assert result["pixel_accuracy"] == pytest.approx(np.trace(matrix) / matrix.sum())
    assert result["images"] == len(seen) == 6


def test_iou_ignores_absent_classes():
    matrix = np.array([[5, 1, 0], [2, 4, 0], [0, 0, 0]])
    result = iou_from_confusion(matrix)
    assert np.isnan(result["iou"][2])
    assert result["miou"] == pytest.approx((5 / 8 + 4 / 7) / 2)


def test_windows_covering_every_image_score_as_whole_images(trained_run, tmp_path):
    from deeplabv3_tf.evaluation.inference import Windows

    whole = evaluate_run(trained_run["run_dir"], str(tmp_path / "whole"), output_stride=16,
                         progress=False, log=lambda _: None)["os16"]
    # Val images are 70-100 pixels a side: 100x100 windows cover each one.
    covering = evaluate_run(trained_run["run_dir"], str(tmp_path / "covering"),
                            output_stride=16, windows=Windows((100, 100)), progress=False,
                            log=lambda _: None)["os16_win100x100"]
    np.testing.assert_array_equal(covering["confusion"], whole["confusion"])
    windowed = evaluate_run(trained_run["run_dir"], str(tmp_path / "windowed"),
                            output_stride=16, windows=Windows((49, 49), batch=3),
                            progress=False, log=lambda _: None)["os16_win49x49"]
    assert windowed["confusion"].sum() == whole["confusion"].sum()
    assert not np.array_equal(windowed["confusion"], whole["confusion"])


def test_evaluate_run_protocol_and_reports(trained_run, tmp_path):
    lines = []
    results = evaluate_run(trained_run["run_dir"], str(tmp_path), progress=False, log=lines.append)
    # tiny_voc's protocol, as the paper's: OS16, OS8 with the same weights, OS8 + MS + flip.
    assert list(results) == ["os16", "os8", "os8_ms_flip"]
    with open(tmp_path / "results.json") as f:
        summary = json.load(f)
    assert summary["os8"]["output_stride"] == 8
    assert summary["os8_ms_flip"]["scales"] == [0.75, 1.0, 1.25]
    with open(tmp_path / "os16_per_class_iou.csv") as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["class_id", "class", "iou", "ground_truth_pixels", "predicted_pixels"]
    assert rows[-1][1] == "mean" and float(rows[-1][2]) == pytest.approx(results["os16"]["miou"], abs=1e-6)
    with open(tmp_path / "os16_confusion_matrix.csv") as f:
        rows = list(csv.reader(f))
    assert len(rows) == 22 and rows[16][0] == "person"
    np.testing.assert_array_equal(np.array([r[1:] for r in rows[1:]], int),
                                  results["os16"]["confusion"])
    assert Image.open(tmp_path / "os16_chart.png").size[0] > 400
    assert any("mIoU" in line for line in lines)


def test_predict_from_run_and_export(trained_run, tmp_path):
    from deeplabv3_tf.serving.export import export_saved_model

    images_dir = os.path.join(trained_run["voc_dir"], "JPEGImages")
    image = os.path.join(images_dir, f"{trained_run['val_ids'][0]}.jpg")
    from_run = predict_files(trained_run["run_dir"], [image], str(tmp_path / "run"), log=lambda _: None)
    export = export_saved_model(trained_run["run_dir"], str(tmp_path / "export"), log=lambda _: None)
    from_export = predict_files(export, [image], str(tmp_path / "export_out"), log=lambda _: None)
    a = np.asarray(Image.open(from_run[0]["outputs"]["labels"]))
    b = np.asarray(Image.open(from_export[0]["outputs"]["labels"]))
    assert a.shape == np.asarray(Image.open(image)).shape[:2]
    assert np.mean(a == b) > 0.999
    overlay = np.asarray(Image.open(from_run[0]["outputs"]["overlay"]))
    assert overlay.shape == a.shape + (3,)
    with pytest.raises(FileNotFoundError, match="nothing.jpg"):
        predict_files(trained_run["run_dir"], [str(tmp_path / "nothing.jpg")], str(tmp_path))


def _run(*args):
    return subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=600)


def test_evaluate_export_predict_tools(trained_run, tmp_path):
    evaluated = _run("tools/evaluate.py", f"--model_dir={trained_run['run_dir']}",
                     f"--output_dir={tmp_path / 'eval'}", "--output_stride=8", "--noprogress",
                     "--window=48x56", "--window_stride=40x40", "--window_batch=2")
    assert evaluated.returncode == 0, evaluated.stderr[-2000:]
    assert "mIoU" in evaluated.stdout + evaluated.stderr
    assert (tmp_path / "eval" / "os8_win48x56_chart.png").exists()
    with open(tmp_path / "eval" / "results.json") as f:
        assert json.load(f)["os8_win48x56"]["window"] == {
            "size": [48, 56], "stride": [40, 40], "batch": 2}
    exported = _run("tools/export.py", f"--model_dir={trained_run['run_dir']}",
                    f"--export_dir={tmp_path / 'export'}", "--scales=1.0,1.5", "--window=64")
    assert exported.returncode == 0, exported.stderr[-2000:]
    assert exported.stdout.strip().endswith(str(tmp_path / "export" / "1"))
    with open(tmp_path / "export" / "1" / "assets.extra" / "export_config.json") as f:
        options = json.load(f)["options"]
    assert options["window"] == {"size": [64, 64], "stride": [43, 43], "batch": 1}
    assert options["max_pixels"] == 4096 * 4096  # the windowed default budget
    bad = _run("tools/export.py", f"--model_dir={trained_run['run_dir']}",
               f"--export_dir={tmp_path / 'export'}", "--window=64x0")
    assert bad.returncode == 1 and "--window='64x0'" in bad.stderr
    images_dir = os.path.join(trained_run["voc_dir"], "JPEGImages")
    predicted = _run("tools/predict.py", f"--source={tmp_path / 'export' / '1'}",
                     f"--output_dir={tmp_path / 'pred'}", images_dir)
    assert predicted.returncode == 0, predicted.stderr[-2000:]
    assert len(list((tmp_path / "pred").glob("*_overlay.png"))) == len(os.listdir(images_dir))
    missing = _run("tools/evaluate.py", f"--model_dir={tmp_path / 'nowhere'}")
    assert missing.returncode == 1 and "experiment.json" in missing.stderr


def test_predict_skips_images_over_budget_or_unreadable(trained_run, tmp_path):
    """Each bad file is one line; the good images are still written; exit status 1."""
    import shutil

    from deeplabv3_tf.data.synthetic import png_of_size

    images = tmp_path / "images"
    images.mkdir()
    good = os.path.join(trained_run["voc_dir"], "JPEGImages", f"{trained_run['val_ids'][0]}.jpg")
    shutil.copy(good, images / "a_good.jpg")
    (images / "b_huge.png").write_bytes(png_of_size(12000, 12000))
    (images / "c_broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a JPEG")
    (images / "d_cut.png").write_bytes((images / "b_huge.png").read_bytes()[:20])
    for source in (trained_run["run_dir"], None):
        if source is None:  # an export, whose own budget is larger than the flag's
            from deeplabv3_tf.serving.export import export_saved_model
            source = export_saved_model(trained_run["run_dir"], str(tmp_path / "export"),
                                        log=lambda _: None)
        out = tmp_path / f"out_{os.path.basename(source)}"
        result = _run("tools/predict.py", f"--source={source}", f"--output_dir={out}",
                      "--max_pixels=1000000", str(images))
        assert result.returncode == 1, result.stderr[-2000:]
        lines = result.stdout.strip().splitlines()
        assert len(lines) == 4, result.stdout
        assert lines[0].startswith(str(images / "a_good.jpg") + ": ")
        assert lines[1] == (f"{images / 'b_huge.png'}: skipped: 12000x12000 = 144000000 pixels, "
                            "over the budget of 1000000 pixels (--max_pixels)")
        assert lines[2] == f"{images / 'c_broken.jpg'}: skipped: the header is truncated or malformed"
        assert lines[3] == f"{images / 'd_cut.png'}: skipped: the header is truncated or malformed"
        assert result.stderr.strip().splitlines()[-1] == "3 of 4 images skipped"
        assert sorted(p.name for p in out.iterdir()) == [
            "a_good_labels.png", "a_good_mask.png", "a_good_overlay.png"]


def test_per_image_iou_by_hand():
    from deeplabv3_tf.ops.metrics import per_image_iou
    from deeplabv3_tf.pages.evaluation_page import error_map

    label = np.array([[0, 0, 1, 1], [0, 0, 1, 255]])
    prediction = np.array([[0, 1, 1, 1], [0, 0, 2, 2]])
    # Class 0: intersection 3, union 4; class 1: 2 of 4;
    # class 2 (predicted, absent): 0 / 1; the void pixel counts nowhere.
    assert per_image_iou(label, prediction, 3) == pytest.approx((3 / 4 + 2 / 4 + 0) / 3)
    assert np.isnan(per_image_iou(np.full((2, 2), 255), np.zeros((2, 2), int), 3))
    errors = error_map(np.full((2, 4, 3), 200, np.uint8), label, prediction)
    wrong = (errors == (235, 40, 40)).all(-1)
    np.testing.assert_array_equal(wrong, (label != prediction) & (label != 255))
    assert (errors[1, 3] == (70, 90, 190)).all()


def test_report_page_shows_the_papers_figure(tmp_path):
    from deeplabv3_tf.data.dataset import PASCAL_VOC
    from deeplabv3_tf.pages.evaluation_page import ImageRanking, write_report

    names = list(PASCAL_VOC.class_names)
    summary = {name: {"miou": miou, "paper_miou": paper, "pixel_accuracy": 0.9, "images": 2,
                      "output_stride": 16, "scales": [1.0], "flip": False, "window": None,
                      "checkpoint": "ckpt-1", "iou": {n: (None if i == 3 else 0.5)
                                                       for i, n in enumerate(names)}}
               for name, miou, paper in (("os16", 0.7712, 77.21), ("os8", 0.5, None))}
    ranking = ImageRanking(21, k=1)
    page = write_report(str(tmp_path), summary, {n: np.eye(21, dtype=np.int64) for n in summary},
                        {"os16": ranking}, names, PASCAL_VOC.lookup(), "voc_r101_os16")
    text = open(page).read()
    assert 'data-setting="os16" data-key="paper_miou">77.21<' in text
    assert 'data-setting="os8" data-key="paper_miou">-<' in text
    assert "paper (os16)" in text and "paper (os8)" not in text  # the bar beside the mIoU's
    assert 'data-setting="os16" data-class="bird" data-key="iou">n/a<' in text
    assert "0 worst and 0 best of 0 images" in text


def test_mobilenet_v3_run_trains_evaluates_and_predicts(trained_run, tmp_path):
    """The tiny MobileNetV3 recipe through the library's training, evaluation at
    output stride 8 with multi-scale + flip (its last stage at rate 4), the report
    page, and prediction."""
    from deeplabv3_tf.configs.experiment import override
    from deeplabv3_tf.configs.recipes import tiny_voc_mobilenetv3
    from deeplabv3_tf.training.trainer import train

    records = trained_run["records_dir"]
    experiment = override(tiny_voc_mobilenetv3(), [
        f"data.train_records={records + '/train-*'!r}",
        f"data.val_records={records + '/val-*'!r}", "train.steps=4", "train.batch_size=2",
        "data.crop_size=(65, 65)", "train.checkpoint_every=4", "train.log_every=2",
        "train.image_summary_every=0"])
    run = str(tmp_path / "run")
    result = train(experiment, run, progress=False, log=lambda _: None)
    assert result.step == 4 and all(np.isfinite(h["loss"]) for h in result.history)
    evaluated = evaluate_run(run, str(tmp_path / "eval"), output_stride=8,
                             scales=(0.75, 1.0), flip=True, progress=False, examples=1,
                             log=lambda _: None)
    assert list(evaluated) == ["os8_ms_flip"] and evaluated["os8_ms_flip"]["images"] == 6
    assert (tmp_path / "eval" / "report.html").exists()
    images = [os.path.join(trained_run["voc_dir"], "JPEGImages", f"{i}.jpg")
              for i in trained_run["val_ids"][:2]]
    written = predict_files(run, images, str(tmp_path / "pred"), log=lambda _: None)
    assert [Image.open(w["outputs"]["labels"]).size for w in written] == [
        Image.open(p).size for p in images]


def test_image_ranking_keeps_the_ends_small():
    """k worst and k best by per-image IoU, kept at the page's picture size."""
    import tensorflow as tf

    from deeplabv3_tf.pages.evaluation_page import PICTURE_SIDE, ImageRanking

    rng = np.random.default_rng(0)
    ranking = ImageRanking(num_classes=3, k=2)
    label = np.zeros((1, 700, 500), np.int32)
    label[:, :350] = 1
    for i, wrong in enumerate([0.5, 0.1, 0.9, 0.3, 0.0]):
        prediction = label.copy()
        prediction[:, : int(700 * wrong)] = 2  # more rows wrong, lower IoU
        ranking({"image": tf.constant(rng.uniform(0, 255, (1, 700, 500, 3)), tf.float32),
                 "label": tf.constant(label), "height": tf.constant([700]),
                 "width": tf.constant([500]), "filename": tf.constant([f"img{i}".encode()])},
                prediction)
    assert [name for _, name, *_ in ranking.worst()] == ["img2", "img0"]
    assert [name for _, name, *_ in ranking.best()] == ["img4", "img1"]
    scores = dict(ranking.scores)
    assert scores["img4"] == 1.0 and scores["img2"] < scores["img0"] < scores["img3"]
    _, _, image, kept_label, kept_prediction, size = ranking.worst()[0]
    assert size == (700, 500) and image.dtype == kept_label.dtype == np.uint8
    assert image.shape == (PICTURE_SIDE, round(500 * PICTURE_SIDE / 700), 3)
    assert kept_label.shape == kept_prediction.shape == image.shape[:2]
