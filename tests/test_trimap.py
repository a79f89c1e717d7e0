"""Trimap bands and their mIoU against a NumPy reference written from the definition."""

import json

import numpy as np
import pytest

from deeplabv3_tf.data import make_dataset
from deeplabv3_tf.evaluation.evaluate import evaluate_model, evaluate_run
from deeplabv3_tf.ops.metrics import boundary_band, iou_from_confusion, trimap_confusions
from deeplabv3_tf.runs import load_trained_model


def band_reference(label: np.ndarray, width: int) -> np.ndarray:
    """Pixel by pixel: more than one value in the clipped (2w+1)^2 window."""
    height, breadth = label.shape
    band = np.zeros(label.shape, bool)
    for i in range(height):
        for j in range(breadth):
            window = label[max(0, i - width):i + width + 1, max(0, j - width):j + width + 1]
            band[i, j] = len(np.unique(window)) > 1
    return band


def confusion_reference(label, prediction, band, num_classes, ignore=255):
    keep = band & (label != ignore)
    return np.bincount(num_classes * label[keep].astype(np.int64) + prediction[keep],
                       minlength=num_classes ** 2).reshape(num_classes, num_classes)


def _scene():
    """Two objects, a void band around one, on a 23x31 background."""
    label = np.zeros((23, 31), np.int32)
    label[4:12, 5:14] = 1
    label[14:21, 18:29] = 2
    label[13, 17:30] = 255
    label[13:22, 17] = 255
    return label


@pytest.mark.parametrize("width", [1, 3, 5, 10, 40])
def test_band_equals_reference(width):
    label = _scene()
    band = boundary_band(label[None], width).numpy()[0]
    np.testing.assert_array_equal(band, band_reference(label, width))


def test_band_edge_cases():
    label = _scene()
    # Wider than the image: every window holds the whole image, so every pixel is in it.
    assert boundary_band(label[None], 40).numpy().all()
    # No boundary: one label everywhere (a void-only image too): the band is empty.
    for value in (7, 255):
        assert not boundary_band(np.full((1, 9, 12), value), 3).numpy().any()
    # The image border is not a boundary: a one-pixel object in a corner gives a
    # band of (w + 1)^2 pixels, not one padded outwards.
    corner = np.zeros((1, 10, 10), np.int32)
    corner[0, 0, 0] = 3
    assert boundary_band(corner, 2).numpy().sum() == 9
    with pytest.raises(ValueError, match="width=0"):
        boundary_band(label[None], 0)


def test_trimap_confusions_and_miou_equal_reference():
    rng = np.random.default_rng(0)
    labels = np.stack([_scene(), np.full((23, 31), 2, np.int32)])
    predictions = labels.copy()
    predictions[predictions == 255] = 0
    # Errors near the boundaries and far from them.
    predictions[0, 11:14, 5:14] = 2
    predictions[0, 0:2, 0:3] = 1
    predictions[1] = rng.integers(0, 3, (23, 31))
    widths = (1, 3, 10)
    matrices = trimap_confusions(labels, predictions, 3, widths).numpy()
    for k, width in enumerate(widths):
        expected = sum(confusion_reference(l, p, band_reference(l, width), 3)
                       for l, p in zip(labels, predictions))
        np.testing.assert_array_equal(matrices[k], expected)
    # The second image has no boundary: it adds nothing to any band.
    alone = trimap_confusions(labels[1:], predictions[1:], 3, widths).numpy()
    assert not alone.any()
    assert np.isnan(iou_from_confusion(alone[0])["miou"])
    # The errors at the boundary weigh more in the narrow band than in the image.
    whole = iou_from_confusion(confusion_reference(labels[0], predictions[0],
                                                   np.ones((23, 31), bool), 3))["miou"]
    assert iou_from_confusion(matrices[0])["miou"] < whole


def test_evaluation_reports_trimap_equal_to_reference(trained_run, tmp_path):
    model, _, _ = load_trained_model(trained_run["run_dir"])
    seen = []
    result = evaluate_model(model, make_dataset(trained_run["val_records"], training=False), 21,
                            trimap_bands=(3, 10),
                            on_batch=lambda batch, pred: seen.append((batch["label"].numpy(), pred)))
    for width in (3, 10):
        matrix = sum(confusion_reference(l, p, band_reference(l, width), 21)
                     for labels, predictions in seen for l, p in zip(labels, predictions))
        expected = iou_from_confusion(matrix)
        assert result["trimap"][width]["pixels"] == matrix.sum() > 0
        assert result["trimap"][width]["miou"] == pytest.approx(expected["miou"], abs=1e-12)
    lines = []
    evaluate_run(trained_run["run_dir"], str(tmp_path), output_stride=16, progress=False,
                 log=lines.append)
    with open(tmp_path / "results.json") as f:
        trimap = json.load(f)["os16"]["trimap"]
    assert list(trimap) == ["3", "5", "10"]
    assert trimap["10"]["pixels"] > trimap["3"]["pixels"] > 0
    assert "\n  trimap mIoU  3px " in "\n".join(lines)
    page = (tmp_path / "report.html").read_text()
    assert 'data-band="5"' in page and "<h2>Boundaries</h2>" in page
