"""tf.data input pipelines over the project's TFRecords.

`make_dataset` reads segmentation records (research/deeplab keys) for training
(random scale, pad, crop, flip; repeated and shuffled) or evaluation (whole
images); `make_classification_dataset` reads multi-label classification
records with multi-hot or confidence targets.
"""

from __future__ import annotations

import tensorflow as tf

from deeplabv3_tf.classes import IGNORE_LABEL
from deeplabv3_tf.data import schema
from deeplabv3_tf.data.augment import augment_for_training
from deeplabv3_tf.model.layers import IMAGENET_MEAN_RGB

AUTOTUNE = tf.data.AUTOTUNE


def _list_files(file_pattern, shuffle: bool, seed: int | None) -> tuple[tf.data.Dataset, int]:
    patterns = [file_pattern] if isinstance(file_pattern, str) else list(file_pattern)
    files = sorted({f for p in patterns for f in tf.io.gfile.glob(p)})
    if not files:
        raise FileNotFoundError(f"No TFRecord files match {file_pattern!r}.")
    dataset = tf.data.Dataset.from_tensor_slices(files)
    if shuffle:
        dataset = dataset.shuffle(len(files), seed=seed, reshuffle_each_iteration=True)
    return dataset, len(files)


def _read_records(file_pattern, shuffle: bool, seed: int | None,
                  deterministic: bool) -> tf.data.Dataset:
    files, count = _list_files(file_pattern, shuffle, seed)
    return files.interleave(
        tf.data.TFRecordDataset, cycle_length=min(count, 16), block_length=1,
        num_parallel_calls=AUTOTUNE, deterministic=deterministic)


def make_dataset(file_pattern, *, training: bool, batch_size: int = 1,
                 crop_size: tuple[int, int] = (513, 513), min_scale: float = 0.5,
                 max_scale: float = 2.0, flip: bool = True,
                 ignore_label: int = IGNORE_LABEL, seed: int = 0,
                 deterministic: bool = False, shuffle_buffer: int = 1024,
                 repeat: bool | None = None, drop_remainder: bool | None = None
                 ) -> tf.data.Dataset:
    """A segmentation dataset.

    Args:
      file_pattern: Glob (or list of globs) of TFRecord shards.
      training: Augment, shuffle and repeat (paper §4.1) if True; whole images
        in file order if False.
      batch_size: Examples per batch. Evaluation batches larger than 1 pad
        images with the mean pixel and labels with the ignore label to the
        largest size in the batch.
      crop_size: (height, width) of training crops (513x513 in the paper).
      min_scale, max_scale: Range of the random scale.
      flip: Random left-right flip in training.
      ignore_label: Label of void and padded pixels.
      seed: Seed of file and example shuffling and of augmentation.
      deterministic: Same elements in the same order on every run (slower:
        parallel reads keep their order).
      shuffle_buffer: Example shuffle buffer in training.
      repeat: Repeat forever; defaults to `training`.
      drop_remainder: Drop a last partial batch; defaults to `training`.

    Returns:
      Training: {"image": float32 [B, crop_h, crop_w, 3] in [0, 255],
                 "label": int32 [B, crop_h, crop_w]}.
      Evaluation: {"image": float32 [B, H, W, 3], "label": int32 [B, H, W],
                   "height": int32 [B], "width": int32 [B], "filename": string [B]}.
    """
    repeat = training if repeat is None else repeat
    drop_remainder = training if drop_remainder is None else drop_remainder
    dataset = _read_records(file_pattern, shuffle=training, seed=seed,
                            deterministic=deterministic or not training)
    if training:
        dataset = dataset.shuffle(shuffle_buffer, seed=seed, reshuffle_each_iteration=True)
    if repeat:
        dataset = dataset.repeat()
    # The example's position in the stream keys its augmentation seed.
    dataset = dataset.enumerate()

    def parse(index, serialized):
        example = schema.decode_segmentation(serialized)
        image = tf.cast(example["image"], tf.float32)
        label = example["label"]
        if training:
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
                                deterministic: bool = False, shuffle_buffer: int = 4096,
                                repeat: bool | None = None) -> tf.data.Dataset:
    """A multi-label classification dataset.

    Training takes a random crop covering 8-100% of the image (aspect 3/4 to
    4/3), resizes it to `image_size` and flips it at random; evaluation
    resizes the shorter side to image_size / 0.875 and takes the centre crop.

    Args:
      file_pattern: Glob (or list of globs) of classification shards.
      num_classes: Length of the target vector.
      training: Augment, shuffle and repeat if True.
      batch_size: Examples per batch.
      image_size: Side of the square output image.
      use_confidence: Targets are the recorded confidences instead of 1.
      seed: Seed of shuffling and augmentation.
      deterministic: Reproducible order.
      shuffle_buffer: Example shuffle buffer in training.
      repeat: Repeat forever; defaults to `training`.

    Returns:
      {"image": float32 [B, S, S, 3] in [0, 255], "target": float32 [B, num_classes]}.
    """
    repeat = training if repeat is None else repeat
    dataset = _read_records(file_pattern, shuffle=training, seed=seed,
                            deterministic=deterministic or not training)
    if training:
        dataset = dataset.shuffle(shuffle_buffer, seed=seed, reshuffle_each_iteration=True)
    if repeat:
        dataset = dataset.repeat()
    dataset = dataset.enumerate()

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
