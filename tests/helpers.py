"""Helpers shared by the tests."""

import os

from deeplabv3_tf.config import ModelConfig

# The repository root: the working directory of the tools the tests run.
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def tiny_config(**overrides) -> ModelConfig:
    """One bottleneck per stage, narrow: builds and runs in a second on CPU."""
    values = dict(num_classes=5, depth=14, base_width=8, multi_grid=(1,),
                  aspp_filters=16)
    values.update(overrides)
    return ModelConfig(**values)
