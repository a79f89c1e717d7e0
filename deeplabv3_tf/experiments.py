"""Experiments: frozen configs and the named recipes of the paper.

A recipe is a function returning an `ExperimentConfig`; variants are
`dataclasses.replace` of another recipe, never copies. `RECIPES` maps names
(the `--experiment` flag) to those functions. `override` applies
`section.field=value` strings (the `--set` flag) to any config.

Paper figures (Chen et al. 2017) are kept beside the recipes that produce them
in `paper_results`, so evaluation can print them next to what a run reached.
"""

from __future__ import annotations

import ast
import dataclasses
import json
import os
from typing import Any, Callable

from deeplabv3_tf.classes import (
    CITYSCAPES, COCO_VOC, IGNORE_LABEL, PASCAL_VOC, VOC_CLASSES, DatasetInfo, check_colors,
    default_colors, note_once)
from deeplabv3_tf.config import (
    MOBILENET_V3_LARGE, ModelConfig, check_known_fields, keras_applications_compatible,
    torchvision_backbone, torchvision_deeplabv3)
from deeplabv3_tf.precision import TRAINING_PRECISIONS

EXPERIMENT_FILE = "experiment.json"
VOC_HARD_CLASSES = ("bicycle", "chair", "diningtable", "pottedplant", "sofa")
STRATEGIES = ("auto", "mirrored", "multi_worker", "one_device", "tpu")
TASKS = ("segmentation", "classification")


@dataclasses.dataclass(frozen=True)
class DataConfig:
    """Where the records are and how examples are prepared.

    The dataset's description (`classes.DatasetInfo`) is `dataset`,
    `class_names`, `colors`, `ignore_label` and `label_ids`; training takes
    them from the training records' manifest unless they are set
    (`resolve_experiment`).

    Attributes:
      train_records: Glob of training shards.
      val_records: Glob of validation shards ("" for none).
      dataset: Name of the dataset ("pascal_voc", "cityscapes", "folder", ...).
      class_names: Names of the classes, index = class id.
      colors: (r, g, b) of each class in colour masks; () for the PASCAL VOC
        colour map.
      label_ids: The id of each class in the dataset's own tools (Cityscapes
        label ids); () when class ids are those ids.
      crop_size: Training crop (height, width).
      min_scale, max_scale: Random scale range.
      flip: Random left-right flip.
      ignore_label: Label skipped by loss and metrics.
      shuffle_buffer: Example shuffle buffer.
      hard_class_ids: Classes whose training images are repeated
        `hard_class_repeat` times (paper §4.1, test-server stage).
      hard_class_repeat: Times a hard-class image appears per epoch.
      image_size: Classification input side.
      use_confidence: Classification targets are confidences, not 1s.
    """

    train_records: str = ""
    val_records: str = ""
    dataset: str = ""
    class_names: tuple[str, ...] = VOC_CLASSES
    colors: tuple[tuple[int, int, int], ...] = ()
    label_ids: tuple[int, ...] = ()
    crop_size: tuple[int, int] = (513, 513)
    min_scale: float = 0.5
    max_scale: float = 2.0
    flip: bool = True
    ignore_label: int = IGNORE_LABEL
    shuffle_buffer: int = 1024
    hard_class_ids: tuple[int, ...] = ()
    hard_class_repeat: int = 1
    image_size: int = 224
    use_confidence: bool = False

    def __post_init__(self):
        object.__setattr__(self, "colors", tuple(tuple(c) for c in self.colors))

    @property
    def info(self) -> DatasetInfo:
        """The dataset description these fields hold (colours filled in)."""
        return DatasetInfo(self.dataset, self.class_names,
                           self.colors or default_colors(len(self.class_names)),
                           self.ignore_label, self.label_ids)

    def with_dataset(self, info: DatasetInfo) -> "DataConfig":
        return dataclasses.replace(self, **dataset_fields(info))


def dataset_fields(info: DatasetInfo) -> dict[str, Any]:
    """DataConfig fields of a dataset description."""
    return {"dataset": info.name, "class_names": info.class_names, "colors": info.colors,
            "label_ids": info.label_ids, "ignore_label": info.ignore_label}


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Optimisation, distribution and bookkeeping.

    Attributes:
      steps: Training steps.
      batch_size: Global batch, split across replicas.
      learning_rate: Base rate of the poly schedule.
      lr_power: Poly power: lr = base * (1 - step / steps) ** power.
      warmup_steps: Linear warm-up steps (0 in the paper).
      momentum: SGD momentum.
      weight_decay: L2 factor on conv and dense kernels (loss += wd/2 * |w|^2).
      class_weights: Optional per-class loss weights.
      aux_loss_weight: Weight of the auxiliary head's loss when the model has
        one (model.aux_head; 0.5 as torchvision's training reference).
      init: ImageNet `.h5` file, a run directory or checkpoint prefix ("" for
        random initialisation).
      precision: float32 | mixed_float16 | mixed_bfloat16.
      jit_compile: XLA-compile the per-replica forward and backward pass.
      strategy: auto | mirrored | multi_worker | one_device | tpu.
      sync_bn: Synchronise BatchNorm across replicas; None = when > 1 replica.
      seed: Seed of initialisation, shuffling and augmentation.
      checkpoint_every: Steps between checkpoints.
      keep_checkpoints: Checkpoints kept.
      log_every: Steps between TensorBoard scalars.
      image_summary_every: Steps between image summaries (0: never).
      eval_every: Steps between evaluations on val records (0: only at the end).
    """

    steps: int = 30000
    batch_size: int = 16
    learning_rate: float = 0.007
    lr_power: float = 0.9
    warmup_steps: int = 0
    momentum: float = 0.9
    weight_decay: float = 1e-4
    class_weights: tuple[float, ...] | None = None
    aux_loss_weight: float = 0.5
    init: str = ""
    precision: str = "float32"
    jit_compile: bool = False
    strategy: str = "auto"
    sync_bn: bool | None = None
    seed: int = 0
    checkpoint_every: int = 1000
    keep_checkpoints: int = 5
    log_every: int = 50
    image_summary_every: int = 1000
    eval_every: int = 5000


@dataclasses.dataclass(frozen=True)
class EvalConfig:
    """The evaluation protocol reported for an experiment.

    Attributes:
      output_strides: Output strides to evaluate at (None = the training one).
      scales: Scales of multi-scale inference.
      multiscale_output_stride: Output stride of the multi-scale + flip run
        (0: no multi-scale run).
      window: Sliding window (height, width) of the windowed run (() none).
      window_stride: Its stride (() two thirds of the window).
      windowed_output_stride: Output stride of a run by sliding windows, in
        addition to the whole-image ones (0: none).
    """

    output_strides: tuple[int, ...] = (16,)
    scales: tuple[float, ...] = (0.5, 0.75, 1.0, 1.25, 1.5, 1.75)
    multiscale_output_stride: int = 0
    window: tuple[int, ...] = ()
    window_stride: tuple[int, ...] = ()
    windowed_output_stride: int = 0

    def __post_init__(self):
        if self.windowed_output_stride and len(self.window) != 2:
            raise ValueError(f"windowed_output_stride={self.windowed_output_stride} needs "
                             f"eval.window=(height, width), not {self.window}.")

    @property
    def windows(self):
        """The protocol's `inference.Windows`, or None."""
        from deeplabv3_tf.inference import Windows

        if not self.window:
            return None
        return Windows(self.window, self.window_stride or None)


@dataclasses.dataclass(frozen=True)
class ExperimentConfig:
    """A whole experiment; saved as experiment.json next to its checkpoints."""

    name: str
    task: str = "segmentation"
    model: ModelConfig = ModelConfig()
    data: DataConfig = DataConfig()
    train: TrainConfig = TrainConfig()
    eval: EvalConfig = EvalConfig()
    paper_results: dict[str, float] = dataclasses.field(default_factory=dict)

    def __post_init__(self):
        if self.task not in TASKS:
            raise ValueError(f"task={self.task!r} is not one of {TASKS}.")
        if self.train.precision not in TRAINING_PRECISIONS:
            raise ValueError(f"precision={self.train.precision!r} is not one of "
                             f"{TRAINING_PRECISIONS}.")
        if self.train.strategy not in STRATEGIES:
            raise ValueError(f"strategy={self.train.strategy!r} is not one of {STRATEGIES}.")
        if self.task == "segmentation":
            data, num_classes = self.data, self.model.num_classes
            if len(data.class_names) != num_classes:
                raise ValueError(f"{len(data.class_names)} class names for {num_classes} "
                                 "classes.")
            try:
                check_colors(data.colors, num_classes, "data.colors")
            except ValueError as e:
                raise ValueError(f"{e} (data.colors=() gives the default colour map)") from None
            if data.label_ids and len(data.label_ids) != num_classes:
                raise ValueError(f"{len(data.label_ids)} data.label_ids for {num_classes} "
                                 "classes (data.label_ids=() for none).")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "ExperimentConfig":
        values = dict(values)
        sections = {"model": ModelConfig, "data": DataConfig, "train": TrainConfig,
                    "eval": EvalConfig}
        for key, section in sections.items():
            if key in values:
                values[key] = _from_dict(section, values[key])
        return cls(**values)


def _from_dict(cls, values: dict):
    if cls is ModelConfig:
        return ModelConfig.from_dict(values)
    check_known_fields(cls, values, cls.__name__)
    converted = {k: tuple(v) if isinstance(v, list) else v for k, v in values.items()}
    return cls(**converted)


def save_experiment(experiment: ExperimentConfig, directory: str) -> str:
    os.makedirs(directory, exist_ok=True)
    path = os.path.join(directory, EXPERIMENT_FILE)
    with open(path, "w") as f:
        json.dump(experiment.to_dict(), f, indent=2)
    return path


def load_experiment(directory: str) -> ExperimentConfig:
    """Reads experiment.json from a run directory (or a checkpoint's directory)."""
    given = directory
    if not os.path.isdir(directory):
        directory = os.path.dirname(directory)
    path = os.path.join(directory, EXPERIMENT_FILE)
    if not os.path.exists(path):
        raise FileNotFoundError(f"{given} is not a training run: no {path}.")
    with open(path) as f:
        values = json.load(f)
    if values.get("task", "segmentation") == "segmentation" and "dataset" not in values.get(
            "data", {}):
        note_once(path, f"note: {path} has no dataset description (written by an older "
                  "version): the PASCAL VOC colour map is used for its classes; tools/export.py "
                  "--palette sets colours and names.")
    return ExperimentConfig.from_dict(values)


def override(experiment: ExperimentConfig, assignments: list[str]) -> ExperimentConfig:
    """Applies `section.field=value` assignments, e.g. `train.steps=100`.

    Values are Python literals (`(321, 321)`, `True`, `0.01`) or plain strings.
    All assignments are applied before the result is validated, so fields that
    must agree (model.num_classes and data.class_names) can change together.

    Raises:
      ValueError: an unknown section or field, naming it.
    """
    values = experiment.to_dict()
    for assignment in assignments:
        key, value = _parse_assignment(assignment)
        path = key.split(".")
        target = values
        for part in path[:-1]:
            if not isinstance(target.get(part), dict) or part == "paper_results":
                raise ValueError(f"Unknown section {part!r} in {assignment!r}.")
            target = target[part]
        if path[-1] not in target:
            raise ValueError(f"Unknown field {key!r} in {assignment!r}.")
        target[path[-1]] = list(value) if isinstance(value, tuple) else value
    return ExperimentConfig.from_dict(values)


# ----------------------------------------------------------------------------
# Recipes.

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
        model=dataclasses.replace(base.model, output_stride=8, freeze_bn=True),
        data=dataclasses.replace(
            base.data, train_records="records/voc/trainval-*", val_records="",
            hard_class_ids=tuple(VOC_CLASSES.index(c) for c in VOC_HARD_CLASSES),
            hard_class_repeat=2),
        train=dataclasses.replace(base.train, learning_rate=0.001, init="runs/voc_r101_os16"),
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
    protocol; a fraction of the memory: README "Large images").
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
        name="jft_r101_pretrain", task="classification",
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
        num_classes=21, backbone=MOBILENET_V3_LARGE, output_stride=16, aux_head=True,
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
        name="tiny_jft", task="classification",
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
    "tiny_voc": tiny_voc,
    "tiny_voc_mobilenetv3": tiny_voc_mobilenetv3,
    "tiny_jft": tiny_jft,
}


def get_recipe(name: str) -> ExperimentConfig:
    if name not in RECIPES:
        raise ValueError(f"Unknown experiment {name!r}; choose one of {sorted(RECIPES)}.")
    return RECIPES[name]()


# What the training records say about the data, and the field each goes to.
_RECORDS_FIELDS = {"num_classes": "model.num_classes", "dataset": "data.dataset",
                   "class_names": "data.class_names", "colors": "data.colors",
                   "label_ids": "data.label_ids"}


def _parse_assignment(assignment: str) -> tuple[str, Any]:
    """("section.field", value) of a `section.field=value` string; the value is
    a Python literal, or the text itself."""
    key, sep, raw = assignment.partition("=")
    if not sep:
        raise ValueError(f"Override {assignment!r} is not section.field=value.")
    try:
        return key.strip(), ast.literal_eval(raw)
    except (ValueError, SyntaxError):
        return key.strip(), raw


def check_records_classes(manifest: dict, path: str, num_classes: int) -> None:
    """Refuses a model whose number of classes is not that of its training records."""
    if manifest["num_classes"] != num_classes:
        raise ValueError(
            f"The training records have {manifest['num_classes']} classes ({path}) but "
            f"model.num_classes={num_classes}; leave model.num_classes out to take the "
            "records' classes and names.")


def resolve_experiment(recipe: ExperimentConfig, assignments: list[str],
                       log: Callable[[str], None] = print) -> ExperimentConfig:
    """A recipe with `assignments` applied, its data described by its training records.

    The number of classes and the dataset description (name, class names,
    colours, label ids) come from the training records' manifest, unless an
    assignment sets them: a 3-class folder dataset trains with a recipe made
    for VOC's 21 without restating its names. Records built before manifests
    described their data give their number of classes and names only, and
    say so once.

    Raises:
      ValueError: model.num_classes set to another number than the records have.
    """
    given = dict(_parse_assignment(a) for a in assignments)  # the last of each wins
    records = given.get("data.train_records", recipe.data.train_records)
    from deeplabv3_tf.data.tfrecord_builders.shards import records_manifest

    manifest, path = records_manifest(str(records))
    if manifest is None:
        return override(recipe, assignments)
    described = manifest.get("dataset")
    if described is None:
        if recipe.task == "segmentation":
            note_once(path, f"note: {path} has no dataset description (built by an older "
                      "version): its number of classes and names are used, with the "
                      "recipe's colours or the default colour map.")
        found = {"num_classes": manifest["num_classes"]}
        if manifest.get("class_names"):
            found["class_names"] = tuple(manifest["class_names"])
        if len(recipe.data.colors) != manifest["num_classes"]:
            found["colors"] = ()
    else:
        info = DatasetInfo.from_dict(described)
        found = {"num_classes": info.num_classes, "dataset": info.name,
                 "class_names": info.class_names, "colors": info.colors,
                 "label_ids": info.label_ids}
    if recipe.task == "classification":
        found = {k: v for k, v in found.items() if k in ("num_classes", "class_names")}
    if "model.num_classes" in given:
        check_records_classes(manifest, path, given["model.num_classes"])
    adopted = [f"{_RECORDS_FIELDS[k]}={v!r}" for k, v in found.items()
               if _RECORDS_FIELDS[k] not in given]
    experiment = override(recipe, adopted + assignments)

    def description(e):
        return (e.model.num_classes, e.data.dataset, e.data.class_names, e.data.colors,
                e.data.label_ids)

    if description(experiment) != description(recipe):
        names = ", ".join(experiment.data.class_names[:8]) + (
            ", ..." if len(experiment.data.class_names) > 8 else "")
        log(f"data: {experiment.data.dataset or 'unnamed dataset'}, "
            f"{experiment.model.num_classes} classes ({names}) from {path}")
    return experiment
