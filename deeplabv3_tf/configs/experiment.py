"""The experiment schema: frozen configs of data, training and evaluation around
a `ModelConfig`, and how they change.

`override` applies `section.field=value` strings (the `--set` flag) to any
experiment; `resolve_experiment` fills in what the training records' manifest
says about the data. The named recipes are in `recipes.py`; a run directory
saves an experiment as experiment.json (`runs.py`).
"""

from __future__ import annotations

import ast
import dataclasses
from typing import Any, Callable

from deeplabv3_tf.core.console import note_once
from deeplabv3_tf.core.fields import check_known_fields
from deeplabv3_tf.core.precision import TRAINING_PRECISIONS
from deeplabv3_tf.data.dataset import (
    IGNORE_LABEL, VOC_CLASSES, DatasetInfo, check_colors, default_colors)
from deeplabv3_tf.data.schema import records_manifest
from deeplabv3_tf.model.config import ModelConfig
from deeplabv3_tf.tasks import get_task
from deeplabv3_tf.tasks.segmentation import NAME as SEGMENTATION

STRATEGIES = ("auto", "mirrored", "multi_worker", "one_device", "tpu")
# tools/train.py's flags that set one field each (`--steps 100` = `--set train.steps=100`).
FLAG_FIELDS = {"train_records": "data.train_records", "val_records": "data.val_records",
               "init": "train.init", "steps": "train.steps", "batch_size": "train.batch_size",
               "learning_rate": "train.learning_rate", "output_stride": "model.output_stride",
               "precision": "train.precision", "strategy": "train.strategy",
               "jit_compile": "train.jit_compile",
               "top_k_percent_pixels": "train.top_k_percent_pixels",
               "hard_example_mining_step": "train.hard_example_mining_step"}
# `--set` names that moved: BatchNorm's runtime choices left the model config.
MOVED_FIELDS = {"model.freeze_bn": "train.freeze_bn", "model.sync_bn": "train.sync_bn"}


@dataclasses.dataclass(frozen=True)
class DataConfig:
    """Where the records are and how examples are prepared.

    The dataset's description (`data.dataset.DatasetInfo`) is `dataset`,
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
      top_k_percent_pixels: Hard-pixel mining (research/deeplab's flag, a
        fraction despite its name): the segmentation loss keeps only the
        hardest share of each image's valid pixels. 1.0: every pixel (off).
      hard_example_mining_step: Steps over which that share falls linearly
        from 1 to top_k_percent_pixels (0: from the first step).
      init: ImageNet `.h5` file, a run directory or checkpoint prefix ("" for
        random initialisation).
      precision: float32 | mixed_float16 | mixed_bfloat16.
      jit_compile: XLA-compile the per-replica forward and backward pass.
      strategy: auto | mirrored | multi_worker | one_device | tpu.
      sync_bn: Synchronise BatchNorm across replicas; None = when > 1 replica.
      freeze_bn: Run every BatchNorm in inference mode with fixed parameters
        (the paper's fine-tuning stage at output stride 8).
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
    top_k_percent_pixels: float = 1.0
    hard_example_mining_step: int = 0
    init: str = ""
    precision: str = "float32"
    jit_compile: bool = False
    strategy: str = "auto"
    sync_bn: bool | None = None
    freeze_bn: bool = False
    seed: int = 0
    checkpoint_every: int = 1000
    keep_checkpoints: int = 5
    log_every: int = 50
    image_summary_every: int = 1000
    eval_every: int = 5000

    def __post_init__(self):
        if not 0.0 < self.top_k_percent_pixels <= 1.0:
            raise ValueError(f"top_k_percent_pixels={self.top_k_percent_pixels} must be in "
                             "(0, 1]: the share of each image's pixels the loss keeps.")
        if self.hard_example_mining_step < 0:
            raise ValueError(
                f"hard_example_mining_step={self.hard_example_mining_step} must be >= 0.")

    @property
    def mines_hard_pixels(self) -> bool:
        """Whether the loss keeps only each image's hardest pixels."""
        return self.top_k_percent_pixels < 1.0


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


@dataclasses.dataclass(frozen=True)
class ExperimentConfig:
    """A whole experiment; saved as experiment.json next to its checkpoints."""

    name: str
    task: str = SEGMENTATION
    model: ModelConfig = ModelConfig()
    data: DataConfig = DataConfig()
    train: TrainConfig = TrainConfig()
    eval: EvalConfig = EvalConfig()
    paper_results: dict[str, float] = dataclasses.field(default_factory=dict)

    def __post_init__(self):
        get_task(self.task)  # a known task, or an error naming the known ones
        if self.train.precision not in TRAINING_PRECISIONS:
            raise ValueError(f"precision={self.train.precision!r} is not one of "
                             f"{TRAINING_PRECISIONS}.")
        if self.train.strategy not in STRATEGIES:
            raise ValueError(f"strategy={self.train.strategy!r} is not one of {STRATEGIES}.")
        # The dataset description must fit the classes wherever it is given (a
        # classification experiment may leave names out: thousands of labels).
        data, num_classes = self.data, self.model.num_classes
        if data.class_names and len(data.class_names) != num_classes:
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
        """Builds an experiment from `to_dict` output (an experiment.json).

        experiment.json files written before BatchNorm's runtime choices left
        the model config load too: `model.freeze_bn` becomes `train.freeze_bn`
        (`ModelConfig.from_dict` drops it and the other runtime fields).
        """
        values = dict(values)
        if values.get("model", {}).get("freeze_bn"):
            values["train"] = {**values.get("train", {}), "freeze_bn": True}
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
        if key in MOVED_FIELDS:
            note_once(key, f"note: {key} is now {MOVED_FIELDS[key]} (a runtime choice, not part "
                      "of the model's checkpoint); applied there.")
            key = MOVED_FIELDS[key]
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
    manifest, path = records_manifest(str(records))
    if manifest is None:
        return override(recipe, assignments)
    task = get_task(recipe.task)
    described = manifest.get("dataset")
    if described is None:
        if "colors" in task.dataset_fields:
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
    found = {k: v for k, v in found.items() if k in task.dataset_fields}
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
