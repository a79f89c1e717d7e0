"""The named recipes: the paper's runs, their variants and the tiny ones.

A recipe is a function returning an `ExperimentConfig`; variants are
`dataclasses.replace` of another recipe, never copies. `RECIPES` maps names
(the `--experiment` flag) to those functions.

Paper figures (Chen et al. 2017; for DeepLabv3+, Chen et al. 2018, arXiv
1802.02611, Table 3) are kept beside the recipes that produce them in
`paper_results`, so evaluation can print them next to what a run reached.
"""

from __future__ import annotations

import dataclasses
from typing import Callable

from deeplabv3_tf.configs.experiment import DataConfig, EvalConfig, ExperimentConfig, TrainConfig
from deeplabv3_tf.data.dataset import CITYSCAPES, COCO_VOC, PASCAL_VOC, VOC_CLASSES
from deeplabv3_tf.model.backbones import mobilenet_v3
from deeplabv3_tf.model.decoders import DEEPLABV3PLUS
from deeplabv3_tf.model.config import (
    ModelConfig, keras_applications_compatible, torchvision_backbone, torchvision_deeplabv3)
from deeplabv3_tf.tasks.classification import NAME as CLASSIFICATION

VOC_HARD_CLASSES = ("bicycle", "chair", "diningtable", "pottedplant", "sofa")


def _r101_imagenet(**overrides) -> ModelConfig:
    """ResNet-101 that keras.applications ImageNet weights fit, paper head."""
    return keras_applications_compatible(ModelConfig(
        num_classes=21, depth=101, output_stride=16, multi_grid=(1, 2, 4),
        bn_momentum=0.9997, dropout_rate=0.1, **overrides))


def voc_r101_os16() -> ExperimentConfig:
    """Paper §4.1 main run: train_aug, crop 513, batch 16, poly 0.007, 30K steps, OS16."""
    return ExperimentConfig(
        name="voc_r101_os16",
        model=_r101_imagenet(),
        data=DataConfig(train_records="records/voc/train_aug-*",
                        val_records="records/voc/val-*").with_dataset(PASCAL_VOC),
        train=TrainConfig(init="resnet101_weights_tf_dim_ordering_tf_kernels_notop.h5"),
        eval=EvalConfig(output_strides=(16, 8), multiscale_output_stride=8),
        paper_results={"val_miou_os16": 77.21, "val_miou_os8": 78.51,
                       "val_miou_os8_ms_flip": 79.77})


def voc_r101_os16_torchvision_init() -> ExperimentConfig:
    """voc_r101_os16 from torchvision's ImageNet ResNet-101 (IMAGENET1K_V2, 81.9% top-1)
    instead of keras.applications' (76.4% in Keras' table): a "ResNet v1.5" backbone on
    torchvision's input normalisation. Import the weights first:
    tools/import_weights.py torchvision --arch resnet101 --output_dir runs/tv_resnet101.
    """
    base = voc_r101_os16()
    return dataclasses.replace(
        base, name="voc_r101_os16_torchvision_init", model=torchvision_backbone(base.model),
        train=dataclasses.replace(base.train, init="runs/tv_resnet101"),
        paper_results={})


def voc_r101_os8_trainval() -> ExperimentConfig:
    """Paper §4.1 test-server stage: from voc_r101_os16, frozen BN, OS8, lr 0.001, trainval.

    trainval contains val, so no val figure is reported; the hard classes
    (bicycle, chair, dining table, potted plant, sofa) can be repeated with
    `data.hard_class_repeat`.
    """
    base = voc_r101_os16()
    return dataclasses.replace(
        base, name="voc_r101_os8_trainval",
        model=dataclasses.replace(base.model, output_stride=8),
        data=dataclasses.replace(
            base.data, train_records="records/voc/trainval-*", val_records="",
            hard_class_ids=tuple(VOC_CLASSES.index(c) for c in VOC_HARD_CLASSES),
            hard_class_repeat=2),
        train=dataclasses.replace(base.train, learning_rate=0.001, init="runs/voc_r101_os16",
                                  freeze_bn=True),
        eval=EvalConfig(output_strides=(), multiscale_output_stride=0),
        paper_results={"test_miou_ms_flip": 85.7})


def coco_r101_os16() -> ExperimentConfig:
    """COCO images on the 20 VOC classes (paper §4.1, 'Pretrained on COCO')."""
    base = voc_r101_os16()
    return dataclasses.replace(
        base, name="coco_r101_os16",
        data=dataclasses.replace(base.data, train_records="records/coco/train-*",
                                 val_records="records/coco/val-*").with_dataset(COCO_VOC),
        eval=EvalConfig(output_strides=(16,)), paper_results={})


def voc_r101_os16_from_coco() -> ExperimentConfig:
    """Fine-tunes the COCO-pretrained model on VOC train_aug at lr 0.0001."""
    base = voc_r101_os16()
    return dataclasses.replace(
        base, name="voc_r101_os16_from_coco",
        train=dataclasses.replace(base.train, learning_rate=0.0001, init="runs/coco_r101_os16"),
        paper_results={"val_miou_os8_ms_flip": 82.70})


def cityscapes_r101_os16() -> ExperimentConfig:
    """Cityscapes fine annotations: crop 769, 90K steps (paper §4.2).

    Evaluated on whole 2048x1024 images (as research/deeplab and the paper's
    figure), and also by 769x769 windows at output stride 8 (mmsegmentation's
    protocol; a fraction of the memory: docs/evaluation.md, "Large images").
    """
    base = voc_r101_os16()
    return dataclasses.replace(
        base, name="cityscapes_r101_os16",
        model=dataclasses.replace(base.model, num_classes=CITYSCAPES.num_classes),
        data=dataclasses.replace(base.data, train_records="records/cityscapes/train-*",
                                 val_records="records/cityscapes/val-*",
                                 crop_size=(769, 769)).with_dataset(CITYSCAPES),
        train=dataclasses.replace(base.train, steps=90000, batch_size=8),
        eval=EvalConfig(output_strides=(16, 8), multiscale_output_stride=8,
                        window=(769, 769), window_stride=(513, 513), windowed_output_stride=8),
        paper_results={"val_miou_os8_ms_flip": 79.3})


def jft_r101_pretrain() -> ExperimentConfig:
    """JFT-style multi-label pretraining of the ResNet-101 backbone (DeepLabv3-JFT).

    Sigmoid cross-entropy over multi-hot targets; the classifier bias starts
    at log(1 / (C - 1)) so that each class starts at probability ~1/C. Its
    backbone then initialises segmentation (`train.init` = this run's directory).
    """
    return ExperimentConfig(
        name="jft_r101_pretrain", task=CLASSIFICATION,
        model=dataclasses.replace(_r101_imagenet(), num_classes=18291, output_stride=32,
                                  multi_grid=(1, 1, 1)),
        data=DataConfig(train_records="records/jft/train-*", val_records="",
                        class_names=(), image_size=224),
        train=TrainConfig(steps=500000, batch_size=256, learning_rate=0.1, lr_power=1.0,
                          warmup_steps=5000, init=""),
        eval=EvalConfig(output_strides=()))


def _mobilenetv3(**overrides) -> ModelConfig:
    """torchvision's deeplabv3_mobilenet_v3_large: dilated MobileNetV3-Large at output
    stride 16, ASPP 12/24/36, a 3x3 conv before the logits, the auxiliary FCN head on
    the first block of the 40-channel stage, ImageNet mean/std input."""
    return torchvision_deeplabv3(ModelConfig(
        num_classes=21, backbone=mobilenet_v3.NAME, output_stride=16, aux_head=True,
        bn_momentum=0.9997, **overrides))


def voc_mobilenetv3_os16() -> ExperimentConfig:
    """DeepLabv3-MobileNetV3-Large on VOC train_aug with the paper's schedule (crop 513,
    batch 16, poly 0.007, 30K steps), from torchvision's ImageNet MobileNetV3-Large:
    tools/import_weights.py torchvision --arch mobilenet_v3_large --output_dir
    runs/tv_mobilenet_v3_large. The auxiliary head's loss weighs 0.5 (torchvision)."""
    base = voc_r101_os16()
    return dataclasses.replace(
        base, name="voc_mobilenetv3_os16", model=_mobilenetv3(),
        train=dataclasses.replace(base.train, init="runs/tv_mobilenet_v3_large"),
        paper_results={})


def voc_mobilenetv3_os16_finetune() -> ExperimentConfig:
    """Fine-tunes torchvision's trained deeplabv3_mobilenet_v3_large (COCO images, the
    VOC classes) on VOC train_aug at lr 0.0001, as the paper's COCO -> VOC stage:
    tools/import_weights.py torchvision --arch deeplabv3_mobilenet_v3_large
    --output_dir runs/tv_deeplabv3_mobilenet_v3_large."""
    base = voc_mobilenetv3_os16()
    return dataclasses.replace(
        base, name="voc_mobilenetv3_os16_finetune",
        train=dataclasses.replace(base.train, learning_rate=0.0001,
                                  init="runs/tv_deeplabv3_mobilenet_v3_large"))


def _plus(model: ModelConfig, **overrides) -> ModelConfig:
    """`model` with DeepLabv3+'s decoder (48-channel projection, two 3x3 convs of 256)
    in place of DeepLabv3's 3x3 head conv, if it had one."""
    return dataclasses.replace(model, decoder=DEEPLABV3PLUS, head_filters=0, **overrides)


def voc_r101_plus_os16() -> ExperimentConfig:
    """DeepLabv3+ (ResNet-101, decoder on conv2) with voc_r101_os16's schedule: the
    DeepLabv3+ paper trains its ResNet-101 model as DeepLabv3 (§4.1: crop 513, poly
    0.007, train_aug, output stride 16). Table 3 gives 78.85 at OS16, 79.35 at OS8 and
    80.57 at OS8 + multi-scale + flip on VOC val (80.22 with OS16 + MS + flip)."""
    base = voc_r101_os16()
    return dataclasses.replace(
        base, name="voc_r101_plus_os16", model=_plus(base.model),
        paper_results={"val_miou_os16": 78.85, "val_miou_os8": 79.35,
                       "val_miou_os8_ms_flip": 80.57})


def voc_r101_plus_os8_trainval() -> ExperimentConfig:
    """voc_r101_os8_trainval's stage (frozen BN, OS8, lr 0.001, trainval) from
    voc_r101_plus_os16. The paper's VOC test figures are of Xception, not ResNet-101."""
    base = voc_r101_os8_trainval()
    return dataclasses.replace(
        base, name="voc_r101_plus_os8_trainval", model=_plus(base.model),
        train=dataclasses.replace(base.train, init="runs/voc_r101_plus_os16"),
        paper_results={})


def cityscapes_r101_plus_os16() -> ExperimentConfig:
    """cityscapes_r101_os16 with the decoder. The paper's Cityscapes figures are of
    Xception-65/71 only; none is given here."""
    base = cityscapes_r101_os16()
    return dataclasses.replace(base, name="cityscapes_r101_plus_os16",
                               model=_plus(base.model), paper_results={})


def voc_r101_plus_from_torchvision() -> ExperimentConfig:
    """Fine-tunes torchvision's COCO-trained DeepLabv3-R101 into DeepLabv3+ on VOC
    train_aug: its backbone and ASPP carried over exactly, the decoder and the logits
    new (its 3x3 head conv and logits read the encoder, not the decoder). Output
    stride 16 (its weights were trained at 8; output stride does not change them),
    its dropout 0.5 back to research/deeplab's 0.1, lr 0.001 for 30K steps: between
    the paper's 0.007 from ImageNet and its 0.0001 from COCO, since the decoder starts
    from nothing. Import first: tools/import_weights.py torchvision --arch
    deeplabv3_resnet101 --output_dir runs/tv_deeplabv3_resnet101."""
    base = voc_r101_os16()
    return dataclasses.replace(
        base, name="voc_r101_plus_from_torchvision",
        model=_plus(torchvision_deeplabv3(base.model), dropout_rate=0.1),
        train=dataclasses.replace(base.train, learning_rate=0.001,
                                  init="runs/tv_deeplabv3_resnet101"),
        paper_results={})


def voc_mobilenetv3_plus_os16() -> ExperimentConfig:
    """voc_mobilenetv3_os16 with the decoder on the stride-4 depthwise features
    (research/deeplab's mobilenet_v3_large_seg end point), auxiliary head kept."""
    base = voc_mobilenetv3_os16()
    return dataclasses.replace(base, name="voc_mobilenetv3_plus_os16",
                               model=_plus(base.model, dropout_rate=0.1))


def tiny_model(num_classes: int = 21, **overrides) -> ModelConfig:
    """One bottleneck per stage, 8 base channels: trains in seconds on a CPU."""
    values = dict(num_classes=num_classes, depth=14, base_width=8, multi_grid=(1,),
                  aspp_filters=32, output_stride=16, bn_momentum=0.9, dropout_rate=0.1,
                  normalization="imagenet")
    values.update(overrides)
    return ModelConfig(**values)


def tiny_voc() -> ExperimentConfig:
    """A small recipe of the same code: shallow dilated ResNet on generated VOC data."""
    return ExperimentConfig(
        name="tiny_voc",
        model=tiny_model(),
        data=DataConfig(train_records="runs/demo/records/train-*",
                        val_records="runs/demo/records/val-*", dataset="pascal_voc",
                        crop_size=(97, 97),
                        min_scale=0.75, max_scale=1.25, shuffle_buffer=256),
        train=TrainConfig(steps=600, batch_size=8, learning_rate=0.05, weight_decay=1e-4,
                          checkpoint_every=100, log_every=10, image_summary_every=100,
                          eval_every=0),
        eval=EvalConfig(output_strides=(16, 8), scales=(0.75, 1.0, 1.25),
                        multiscale_output_stride=8))


def tiny_voc_plus() -> ExperimentConfig:
    """tiny_voc with DeepLabv3+'s decoder, narrowed as the rest (projection to 16
    channels, two 3x3 convs of 32)."""
    base = tiny_voc()
    return dataclasses.replace(
        base, name="tiny_voc_plus",
        model=_plus(base.model, decoder_low_level_filters=16, decoder_filters=32))


def tiny_voc_mobilenetv3() -> ExperimentConfig:
    """tiny_voc on MobileNetV3-Large at a quarter of its width (every block, SE and
    hard-swish kept), with its auxiliary head."""
    base = tiny_voc()
    return dataclasses.replace(
        base, name="tiny_voc_mobilenetv3",
        model=dataclasses.replace(
            _mobilenetv3(width_multiplier=0.25), aspp_filters=32, head_filters=32,
            bn_momentum=0.9, dropout_rate=0.1))


def tiny_jft() -> ExperimentConfig:
    """A tiny multi-label pretraining run on generated classification records."""
    return ExperimentConfig(
        name="tiny_jft", task=CLASSIFICATION,
        model=tiny_model(num_classes=21, output_stride=32),
        data=DataConfig(train_records="runs/demo/jft/train-*", class_names=(),
                        image_size=64, shuffle_buffer=256),
        train=TrainConfig(steps=50, batch_size=8, learning_rate=0.05, lr_power=1.0,
                          checkpoint_every=25, log_every=10, image_summary_every=0,
                          eval_every=0),
        eval=EvalConfig(output_strides=()))


RECIPES: dict[str, Callable[[], ExperimentConfig]] = {
    "voc_r101_os16": voc_r101_os16,
    "voc_r101_os16_torchvision_init": voc_r101_os16_torchvision_init,
    "voc_r101_os8_trainval": voc_r101_os8_trainval,
    "coco_r101_os16": coco_r101_os16,
    "voc_r101_os16_from_coco": voc_r101_os16_from_coco,
    "cityscapes_r101_os16": cityscapes_r101_os16,
    "jft_r101_pretrain": jft_r101_pretrain,
    "voc_mobilenetv3_os16": voc_mobilenetv3_os16,
    "voc_mobilenetv3_os16_finetune": voc_mobilenetv3_os16_finetune,
    "voc_r101_plus_os16": voc_r101_plus_os16,
    "voc_r101_plus_os8_trainval": voc_r101_plus_os8_trainval,
    "cityscapes_r101_plus_os16": cityscapes_r101_plus_os16,
    "voc_r101_plus_from_torchvision": voc_r101_plus_from_torchvision,
    "voc_mobilenetv3_plus_os16": voc_mobilenetv3_plus_os16,
    "tiny_voc": tiny_voc,
    "tiny_voc_plus": tiny_voc_plus,
    "tiny_voc_mobilenetv3": tiny_voc_mobilenetv3,
    "tiny_jft": tiny_jft,
}


def get_recipe(name: str) -> ExperimentConfig:
    if name not in RECIPES:
        raise ValueError(f"Unknown experiment {name!r}; choose one of {sorted(RECIPES)}.")
    return RECIPES[name]()


