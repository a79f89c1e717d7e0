"""Hard-pixel mining (research/deeplab's top_k_percent_pixels) against NumPy."""

import numpy as np
import pytest
import tensorflow as tf

from deeplabv3_tf.configs.experiment import ExperimentConfig, TrainConfig, override
from deeplabv3_tf.ops.losses import (
    hard_pixel_counts, mining_fraction, segmentation_loss_sum, valid_pixel_count)
from deeplabv3_tf.tasks.segmentation import SegmentationTask


def _cross_entropy(labels, logits):
    logits = logits.astype(np.float64)
    shifted = logits - logits.max(-1, keepdims=True)
    log_softmax = shifted - np.log(np.exp(shifted).sum(-1, keepdims=True))
    safe = np.where(labels == 255, 0, labels)
    return -np.take_along_axis(log_softmax, safe[..., None], -1)[..., 0]


def hard_loss_reference(labels, logits, fraction, class_weights=None):
    """Per image: its valid pixels' losses, the floor(fraction * n) largest (at least 1)."""
    losses = _cross_entropy(labels, logits)
    if class_weights is not None:
        losses = losses * np.asarray(class_weights)[np.where(labels == 255, 0, labels)]
    total, count = 0.0, 0
    for image_losses, image_labels in zip(losses, labels):
        valid = image_losses[image_labels != 255]
        if valid.size == 0:
            continue
        k = max(int(np.floor(np.float32(fraction) * np.float32(valid.size))), 1)
        total += np.sort(valid)[::-1][:k].sum()
        count += k
    return total, count


def _batch(seed=0):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 4, (3, 13, 17)).astype(np.int32)
    labels[0, :5] = 255          # partly void
    labels[1] = 255              # all void: contributes nothing
    labels[2, 0, 0] = 255
    logits = rng.normal(0, 3, (3, 13, 17, 4)).astype(np.float32)
    return labels, logits


@pytest.mark.parametrize("fraction", [0.01, 0.25, 0.5, 1.0])
@pytest.mark.parametrize("class_weights", [None, (1.0, 2.0, 0.5, 3.0)])
def test_hard_pixel_loss_equals_reference(fraction, class_weights):
    labels, logits = _batch()
    expected, count = hard_loss_reference(labels, logits, fraction, class_weights)
    actual = segmentation_loss_sum(labels, logits, class_weights=class_weights,
                                   hard_fraction=tf.constant(fraction))
    assert float(actual) == pytest.approx(expected, rel=1e-5)
    assert float(valid_pixel_count(labels, hard_fraction=tf.constant(fraction))) == count
    # The whole image's loss at 1.0, the plain loss's normaliser too.
    if fraction == 1.0:
        plain = segmentation_loss_sum(labels, logits, class_weights=class_weights)
        assert float(actual) == pytest.approx(float(plain), rel=1e-5)
        assert count == float(valid_pixel_count(labels))


def test_only_the_kept_pixels_get_a_gradient():
    labels, logits = _batch(1)
    logits = tf.constant(logits)
    with tf.GradientTape() as tape:
        tape.watch(logits)
        loss = segmentation_loss_sum(labels, logits, hard_fraction=tf.constant(0.2))
    touched = np.abs(tape.gradient(loss, logits).numpy()).sum(-1) > 0
    losses = _cross_entropy(labels, logits.numpy())
    counts = hard_pixel_counts(labels, 0.2).numpy()
    for i in range(3):
        assert touched[i].sum() == counts[i]
        if counts[i]:
            # Exactly the image's hardest valid pixels.
            threshold = np.sort(losses[i][labels[i] != 255])[::-1][counts[i] - 1]
            assert losses[i][touched[i]].min() >= threshold
    assert list(counts) == [int(np.floor(np.float32(0.2) * (8 * 17))), 0,
                            int(np.floor(np.float32(0.2) * (13 * 17 - 1)))]


def test_mining_schedule_reaches_k_gradually():
    # research/deeplab: ratio = min(1, step / mining_step); share = ratio * k + (1 - ratio).
    for step in (0, 1, 250, 999, 1000, 5000):
        ratio = min(1.0, step / 1000)
        assert float(mining_fraction(step, 0.25, 1000)) == pytest.approx(
            ratio * 0.25 + 1 - ratio, abs=1e-7)
    assert float(mining_fraction(0, 0.25, 0)) == pytest.approx(0.25)


def test_task_uses_the_schedule_and_config_checks_values():
    labels, logits = _batch(2)
    experiment = override(ExperimentConfig(name="x"), [
        "train.top_k_percent_pixels=0.1", "train.hard_example_mining_step=100"])
    task = SegmentationTask()
    batch = {"label": labels}
    for step, fraction in ((0, 1.0), (50, 0.55), (400, 0.1)):
        expected, count = hard_loss_reference(labels, logits, fraction)
        step = tf.constant(step, tf.int64)
        assert float(task.loss_sum(batch, logits, experiment, step)) == pytest.approx(
            expected, rel=1e-5)
        assert float(task.loss_normalizer(batch, experiment, step)) == count
    off = ExperimentConfig(name="x")
    assert not off.train.mines_hard_pixels
    assert float(task.loss_normalizer(batch, off, tf.constant(0))) == float(
        valid_pixel_count(labels))
    with pytest.raises(ValueError, match="top_k_percent_pixels=0.0"):
        TrainConfig(top_k_percent_pixels=0.0)
    with pytest.raises(ValueError, match="hard_example_mining_step=-1"):
        TrainConfig(hard_example_mining_step=-1)
