"""What the package knows of one kind of backbone, in one record.

A backbone module (resnet.py, mobilenet_v3.py) ends with a `BACKBONE`
record; `backbones/__init__.py` lists them. Everything else asks the record:
the config's checks and names, the heads' endpoints, the classifier's extra
layers, which settings decide what its weights mean (a transfer between runs
refuses the others), and how torchvision names its modules.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Callable

import keras

if TYPE_CHECKING:  # annotations only: config.py imports this package
    from deeplabv3_tf.model.config import ModelConfig

# The nested backbone model's name in every model built on it (a checkpoint contract).
BACKBONE_NAME = "backbone"


@dataclasses.dataclass(frozen=True)
class TorchvisionLayout:
    """How torchvision lays out this backbone's weights.

    Attributes:
      architectures: torchvision's bare ImageNet classifiers of this backbone
        (`--arch` names) -> ModelConfig fields they fix (a ResNet's depth);
        "deeplabv3_" + name is the DeepLabv3 on it, where torchvision has one.
      published: What torchvision publishes for each `--arch` (weights enum,
        URL, size, reported accuracy), recorded in import.json.
      classifier_prefix: Prefix of the backbone's modules in a bare
        classifier ("" for ResNets, "features." for MobileNetV3); DeepLabv3
        prefixes them with "backbone.".
      classifier_modules: Keras classifier layer -> torchvision module.
      module_of: (layer name inside the backbone, config) -> torchvision module
        without prefix, or None when the layer has no counterpart.
      check_state_dict: (state_dict, prefix, config fields of the --arch,
        --arch, file) -> raises ValueError when the file holds another
        network (counting units or feature modules).
      deeplabv3_output_stride: torchvision's DeepLabv3 output stride on it.
    """

    architectures: dict[str, dict]
    published: dict[str, dict]
    classifier_prefix: str
    classifier_modules: dict[str, str]
    module_of: Callable[[str, "ModelConfig"], str | None]
    check_state_dict: Callable[[dict, str, dict, str, str], None]
    deeplabv3_output_stride: int


@dataclasses.dataclass(frozen=True)
class Backbone:
    """One kind of backbone.

    Attributes:
      name: Its `ModelConfig.backbone` value.
      build: (config, input_shape, name, batch_norm) -> a `keras.Model`
        mapping float RGB [B, H, W, 3] in [0, 255] to a dict of endpoints
        ("c1".."c5", by stage, not by stride).
      check: Refuses (ValueError) config settings this backbone gives no
        meaning to, or cannot build.
      describe: "R101", "MobileNetV3-Large x0.25": for messages.
      aspp_rates_at_os16: ASPP rates at output stride 16 (scaled by
        16 / output stride at other strides).
      aux_endpoint: The endpoint torchvision's auxiliary FCN head reads.
      low_level_endpoint: The stride-4 endpoint the DeepLabv3+ decoder reads
        (model/decoders.py), whatever the output stride.
      weight_fields: Config fields, besides the backbone and the input
        normalisation, that decide what its weights mean: a run with other
        values has weights of the same shapes that would be misread.
      classifier_head: Layers between the pooled features and the
        classifier's logits ((x, config) -> x); None for none.
      torchvision: torchvision's names for its weights.
    """

    name: str
    build: Callable[..., keras.Model]
    check: Callable[["ModelConfig"], None]
    describe: Callable[["ModelConfig"], str]
    aspp_rates_at_os16: tuple[int, int, int]
    aux_endpoint: Callable[["ModelConfig"], str]
    low_level_endpoint: Callable[["ModelConfig"], str]
    weight_fields: tuple[str, ...]
    classifier_head: Callable | None
    torchvision: TorchvisionLayout
