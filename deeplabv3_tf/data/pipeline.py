"""tf.data input pipelines over the project's TFRecords.

`make_dataset` reads segmentation records (research/deeplab keys) for training
(random scale, pad, crop, flip; repeated and shuffled) or evaluation (whole
images); `make_classification_dataset` reads multi-label classification
records with multi-hot or confidence targets.
"""

from __future__ import annotations

import tensorflow as tf

from deeplabv3_tf.data.dataset import IGNORE_LABEL, IMAGENET_MEAN_RGB
from deeplabv3_tf.data import schema
from deeplabv3_tf.data.augment import augment_for_training

AUTOTUNE = tf.data.AUTOTUNE


def list_files(file_pattern) -> list[str]:
    """Sorted files matching a glob or list of globs; an error names the pattern."""
    patterns = [file_pattern] if isinstance(file_pattern, str) else list(file_pattern)
    files = sorted({f for p in patterns for f in tf.io.gfile.glob(p)})
    if not files:
        raise FileNotFoundError(f"No TFRecord files match {file_pattern!r}.")
    return files


def count_elements(dataset: tf.data.Dataset) -> int:
    """Number of elements, by iterating (TFRecord datasets have unknown cardinality)."""
    return int(dataset.reduce(tf.constant(0, tf.int64), lambda n, _: n + 1))


def _read_records(file_pattern) -> tf.data.Dataset:
    """Every record once, in file order."""
    return tf.data.TFRecordDataset(list_files(file_pattern))


def _permuted(values, seed):
    """`values` in a random order that is a pure function of `seed` (int64 [2])."""
    order = tf.argsort(tf.random.stateless_uniform([tf.shape(values)[0]], seed))
    return tf.gather(values, order)


def _epoch(files: list[str], seed: int, epoch, shuffle_buffer: int,
           repeat_record=None) -> tf.data.Dataset:
    """One epoch of serialised records in the order fixed by (seed, epoch).

    Files are permuted, read interleaved in that fixed order, and records are
    permuted within consecutive blocks of `shuffle_buffer`. Every permutation
    is stateless (Dataset.shuffle cannot take a per-epoch tensor seed once a
    global seed is set), so the epoch is reproducible from its number alone.
    """
    epoch = tf.cast(epoch, tf.int64)
    seed = tf.cast(seed, tf.int64)
    dataset = tf.data.Dataset.from_tensor_slices(
        _permuted(tf.constant(files), tf.stack([seed, 2 * epoch])))
    dataset = dataset.interleave(
        tf.data.TFRecordDataset, cycle_length=min(len(files), 16), block_length=1,
        num_parallel_calls=AUTOTUNE, deterministic=True)
    if repeat_record is not None:
        dataset = dataset.flat_map(lambda record: tf.data.Dataset.from_tensors(
            record).repeat(repeat_record(record)))
    if shuffle_buffer <= 1:
        return dataset
    blocks = dataset.batch(shuffle_buffer).enumerate()
    return blocks.flat_map(lambda index, block: tf.data.Dataset.from_tensor_slices(
        _permuted(block, tf.stack([seed, 2 * epoch + 1 + 2 * index]))))


def training_stream(file_pattern, *, seed: int = 0, shuffle_buffer: int = 1024,
                    start_index: int = 0, repeat_record=None) -> tf.data.Dataset:
    """An endless, reproducible stream of (position, serialised record).

    Epoch e visits every record once (or `repeat_record(record)` times) in an
    order fixed by (seed, e): files shuffled, interleaved in a fixed order,
    then examples shuffled. Because of that, the stream from any position is
    cheap to recreate: a resumed run skips at most one epoch of undecoded
    records instead of replaying its history.

    Args:
      file_pattern: Glob (or list of globs) of shards.
      seed: Stream seed.
      shuffle_buffer: Example shuffle buffer.
      start_index: Position of the first element (e.g. step * global batch).
      repeat_record: Optional function serialised record -> int64 count of
        copies of that record per epoch.

    Returns:
      Dataset of (int64 position, string record), positions from start_index.
    """
    files = list_files(file_pattern)
    first_epoch, offset = 0, 0
    if start_index:
        epoch_size = count_elements(_epoch(files, seed, 0, 1, repeat_record))
        if epoch_size == 0:
            raise ValueError(f"No records in {file_pattern!r}.")
        first_epoch, offset = divmod(start_index, epoch_size)
    records = tf.data.Dataset.range(first_epoch, tf.int64.max).flat_map(
        lambda epoch: _epoch(files, seed, epoch, shuffle_buffer, repeat_record))
    return tf.data.Dataset.zip(
        tf.data.Dataset.range(start_index, tf.int64.max), records.skip(offset))


def repeat_hard_classes(class_ids, times: int):
    """A `repeat_record` function: `times` copies of records whose label holds any
    of `class_ids`, one copy of the others (paper §4.1, test-server stage)."""
    class_ids = tf.constant(list(class_ids), tf.int32)

    def count(record):
        label = schema.decode_segmentation(record)["label"]
        present = tf.reduce_any(tf.equal(label[..., None], class_ids))
        return tf.where(present, tf.constant(times, tf.int64), tf.constant(1, tf.int64))

    return count


def make_dataset(file_pattern, *, training: bool, batch_size: int = 1,
                 crop_size: tuple[int, int] = (513, 513), min_scale: float = 0.5,
                 max_scale: float = 2.0, flip: bool = True,
                 ignore_label: int = IGNORE_LABEL, seed: int = 0,
                 deterministic: bool = True, shuffle_buffer: int = 1024,
                 start_index: int = 0, hard_class_ids=(), hard_class_repeat: int = 1,
                 drop_remainder: bool | None = None) -> tf.data.Dataset:
    """A segmentation dataset.

    Args:
      file_pattern: Glob (or list of globs) of TFRecord shards.
      training: An endless augmented stream (paper §4.1) if True; whole images
        in file order, once, if False.
      batch_size: Examples per batch. Evaluation batches larger than 1 pad
        images with the mean pixel and labels with the ignore label to the
        largest size in the batch.
      crop_size: (height, width) of training crops (513x513 in the paper).
      min_scale, max_scale: Range of the random scale.
      flip: Random left-right flip in training.
      ignore_label: Label of void and padded pixels.
      seed: Seed of the order and of the augmentation.
      deterministic: Keep the order of parallel work (the same batches on every
        run; needed for exact resumption). False trades that for throughput.
      shuffle_buffer: Example shuffle buffer in training.
      start_index: Training stream position to start from (resumption).
      hard_class_ids, hard_class_repeat: Repeat training images holding any of
        these classes this many times per epoch.
      drop_remainder: Drop a last partial batch; defaults to `training`.

    Returns:
      Training: {"image": float32 [B, crop_h, crop_w, 3] in [0, 255],
                 "label": int32 [B, crop_h, crop_w]}.
      Evaluation: {"image": float32 [B, H, W, 3], "label": int32 [B, H, W],
                   "height": int32 [B], "width": int32 [B], "filename": string [B]}.
    """
    drop_remainder = training if drop_remainder is None else drop_remainder
    if training:
        repeat_record = (repeat_hard_classes(hard_class_ids, hard_class_repeat)
                         if hard_class_ids and hard_class_repeat > 1 else None)
        dataset = training_stream(file_pattern, seed=seed, shuffle_buffer=shuffle_buffer,
                                  start_index=start_index, repeat_record=repeat_record)
    else:
        dataset = _read_records(file_pattern).enumerate()

    def parse(index, serialized):
        example = schema.decode_segmentation(serialized)
        image = tf.cast(example["image"], tf.float32)
        label = example["label"]
        if training:
            # The example's stream position keys its augmentation.
            image, label = augment_for_training(
                image, label, tf.stack([tf.cast(seed, tf.int64), index]), crop_size,
                min_scale, max_scale, flip, ignore_label)
            return {"image": image, "label": label}
        shape = tf.shape(label)
        return {"image": image, "label": label, "height": shape[0], "width": shape[1],
                "filename": example["filename"]}

    dataset = dataset.map(parse, num_parallel_calls=AUTOTUNE,
                          deterministic=deterministic or not training)
    if training or batch_size == 1:
        dataset = dataset.batch(batch_size, drop_remainder=drop_remainder)
    else:
        dataset = dataset.padded_batch(
            batch_size, drop_remainder=drop_remainder,
            padding_values={"image": 0.0, "label": ignore_label, "height": 0, "width": 0,
                            "filename": ""})
        dataset = dataset.map(_fill_padding_with_mean)
    options = tf.data.Options()
    options.deterministic = deterministic or not training
    return dataset.with_options(options).prefetch(AUTOTUNE)


def _fill_padding_with_mean(batch):
    """Padded image pixels take the mean pixel, as in training."""
    image = batch["image"]
    rows = tf.range(tf.shape(image)[1])[None, :, None] < batch["height"][:, None, None]
    cols = tf.range(tf.shape(image)[2])[None, None, :] < batch["width"][:, None, None]
    inside = (rows & cols)[..., None]
    batch["image"] = tf.where(inside, image, tf.constant(IMAGENET_MEAN_RGB, tf.float32))
    return batch


def make_classification_dataset(file_pattern, *, num_classes: int, training: bool,
                                batch_size: int = 32, image_size: int = 224,
                                use_confidence: bool = False, seed: int = 0,
                                deterministic: bool = True, shuffle_buffer: int = 4096,
                                start_index: int = 0) -> tf.data.Dataset:
    """A multi-label classification dataset.

    Training takes a random crop covering 8-100% of the image (aspect 3/4 to
    4/3), resizes it to `image_size` and flips it at random; evaluation
    resizes the shorter side to image_size / 0.875 and takes the centre crop.

    Args:
      file_pattern: Glob (or list of globs) of classification shards.
      num_classes: Length of the target vector.
      training: An endless augmented stream if True; each image once if False.
      batch_size: Examples per batch.
      image_size: Side of the square output image.
      use_confidence: Targets are the recorded confidences instead of 1.
      seed: Seed of shuffling and augmentation.
      deterministic: Reproducible order (needed for exact resumption).
      shuffle_buffer: Example shuffle buffer in training.
      start_index: Training stream position to start from (resumption).

    Returns:
      {"image": float32 [B, S, S, 3] in [0, 255], "target": float32 [B, num_classes]}.
    """
    if training:
        dataset = training_stream(file_pattern, seed=seed, shuffle_buffer=shuffle_buffer,
                                  start_index=start_index)
    else:
        dataset = _read_records(file_pattern).enumerate()

    def parse(index, serialized):
        parsed = tf.io.parse_single_example(serialized, schema.CLASSIFICATION_FEATURES)
        labels = tf.sparse.to_dense(parsed[schema.CLASS_LABEL])
        if use_confidence:
            values = tf.sparse.to_dense(parsed[schema.CLASS_CONFIDENCE])
            values = tf.cond(tf.size(values) == tf.size(labels), lambda: values,
                             lambda: tf.ones_like(labels, tf.float32))
        else:
            values = tf.ones_like(labels, tf.float32)
        target = tf.scatter_nd(labels[:, None], values, [num_classes])
        image = tf.io.decode_image(parsed[schema.IMAGE_ENCODED], channels=3,
                                   expand_animations=False)
        image.set_shape([None, None, 3])
        if training:
            seeds = tf.random.experimental.stateless_split(
                tf.stack([tf.cast(seed, tf.int64), index]), 2)
            begin, size, _ = tf.image.stateless_sample_distorted_bounding_box(
                tf.shape(image), tf.zeros([1, 0, 4]), seed=seeds[0],
                min_object_covered=0.0, aspect_ratio_range=(3 / 4, 4 / 3),
                area_range=(0.08, 1.0), use_image_if_no_bounding_boxes=True)
            image = tf.slice(image, begin, size)
            image = tf.image.resize(image, [image_size, image_size])
            image = tf.image.stateless_random_flip_left_right(image, seeds[1])
        else:
            shape = tf.cast(tf.shape(image)[:2], tf.float32)
            scale = image_size / 0.875 / tf.reduce_min(shape)
            resized = tf.cast(tf.math.ceil(shape * scale), tf.int32)
            image = tf.image.resize(image, resized)
            offset = (resized - image_size) // 2
            image = image[offset[0]:offset[0] + image_size, offset[1]:offset[1] + image_size]
            image.set_shape([image_size, image_size, 3])
        return {"image": tf.cast(image, tf.float32), "target": target}

    dataset = dataset.map(parse, num_parallel_calls=AUTOTUNE,
                          deterministic=deterministic or not training)
    dataset = dataset.batch(batch_size, drop_remainder=training)
    return dataset.prefetch(AUTOTUNE)
