"""Sliding-window inference against whole-image inference and a NumPy reference."""

import numpy as np
import pytest
import tensorflow as tf

from deeplabv3_tf.evaluation.inference import (
    Windows, predict_labels, predict_probabilities, window_starts)
from deeplabv3_tf.model import build_deeplabv3
from tests.helpers import LOGIT_REL, probability_bound, tiny_config

CLASSES = 5


def _probability_bound(largest_logit):
    return probability_bound(LOGIT_REL * largest_logit)


@pytest.fixture(scope="module")
def model():
    # Random weights: window combination does not care what the logits mean, and
    # random logits vary from pixel to pixel, so a misplaced window shows.
    return build_deeplabv3(tiny_config(num_classes=CLASSES))


def _images(height, width, batch=1, seed=0):
    rng = np.random.default_rng(seed)
    return rng.uniform(0, 255, (batch, height, width, 3)).astype(np.float32)


def _graph(function):
    """As evaluation and the export run it: a tf.function of any image size."""
    return tf.function(function, input_signature=[tf.TensorSpec([None, None, None, 3])])


def _softmax(logits):
    e = np.exp(logits - logits.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def _reference_starts(length, window, stride):
    """mmsegmentation's slide_inference grid, written out."""
    window = min(window, length)
    count = max(length - window + stride - 1, 0) // stride + 1
    return [max(min(i * stride + window, length) - window, 0) for i in range(count)], window


def _reference_windows(model, image, windows, flip):
    """Probabilities [H, W, C] of one image by windows, in NumPy: each window's
    softmax (mean with its flip's), summed, divided by the windows covering
    each pixel; and the largest |logit| of any window."""
    height, width = image.shape[:2]
    ys, h = _reference_starts(height, windows.size[0], windows.stride[0])
    xs, w = _reference_starts(width, windows.size[1], windows.stride[1])
    total = np.zeros((height, width, CLASSES))
    cover = np.zeros((height, width, 1))
    largest = 0.0
    for y in ys:
        for x in xs:
            crop = image[None, y:y + h, x:x + w]
            logits = model(crop).numpy()[0].astype(np.float64)
            p = _softmax(logits)
            largest = max(largest, np.abs(logits).max())
            if flip:
                flipped = model(crop[:, :, ::-1]).numpy()[0, :, ::-1].astype(np.float64)
                p = (p + _softmax(flipped)) / 2
                largest = max(largest, np.abs(flipped).max())
            total[y:y + h, x:x + w] += p
            cover[y:y + h, x:x + w] += 1
    assert cover.min() >= 1
    return total / cover, largest


@pytest.mark.parametrize("length,window,stride", [
    (100, 40, 25), (101, 40, 27), (40, 40, 10), (39, 40, 10), (1, 5, 3), (769, 769, 513),
    (2048, 769, 513), (1024, 769, 513), (10, 3, 3)])
def test_window_grid(length, window, stride):
    starts, size = window_starts(length, window, stride)
    starts = starts.numpy().tolist()
    expected, expected_size = _reference_starts(length, window, stride)
    assert (starts, int(size)) == (expected, expected_size)
    # Inside the image, covering it, the last ending at its edge, all different.
    assert min(starts) == 0 and max(starts) + size == length
    assert len(set(starts)) == len(starts)
    assert all(b - a <= stride for a, b in zip(starts, starts[1:]))


@pytest.mark.parametrize("height,width,window,scales,flip", [
    (61, 83, (61, 83), (1.0,), False),             # a window of the image's size
    (61, 83, (97, 131), (1.0,), True),             # an image smaller than the window
    (64, 48, (64, 48), (0.75, 1.25), True)])  # even sizes, multi-scale + flip
def test_window_covering_the_image_is_whole_image_inference(model, height, width, window,
                                                            scales, flip):
    images = _images(height, width)
    largest = max(scales)
    # At every scale the image fits the window: every scale runs whole.
    windows = Windows((int(window[0] * largest) + 1, int(window[1] * largest) + 1))
    whole = _graph(lambda x: predict_labels(model, x, scales, flip))(images)
    windowed = _graph(lambda x: predict_labels(model, x, scales, flip, windows))(images)
    np.testing.assert_array_equal(windowed.numpy(), whole.numpy())
    whole = _graph(lambda x: predict_probabilities(model, x, scales, flip))(images)
    windowed = _graph(lambda x: predict_probabilities(model, x, scales, flip, windows))(images)
    np.testing.assert_array_equal(windowed.numpy(), whole.numpy())


@pytest.mark.parametrize("height,width,windows,flip", [
    # Odd sizes, 2 windows a call; one column, 7 rows apart: also in the kernel lanes.
    pytest.param(75, 101, Windows((40, 50), (25, 30), batch=2), True,
                 marks=pytest.mark.numerics),
    (75, 101, Windows((40, 50), (25, 30), batch=5), False),  # a row of windows a call
    (64, 97, Windows((64, 33), (1, 16)), False),              # one row; stride 1 unused
    pytest.param(50, 40, Windows((21, 40), (7, 40)), True, marks=pytest.mark.numerics),
])
def test_overlapping_windows_equal_the_numpy_combination(model, height, width, windows, flip):
    images = _images(height, width, batch=2, seed=height + width)
    probabilities = _graph(lambda x: predict_probabilities(model, x, (1.0,), flip, windows))(
        images).numpy()
    labels = _graph(lambda x: predict_labels(model, x, (1.0,), flip, windows))(images).numpy()
    for image, p, lab in zip(images, probabilities, labels):
        expected, largest_logit = _reference_windows(model, image, windows, flip)
        bound = _probability_bound(largest_logit)
        np.testing.assert_allclose(p, expected, rtol=0, atol=bound)
        # The labels are those probabilities' argmax, where no near tie decides:
        # two probabilities further apart than twice the bound keep their order.
        top2 = np.sort(expected, axis=-1)[..., -2:]
        clear = top2[..., 1] - top2[..., 0] > 2 * bound
        assert clear.mean() > 0.5
        np.testing.assert_array_equal(lab[clear], expected.argmax(-1)[clear])


@pytest.mark.numerics
def test_multiscale_windows_equal_the_numpy_combination(model):
    # At 0.5 the 59x77 image fits in one window; at 1.5 it does not.
    scales, windows = (0.5, 1.5), Windows((36, 44), (20, 30), batch=3)
    images = _images(59, 77)
    got = _graph(lambda x: predict_probabilities(model, x, scales, True, windows))(images).numpy()
    expected, largest = 0, 0.0
    for scale in scales:
        size = [max(1, round(59 * scale)), max(1, round(77 * scale))]
        scaled = tf.image.resize(images, size).numpy()[0] if scale != 1.0 else images[0]
        if size[0] <= 36 and size[1] <= 44:
            # A scale at which the image fits in a window runs whole: logits
            # resized to the input size, then probabilities (whole-image order).
            p = 0
            for flipped in (False, True):
                logits = model(scaled[None, :, ::-1] if flipped else scaled[None])
                largest = max(largest, float(np.abs(logits).max()))
                logits = tf.image.resize(logits[:, :, ::-1] if flipped else logits, (59, 77))
                p = p + _softmax(logits.numpy()[0].astype(np.float64)) / 2
        else:
            p, window_largest = _reference_windows(model, scaled, windows, True)
            largest = max(largest, window_largest)
            if scale != 1.0:
                p = tf.image.resize(p[None].astype(np.float32), (59, 77)).numpy()[0]
        expected = expected + p / len(scales)
    np.testing.assert_allclose(got[0], expected, rtol=0, atol=_probability_bound(largest))
    labels = _graph(lambda x: predict_labels(model, x, scales, True, windows))(images).numpy()
    np.testing.assert_array_equal(labels, got.argmax(-1))


def test_windows_settings():
    assert Windows((769, 769)).stride == (513, 513)
    assert Windows.parse("769x1025", "500x600", 4) == Windows((769, 1025), (500, 600), 4)
    assert Windows.parse("512").size == (512, 512)
    with pytest.raises(ValueError, match="--window='7x'"):
        Windows.parse("7x")
    with pytest.raises(ValueError, match="larger than the window"):
        Windows((10, 10), (11, 5))
    with pytest.raises(ValueError, match="batch 0"):
        Windows((10, 10), batch=0)
