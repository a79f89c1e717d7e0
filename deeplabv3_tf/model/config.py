"""Model configuration: one frozen dataclass, validated on construction.

A `ModelConfig` fully determines the graph that `build_deeplabv3` returns. It
is saved next to every checkpoint (`to_dict` / `from_dict`), so evaluation and
export rebuild exactly the network that was trained; only `output_stride` (and
with it the default ASPP rates) may differ at inference, because output stride
is a property of the graph, not of the weights (paper §4.1: train at 16,
evaluate at 8).
"""

from __future__ import annotations

import dataclasses
from typing import Any

from deeplabv3_tf.core.fields import check_known_fields
from deeplabv3_tf.model.backbones import get_backbone, resnet
from deeplabv3_tf.model.decoders import ARCHITECTURE_NAMES, DECODERS, NONE
from deeplabv3_tf.model.layers import NORMALIZATIONS

OUTPUT_STRIDES = (8, 16, 32)
# Runtime choices a ModelConfig once held; experiment.json files written then
# still load (`ModelConfig.from_dict` drops them; the experiment moves
# freeze_bn to `train.freeze_bn`). How BatchNorm runs is a builder argument now
# (`blocks.BatchNorm`).
LEGACY_RUNTIME_FIELDS = ("freeze_bn", "sync_bn", "fold_bn")


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Everything that defines a DeepLabv3 graph.

    Attributes:
      num_classes: Number of output classes (21 for PASCAL VOC).
      backbone: A key of `backbones.BACKBONES`: "resnet" (the dilated ResNet
        the paper uses) or "mobilenet_v3_large" (torchvision's
        MobileNetV3-Large, its last stage dilated at output stride 16).
        depth, base_width, multi_grid, stem, stride_in_1x1, dilate_first_unit
        and num_cascade_blocks are ResNet settings; width_multiplier is
        MobileNetV3's.
      width_multiplier: MobileNetV3's channel multiplier (torchvision's
        width_mult; every width rounded to a multiple of 8). 1.0 for the
        published model; smaller values make fast test nets.
      depth: ResNet depth, a key of `resnet.BLOCKS_PER_DEPTH` (14 is the tiny test net).
      base_width: Bottleneck width of the first stage (64 in ResNets); every
        stage and the stem scale with it. Smaller values make fast test nets.
      output_stride: 8, 16 or 32. Stages past this stride replace their stride
        by atrous convolution (paper §3.1).
      multi_grid: Unit rates of the last block (paper §3.2.1); one per unit of
        conv5 (and of each cascaded block). Final rate = unit rate x block rate.
      stem: "v0" (7x7/2 conv, as ResNet v1) or "v1" (three 3x3 convs, as
        resnet_v1_beta in research/deeplab and TF Model Garden's deep stem).
      stride_in_1x1: Put a stage's stride on the first 1x1 conv of its first
        unit (keras.applications, original Caffe ResNet) instead of the 3x3
        conv (torchvision, TF Model Garden, "ResNet v1.5").
      dilate_first_unit: Give the first unit of a dilated stage the stage's
        atrous rate (research/deeplab, the paper). False keeps the previous
        stage's rate in that unit, as torchvision's
        `replace_stride_with_dilation`.
      num_cascade_blocks: 0 for the ASPP model; 3 adds block5..block7, copies
        of block4 with doubling rates (paper §3.2).
      use_aspp: Apply ASPP (paper §3.3). Without it, the logits come from a 1x1
        conv on the backbone output (the paper's cascade-only model).
      aspp_rates: Rates of the three atrous ASPP convs; None means the
        backbone's rates at output stride 16 scaled to the output stride:
        ResNet (6, 12, 18) ((12, 24, 36) at 8), MobileNetV3 (12, 24, 36).
      aspp_filters: Filters of every ASPP branch and of its projection.
      image_pooling: Add the image-level feature branch to ASPP.
      dropout_rate: Dropout after the ASPP projection (0.1 in research/deeplab,
        0.5 in torchvision).
      head_filters: 0 for logits straight after the dropout (the paper,
        research/deeplab); > 0 adds a 3x3 conv + BN + ReLU of this width
        before the logits (torchvision's DeepLabHead: 256).
      decoder: A key of `decoders.DECODERS`: "none" (DeepLabv3: logits at the
        output stride) or "deeplabv3plus" (DeepLabv3+'s decoder on the
        backbone's stride-4 features; see model/decoders.py).
      decoder_low_level_filters: Width of the decoder's 1x1 projection of the
        stride-4 features (48, DeepLabv3+ Table 1).
      decoder_filters: Width of the decoder's two 3x3 convs (256, Table 2).
      decoder_separable: Make those convs depthwise-separable (depthwise 3x3
        + BN + ReLU, pointwise 1x1 + BN + ReLU; research/deeplab's
        decoder_use_separable_conv).
      aux_head: Add torchvision's auxiliary FCN head (3x3 conv to a quarter
        of its input's channels + BN + ReLU, dropout 0.1, 1x1 conv to the
        classes) on the backbone's aux endpoint (`Backbone.aux_endpoint`:
        ResNet c4; MobileNetV3 the first block of stage 3). The model then has a second output used only by the
        training loss (`train.aux_loss_weight`); inference ignores it.
      bn_momentum: BatchNorm moving-average decay (paper: 0.9997).
      bn_epsilon: BatchNorm epsilon.
      normalization: Input normalisation applied inside the model; must be the
        one the initial weights were trained with (see `NORMALIZATIONS`).
    """

    num_classes: int = 21
    backbone: str = resnet.NAME
    width_multiplier: float = 1.0
    depth: int = 101
    base_width: int = 64
    output_stride: int = 16
    multi_grid: tuple[int, ...] = (1, 2, 4)
    stem: str = "v0"
    stride_in_1x1: bool = False
    dilate_first_unit: bool = True
    num_cascade_blocks: int = 0
    use_aspp: bool = True
    aspp_rates: tuple[int, int, int] | None = None
    aspp_filters: int = 256
    image_pooling: bool = True
    dropout_rate: float = 0.1
    head_filters: int = 0
    decoder: str = NONE
    decoder_low_level_filters: int = 48
    decoder_filters: int = 256
    decoder_separable: bool = False
    aux_head: bool = False
    bn_momentum: float = 0.9997
    bn_epsilon: float = 1e-5
    normalization: str = "caffe"

    def __post_init__(self):
        # Lists arrive from JSON; store tuples so configs stay hashable.
        object.__setattr__(self, "multi_grid", tuple(self.multi_grid))
        if self.aspp_rates is not None:
            object.__setattr__(self, "aspp_rates", tuple(self.aspp_rates))
        backbone = get_backbone(self.backbone)
        if self.width_multiplier <= 0:
            raise ValueError(f"width_multiplier={self.width_multiplier} must be > 0.")
        if self.output_stride not in OUTPUT_STRIDES:
            raise ValueError(
                f"output_stride={self.output_stride} is not supported; choose "
                f"one of {OUTPUT_STRIDES}.")
        if self.normalization not in NORMALIZATIONS:
            raise ValueError(
                f"normalization={self.normalization!r} is not one of "
                f"{NORMALIZATIONS}.")
        if self.num_classes < 1:
            raise ValueError(f"num_classes={self.num_classes} must be >= 1.")
        if self.num_cascade_blocks < 0:
            raise ValueError(
                f"num_cascade_blocks={self.num_cascade_blocks} must be >= 0.")
        if self.aspp_rates is not None and len(self.aspp_rates) != 3:
            raise ValueError(
                f"aspp_rates={self.aspp_rates} must hold three rates.")
        if self.head_filters < 0:
            raise ValueError(f"head_filters={self.head_filters} must be >= 0.")
        if self.decoder not in DECODERS:
            raise ValueError(f"decoder={self.decoder!r} is not one of {tuple(DECODERS)}.")
        if self.decoder != NONE:
            if self.head_filters:
                raise ValueError(
                    f"head_filters={self.head_filters} adds DeepLabv3's 3x3 conv before the "
                    f"logits; with decoder={self.decoder!r} the decoder's convs take its "
                    "place: set head_filters=0.")
            if self.decoder_low_level_filters < 1 or self.decoder_filters < 1:
                raise ValueError(
                    f"decoder_low_level_filters={self.decoder_low_level_filters} and "
                    f"decoder_filters={self.decoder_filters} must be >= 1.")
        if self.aux_head and self.num_cascade_blocks:
            raise ValueError("aux_head sits on c4 of the ASPP model; it cannot be combined "
                             f"with num_cascade_blocks={self.num_cascade_blocks}.")
        if not 0.0 <= self.dropout_rate < 1.0:
            raise ValueError(
                f"dropout_rate={self.dropout_rate} must be in [0, 1).")
        backbone.check(self)

    @property
    def backbone_name(self) -> str:
        """"R101", "MobileNetV3-Large" (x0.25 when narrowed): for messages."""
        return get_backbone(self.backbone).describe(self)

    @property
    def architecture_name(self) -> str:
        """"DeepLabv3" or "DeepLabv3+": what the paper figures beside it are of."""
        return ARCHITECTURE_NAMES[self.decoder]

    @property
    def effective_aspp_rates(self) -> tuple[int, int, int]:
        """The ASPP rates this graph uses at its output stride."""
        if self.aspp_rates is not None:
            return self.aspp_rates
        scale = 16 / self.output_stride
        rates = get_backbone(self.backbone).aspp_rates_at_os16
        return tuple(int(r * scale) for r in rates)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable dict; `from_dict` inverts it."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "ModelConfig":
        """Builds a config from `to_dict` output; unknown keys are an error.

        The runtime BatchNorm choices older versions stored here
        (`LEGACY_RUNTIME_FIELDS`) are dropped.
        """
        values = {k: v for k, v in values.items() if k not in LEGACY_RUNTIME_FIELDS}
        check_known_fields(cls, values, "ModelConfig")
        return cls(**values)


def keras_applications_compatible(config: ModelConfig) -> ModelConfig:
    """The variant of `config` that keras.applications ImageNet weights fit.

    Those ResNets (ResNet50/101/152) use the 7x7 stem, put the stride on the
    first 1x1 conv, were trained on caffe-style inputs and use BN epsilon
    1.001e-5.
    """
    return dataclasses.replace(
        config, stem="v0", stride_in_1x1=True, normalization="caffe",
        bn_epsilon=1.001e-5, base_width=64)


def torchvision_backbone(config: ModelConfig) -> ModelConfig:
    """The variant of `config` whose backbone torchvision's ResNet weights fit.

    torchvision's ResNets are "v1.5" (stride on the 3x3 conv), take RGB in
    [0, 1] normalised by the ImageNet mean and std, and use BN epsilon 1e-5.
    The head and the dilation schedule are left as they are.
    """
    return dataclasses.replace(
        config, stem="v0", stride_in_1x1=False, normalization="imagenet",
        bn_epsilon=1e-5, base_width=64)


def torchvision_deeplabv3(config: ModelConfig) -> ModelConfig:
    """The variant of `config` that torchvision's DeepLabv3 weights fit.

    On top of `torchvision_backbone`: dilation as `replace_stride_with_dilation`
    (the first unit of a dilated stage keeps the previous rate; no
    multi-grid), 256-filter ASPP with image pooling, dropout 0.5 after the
    projection, and a 3x3 conv + BN + ReLU before the classifier.
    """
    return dataclasses.replace(
        torchvision_backbone(config), dilate_first_unit=False,
        multi_grid=(1,) * len(config.multi_grid), head_filters=256, dropout_rate=0.5,
        aspp_filters=256, image_pooling=True, aspp_rates=None, use_aspp=True,
        num_cascade_blocks=0)
