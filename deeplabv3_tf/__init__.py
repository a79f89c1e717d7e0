"""deeplabv3_tf: DeepLabv3 semantic segmentation for TensorFlow 2 / Keras 3."""

__version__ = "0.1.0"
