import io

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from deeplabv3_tf.data import make_dataset
from deeplabv3_tf.data.dataset import IMAGENET_MEAN_RGB
from deeplabv3_tf.data.augment import random_scale
from deeplabv3_tf.data.schema import segmentation_example

# Each class has a distinct pure colour; void pixels are grey.
COLOURS = np.array([[0, 0, 0], [250, 0, 0], [0, 250, 0], [0, 0, 250], [250, 250, 0]], np.float32)
VOID_COLOUR = np.array([200, 200, 200], np.float32)


def _png(array):
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture(scope="module")
def records(tmp_path_factory):
    """PNG images whose pixel colour is a function of the label, in 2 shards."""
    rng = np.random.default_rng(0)
    directory = tmp_path_factory.mktemp("records")
    sizes = []
    for shard in range(2):
        with tf.io.TFRecordWriter(str(directory / f"train-{shard:05d}-of-00002.tfrecord")) as w:
            for i in range(4):
                h, w_ = int(rng.integers(40, 90)), int(rng.integers(40, 90))
                label = np.zeros((h, w_), np.uint8)
                for cls in (1, 2, 3, 4):
                    y, x = rng.integers(0, h - 12), rng.integers(0, w_ - 12)
                    label[y:y + 12, x:x + 12] = cls
                label[:3] = 255
                image = np.where((label == 255)[..., None], VOID_COLOUR,
                                 COLOURS[np.minimum(label, 4)]).astype(np.uint8)
                w.write(segmentation_example(_png(image), "png", h, w_, _png(label),
                                             f"{shard}_{i}"))
                sizes.append((h, w_))
    return str(directory / "train-*"), sizes


def _interior(label):
    """Pixels whose 3x3 neighbourhood, inside the crop, has one label (away from
    resampling seams; the crop's outer ring is excluded, its neighbours are unseen)."""
    padded = np.pad(label, 1, constant_values=-1)
    same = np.ones(label.shape, bool)
    for dy in (0, 1, 2):
        for dx in (0, 1, 2):
            same &= padded[dy:dy + label.shape[0], dx:dx + label.shape[1]] == label
    return same


def test_image_and_label_stay_aligned_through_augmentation(records):
    pattern, _ = records
    dataset = make_dataset(pattern, training=True, batch_size=4, crop_size=(97, 131),
                           deterministic=True, seed=3)
    padded_seen = 0
    for batch in dataset.take(6):
        images, labels = batch["image"].numpy(), batch["label"].numpy()
        assert images.shape == (4, 97, 131, 3) and labels.shape == (4, 97, 131)
        assert images.dtype == np.float32 and labels.dtype == np.int32
        for image, label in zip(images, labels):
            assert set(np.unique(label)) <= {0, 1, 2, 3, 4, 255}
            inside = _interior(label)
            for cls in (0, 1, 2, 3, 4):
                mask = inside & (label == cls)
                if mask.any():
                    np.testing.assert_allclose(image[mask], np.broadcast_to(
                        COLOURS[cls], image[mask].shape), atol=1.0)
            void = inside & (label == 255)
            is_pad = np.all(np.abs(image - IMAGENET_MEAN_RGB) < 1e-3, axis=-1)
            padded_seen += is_pad.sum()
            # Void pixels are either the grey void band or padding.
            grey = np.all(np.abs(image - VOID_COLOUR) < 1.0, axis=-1)
            assert np.all(grey[void] | is_pad[void])
            assert np.all(label[is_pad] == 255)
    assert padded_seen > 0


def test_training_stream_is_reproducible_and_seeded(records):
    pattern, _ = records

    def first(seed):
        dataset = make_dataset(pattern, training=True, batch_size=2, crop_size=(33, 33),
                               deterministic=True, seed=seed)
        return [b["image"].numpy() for b in dataset.take(3)]

    a, b, c = first(1), first(1), first(2)
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x, y)
    assert any(not np.array_equal(x, z) for x, z in zip(a, c))


def test_random_scale_range_and_nearest_labels():
    image = tf.random.uniform((40, 60, 3), 0, 255)
    label = tf.constant(np.random.default_rng(0).integers(0, 5, (40, 60)), tf.int32)
    heights = []
    for i in range(60):
        scaled_image, scaled_label = random_scale(image, label, tf.constant([7, i]), 0.5, 2.0)
        assert scaled_image.shape[:2] == scaled_label.shape
        assert set(np.unique(scaled_label.numpy())) <= set(range(5))
        heights.append(scaled_label.shape[0])
    assert 20 <= min(heights) < 28 and 70 < max(heights) <= 80


def test_evaluation_keeps_whole_images(records):
    pattern, sizes = records
    single = list(make_dataset(pattern, training=False))
    assert len(single) == 8
    assert sorted(tuple(b["label"].shape[1:]) for b in single) == sorted(sizes)
    batched = list(make_dataset(pattern, training=False, batch_size=3))
    assert [b["image"].shape[0] for b in batched] == [3, 3, 2]
    for batch in batched:
        for image, label, h, w in zip(batch["image"].numpy(), batch["label"].numpy(),
                                      batch["height"].numpy(), batch["width"].numpy()):
            assert (label[h:] == 255).all() and (label[:, w:] == 255).all()
            if h < image.shape[0]:
                np.testing.assert_allclose(image[h:, 0], np.broadcast_to(
                    IMAGENET_MEAN_RGB, image[h:, 0].shape), atol=1e-4)
            assert (label[:h, :w] != 255).any()


def test_missing_records_are_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="nothing-here"):
        make_dataset(str(tmp_path / "nothing-here-*"), training=True)


def test_stream_restarts_at_any_position(records):
    from deeplabv3_tf.data.pipeline import training_stream

    pattern, _ = records
    full = [(int(i), r.numpy()) for i, r in training_stream(pattern, seed=5, shuffle_buffer=4).take(21)]
    assert [i for i, _ in full] == list(range(21))
    # Each epoch (8 records) visits every record once, in an order that changes.
    assert sorted(r for _, r in full[:8]) == sorted(r for _, r in full[8:16])
    assert [r for _, r in full[:8]] != [r for _, r in full[8:16]]
    for start in (3, 8, 13):
        resumed = [(int(i), r.numpy()) for i, r in
                   training_stream(pattern, seed=5, shuffle_buffer=4, start_index=start).take(21 - start)]
        assert resumed == full[start:]


def test_hard_class_images_repeat(records):
    from deeplabv3_tf.data.pipeline import repeat_hard_classes, training_stream

    pattern, _ = records
    plain = training_stream(pattern, seed=0, shuffle_buffer=1).take(8)
    # Class 4 is in every image of the fixture, class 9 in none.
    doubled = training_stream(pattern, seed=0, shuffle_buffer=1,
                              repeat_record=repeat_hard_classes([4], 2)).take(16)
    none = training_stream(pattern, seed=0, shuffle_buffer=1,
                           repeat_record=repeat_hard_classes([9], 2)).take(8)
    plain_records = sorted(r.numpy() for _, r in plain)
    doubled_records = sorted(r.numpy() for _, r in doubled)
    assert doubled_records == sorted(plain_records * 2)
    assert sorted(r.numpy() for _, r in none) == plain_records
