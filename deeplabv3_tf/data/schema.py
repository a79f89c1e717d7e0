"""TFRecord feature keys and example (de)serialisation, shared by writers and readers.

Segmentation records use exactly the keys of tensorflow/models research/deeplab
(`build_data.py`), so TF Model Garden's segmentation reader reads them too:

  image/encoded                    bytes   JPEG or PNG, RGB, 8 bit
  image/filename                   bytes   example id (file stem)
  image/format                     bytes   "jpeg" or "png"
  image/height, image/width        int64
  image/channels                   int64   always 3
  image/segmentation/class/encoded bytes   single-channel 8-bit PNG of class ids,
                                           IGNORE_LABEL (255) for void pixels
  image/segmentation/class/format  bytes   "png"

Classification (JFT-style multi-label) records:

  image/encoded, image/format      as above
  image/source_id                  bytes   example id
  image/class/label                int64[] sorted, unique class ids
  image/class/confidence           float[] one per label (optional)
  image/class/text                 bytes[] one name per label (optional)
"""

from __future__ import annotations

import json
import os

import tensorflow as tf

IMAGE_ENCODED = "image/encoded"
IMAGE_FILENAME = "image/filename"
IMAGE_FORMAT = "image/format"
IMAGE_HEIGHT = "image/height"
IMAGE_WIDTH = "image/width"
IMAGE_CHANNELS = "image/channels"
LABEL_ENCODED = "image/segmentation/class/encoded"
LABEL_FORMAT = "image/segmentation/class/format"

SOURCE_ID = "image/source_id"
CLASS_LABEL = "image/class/label"
CLASS_CONFIDENCE = "image/class/confidence"
CLASS_TEXT = "image/class/text"

SHARD_PATTERN = "{split}-{index:05d}-of-{count:05d}.tfrecord"
MANIFEST_NAME = "{split}.manifest.json"


def shard_glob(directory: str, split: str) -> str:
    """The file pattern of a split's shards in `directory`."""
    return f"{directory.rstrip('/')}/{split}-*-of-*.tfrecord"


# Examples are serialised with deterministic=True: the feature map's order is
# otherwise free to differ between processes, and shards must be identical
# whatever process (or number of workers) wrote them.


def _bytes(values):
    return tf.train.Feature(bytes_list=tf.train.BytesList(value=values))


def _ints(values):
    return tf.train.Feature(int64_list=tf.train.Int64List(value=values))


def _floats(values):
    return tf.train.Feature(float_list=tf.train.FloatList(value=values))


def segmentation_example(image: bytes, image_format: str, height: int, width: int,
                         label_png: bytes, example_id: str) -> bytes:
    """A serialised research/deeplab-style segmentation tf.Example."""
    return tf.train.Example(features=tf.train.Features(feature={
        IMAGE_ENCODED: _bytes([image]),
        IMAGE_FILENAME: _bytes([example_id.encode("utf8")]),
        IMAGE_FORMAT: _bytes([image_format.encode("utf8")]),
        IMAGE_HEIGHT: _ints([height]),
        IMAGE_WIDTH: _ints([width]),
        IMAGE_CHANNELS: _ints([3]),
        LABEL_ENCODED: _bytes([label_png]),
        LABEL_FORMAT: _bytes([b"png"]),
    })).SerializeToString(deterministic=True)


def classification_example(image: bytes, image_format: str, example_id: str,
                           labels: list[int], confidences: list[float] | None = None,
                           texts: list[str] | None = None) -> bytes:
    """A serialised multi-label classification tf.Example."""
    feature = {
        IMAGE_ENCODED: _bytes([image]),
        IMAGE_FORMAT: _bytes([image_format.encode("utf8")]),
        SOURCE_ID: _bytes([example_id.encode("utf8")]),
        CLASS_LABEL: _ints(labels),
    }
    if confidences is not None:
        feature[CLASS_CONFIDENCE] = _floats(confidences)
    if texts is not None:
        feature[CLASS_TEXT] = _bytes([t.encode("utf8") for t in texts])
    return tf.train.Example(
        features=tf.train.Features(feature=feature)).SerializeToString(deterministic=True)


SEGMENTATION_FEATURES = {
    IMAGE_ENCODED: tf.io.FixedLenFeature([], tf.string),
    IMAGE_FILENAME: tf.io.FixedLenFeature([], tf.string, default_value=""),
    IMAGE_FORMAT: tf.io.FixedLenFeature([], tf.string, default_value="jpeg"),
    IMAGE_HEIGHT: tf.io.FixedLenFeature([], tf.int64, default_value=0),
    IMAGE_WIDTH: tf.io.FixedLenFeature([], tf.int64, default_value=0),
    LABEL_ENCODED: tf.io.FixedLenFeature([], tf.string, default_value=""),
    LABEL_FORMAT: tf.io.FixedLenFeature([], tf.string, default_value="png"),
}

CLASSIFICATION_FEATURES = {
    IMAGE_ENCODED: tf.io.FixedLenFeature([], tf.string),
    SOURCE_ID: tf.io.FixedLenFeature([], tf.string, default_value=""),
    CLASS_LABEL: tf.io.VarLenFeature(tf.int64),
    CLASS_CONFIDENCE: tf.io.VarLenFeature(tf.float32),
}


def decode_segmentation(serialized: tf.Tensor) -> dict[str, tf.Tensor]:
    """Parses one serialised segmentation example.

    Returns:
      image: uint8 [H, W, 3]; label: int32 [H, W]; filename: string [].
    """
    return decode_parsed_segmentation(
        tf.io.parse_single_example(serialized, SEGMENTATION_FEATURES))


def decode_parsed_segmentation(parsed: dict[str, tf.Tensor]) -> dict[str, tf.Tensor]:
    """`decode_segmentation` of an example already parsed with SEGMENTATION_FEATURES
    (for readers that also want its raw fields)."""
    image = tf.io.decode_image(parsed[IMAGE_ENCODED], channels=3,
                               expand_animations=False)
    image.set_shape([None, None, 3])
    label = tf.io.decode_png(parsed[LABEL_ENCODED], channels=1)
    return {
        "image": image,
        "label": tf.cast(label[..., 0], tf.int32),
        "filename": parsed[IMAGE_FILENAME],
    }


def records_manifest(pattern: str) -> tuple[dict | None, str]:
    """The manifest of the split a shard glob names, and its path.

    "records/voc/train_aug-*" -> records/voc/train_aug.manifest.json; (None,
    path) when the glob names no one split or the manifest is absent.
    """
    split = os.path.basename(pattern).split("-")[0]
    path = os.path.join(os.path.dirname(pattern), MANIFEST_NAME.format(split=split))
    if not split or "*" in split or not os.path.exists(path):
        return None, path
    with open(path) as f:
        return json.load(f), path
