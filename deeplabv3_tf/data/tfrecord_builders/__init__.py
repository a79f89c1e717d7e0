"""TFRecord builders, one module per source format, all writing through `shards.write_split`."""

from deeplabv3_tf.data.tfrecord_builders.cityscapes import build_cityscapes
from deeplabv3_tf.data.tfrecord_builders.classification import build_classification
from deeplabv3_tf.data.tfrecord_builders.coco import build_coco
from deeplabv3_tf.data.tfrecord_builders.folder import build_folder
from deeplabv3_tf.data.tfrecord_builders.shards import WorkerDiedError
from deeplabv3_tf.data.tfrecord_builders.voc import build_voc, build_voc_aug

__all__ = ["build_cityscapes", "build_classification", "build_coco", "build_folder",
           "build_voc", "build_voc_aug", "WorkerDiedError"]
