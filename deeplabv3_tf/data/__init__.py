"""Input data: record schema, host-side readers, augmentation and tf.data pipelines."""

from deeplabv3_tf.data.pipeline import make_classification_dataset, make_dataset

__all__ = ["make_classification_dataset", "make_dataset"]
