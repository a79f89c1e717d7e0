"""torchvision's DeepLabv3, ImageNet ResNet and MobileNetV3 weights, imported into this model.

torchvision publishes trained DeepLabv3s (COCO images, the 21 PASCAL VOC
classes: ResNet-50/101 and MobileNetV3-Large) and their ImageNet backbones. `import_torchvision` reads such a downloaded
`.pth` state_dict, builds the same network with this package's model code
(`config.torchvision_deeplabv3` / `config.torchvision_backbone`: stride on the
3x3 conv, torchvision's dilation schedule, its head and input normalisation),
maps every entry onto it and writes a run directory (experiment.json + a
checkpoint) that `tools/export.py`, `tools/evaluate.py` and `train.init` read
like any training run.

Key mapping (torchvision module -> Keras layer path; DeepLabv3 checkpoints
prefix the backbone's modules with "backbone."):

  conv1, bn1                          backbone/conv1_conv, backbone/conv1_bn
  layer{s-1}.{u-1}.conv{i}, .bn{i}    backbone/conv{s}_block{u}_{i}_conv, _bn
  layer{s-1}.{u-1}.downsample.{0,1}   backbone/conv{s}_block{u}_0_conv, _bn
  fc                                  classifier (ResNets)
  classifier.0.convs.0.{0,1}          aspp_0_conv, aspp_0_bn
  classifier.0.convs.{1,2,3}.{0,1}    aspp_{1,2,3}_conv, aspp_{1,2,3}_bn
  classifier.0.convs.4.{1,2}          aspp_pool_conv, aspp_pool_bn
  classifier.0.project.{0,1}          aspp_project_conv, aspp_project_bn
  classifier.{1,2}                    head_conv, head_bn
  classifier.4                        logits
  aux_classifier.{0,1}, .4            aux_conv, aux_bn, aux_logits

MobileNetV3-Large (`mobilenet_modules`; DeepLabv3's IntermediateLayerGetter keeps
the classifier's `features.{i}` as `backbone.{i}`):

  features.0.{0,1}                    backbone/conv1_conv, conv1_bn
  features.{i}.block.{k}.{0,1}        backbone/conv{s}_block{u}_{expand,dw,project}_{conv,bn}
                                      (block i of mobilenet_v3.block_plan; k counts
                                      the block's parts in order)
  features.{i}.block.{k}.fc{1,2}      backbone/conv{s}_block{u}_se_{reduce,expand}
  features.16.{0,1}                   backbone/conv5_last_conv, conv5_last_bn
  classifier.0, classifier.3          classifier_hidden, classifier (mobilenet_v3_large)

Tensors: conv weights OIHW -> HWIO, depthwise [C, 1, k, k] -> [k, k, C, 1], linear weights [out, in] -> [in, out],
BN weight/bias/running_mean/running_var -> gamma/beta/moving_mean/
moving_variance; `num_batches_tracked` carries no weight and is dropped. Every
other entry is used exactly once: an entry nothing maps to, or a layer no
entry fills, is an error naming it.

torch is needed only here, imported when a file is read (requirements-torch.txt).
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import os
import re
import shutil
import tempfile
from typing import Callable

import keras
import numpy as np
import tensorflow as tf

from deeplabv3_tf.checksum import file_sha256
from deeplabv3_tf.classes import VOC_CLASSES
from deeplabv3_tf.config import (BLOCKS_PER_DEPTH, MOBILENET_V3_LARGE, RESNET, ModelConfig,
                                 torchvision_backbone, torchvision_deeplabv3)
from deeplabv3_tf.model import mobilenet_v3
from deeplabv3_tf.model.backbone import BACKBONE_NAME
from deeplabv3_tf.model.transfer import flat_layers

SEGMENTATION, CLASSIFICATION = "segmentation", "classification"

# --arch -> (task, backbone, ResNet depth or None).
ARCHITECTURES = {
    "deeplabv3_resnet50": (SEGMENTATION, RESNET, 50),
    "deeplabv3_resnet101": (SEGMENTATION, RESNET, 101),
    "deeplabv3_mobilenet_v3_large": (SEGMENTATION, MOBILENET_V3_LARGE, None),
    "resnet50": (CLASSIFICATION, RESNET, 50),
    "resnet101": (CLASSIFICATION, RESNET, 101),
    "mobilenet_v3_large": (CLASSIFICATION, MOBILENET_V3_LARGE, None),
}

# The files torchvision publishes for these architectures and what torchvision
# reports for them (torchvision.models weight enums); recorded in import.json.
PUBLISHED_WEIGHTS = {
    "deeplabv3_resnet50": {
        "weights": "DeepLabV3_ResNet50_Weights.COCO_WITH_VOC_LABELS_V1",
        "url": "https://download.pytorch.org/models/deeplabv3_resnet50_coco-cd0a2569.pth",
        "file_mb": 160.5,
        "reported": "COCO val2017 (VOC classes): mIoU 66.4, pixel accuracy 92.4",
    },
    "deeplabv3_resnet101": {
        "weights": "DeepLabV3_ResNet101_Weights.COCO_WITH_VOC_LABELS_V1",
        "url": "https://download.pytorch.org/models/deeplabv3_resnet101_coco-586e9e4e.pth",
        "file_mb": 233.2,
        "reported": "COCO val2017 (VOC classes): mIoU 67.4, pixel accuracy 92.4",
    },
    "deeplabv3_mobilenet_v3_large": {
        "weights": "DeepLabV3_MobileNet_V3_Large_Weights.COCO_WITH_VOC_LABELS_V1",
        "url": "https://download.pytorch.org/models/deeplabv3_mobilenet_v3_large-fc3c493d.pth",
        "file_mb": 42.301,
        "reported": "COCO val2017 (VOC classes): mIoU 60.3, pixel accuracy 91.2; "
                    "11,029,328 parameters, 10.452 GMACs at 520x520",
    },
    "mobilenet_v3_large": {
        "weights": "MobileNet_V3_Large_Weights.IMAGENET1K_V2",
        "url": "https://download.pytorch.org/models/mobilenet_v3_large-5c1a4163.pth",
        "file_mb": 21.1,
        "reported": "ImageNet-1k val: top-1 75.274",
    },
    "resnet50": {
        "weights": "ResNet50_Weights.IMAGENET1K_V2",
        "url": "https://download.pytorch.org/models/resnet50-11ad3fa6.pth",
        "file_mb": 97.8,
        "reported": "ImageNet-1k val: top-1 80.858",
    },
    "resnet101": {
        "weights": "ResNet101_Weights.IMAGENET1K_V2",
        "url": "https://download.pytorch.org/models/resnet101-cd907fc2.pth",
        "file_mb": 170.5,
        "reported": "ImageNet-1k val: top-1 81.886",
    },
}

IMPORT_FILE = "import.json"
TORCH_MISSING = (
    "Reading a PyTorch checkpoint needs torch, which requirements.txt leaves out: "
    "pip install -r requirements-torch.txt")

# Keras head layers -> torchvision modules (backbone layers follow a rule).
_HEAD_MODULES = {
    "aspp_0_conv": "classifier.0.convs.0.0",
    "aspp_0_bn": "classifier.0.convs.0.1",
    **{f"aspp_{i}_{kind}": f"classifier.0.convs.{i}.{j}"
       for i in (1, 2, 3) for kind, j in (("conv", 0), ("bn", 1))},
    "aspp_pool_conv": "classifier.0.convs.4.1",
    "aspp_pool_bn": "classifier.0.convs.4.2",
    "aspp_project_conv": "classifier.0.project.0",
    "aspp_project_bn": "classifier.0.project.1",
    "head_conv": "classifier.1",
    "head_bn": "classifier.2",
    "logits": "classifier.4",
    "aux_conv": "aux_classifier.0",
    "aux_bn": "aux_classifier.1",
    "aux_logits": "aux_classifier.4",
}
_CLASSIFIER_MODULES = {RESNET: {"classifier": "fc"},
                       MOBILENET_V3_LARGE: {"classifier_hidden": "classifier.0",
                                            "classifier": "classifier.3"}}
_BACKBONE_UNIT = re.compile(r"conv(\d)_block(\d+)_(\d)_(conv|bn)")
MOBILENET_FEATURES = 17  # features[0] (stem), 15 blocks, features[16] (last conv)


def read_state_dict(path: str) -> dict[str, np.ndarray]:
    """Reads a PyTorch state_dict file into NumPy arrays.

    Accepts a bare state_dict (what torchvision publishes), or a training
    checkpoint holding one under "model" or "state_dict" (torchvision's
    reference scripts); a DistributedDataParallel "module." prefix is removed.
    Loads with `weights_only=True`: no code in the file runs.

    Raises:
      FileNotFoundError: no file at `path`.
      ImportError: torch is not installed (the message says what to install).
      ValueError: the file is not a state_dict of tensors.
    """
    if not os.path.isfile(path):
        raise FileNotFoundError(f"PyTorch checkpoint not found: {path}")
    try:
        import torch
    except ImportError as error:
        raise ImportError(TORCH_MISSING) from error
    try:
        content = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises several types for a bad file.
        raise ValueError(f"{path} is not a readable PyTorch checkpoint: {error}") from error
    for key in ("model", "state_dict"):
        if isinstance(content, dict) and isinstance(content.get(key), dict):
            content = content[key]
    if not isinstance(content, dict):
        raise ValueError(f"{path} holds a {type(content).__name__}, not a state_dict.")
    arrays = {}
    for key, value in content.items():
        if not isinstance(value, torch.Tensor):
            raise ValueError(f"{path}: entry {key!r} is a {type(value).__name__}, "
                             "not a tensor; is this a state_dict?")
        name = key[len("module."):] if key.startswith("module.") else key
        value = value.detach().cpu()
        arrays[name] = value.float().numpy() if value.is_floating_point() else value.numpy()
    return arrays


def _units(state_dict: dict, prefix: str, stage: int) -> int:
    pattern = re.compile(rf"{re.escape(prefix)}layer{stage}\.(\d+)\.")
    found = {int(m.group(1)) for k in state_dict if (m := pattern.match(k))}
    return max(found) + 1 if found else 0


def import_config(architecture: str, state_dict: dict[str, np.ndarray], source: str,
                  output_stride: int | None = None) -> tuple[str, ModelConfig]:
    """The task and model config that `state_dict` of `architecture` fits.

    DeepLabv3 keeps torchvision's output stride 8 (and so ASPP rates 12/24/36)
    unless `output_stride` says otherwise; the class count comes from the
    classifier, the auxiliary head is built when the file has one. ResNets
    become a classifier at output stride 32.

    Raises:
      ValueError: unknown architecture, or a file of another architecture
        (named, with what the file looks like).
    """
    if architecture not in ARCHITECTURES:
        raise ValueError(f"--arch {architecture!r} is not one of {sorted(ARCHITECTURES)}.")
    task, backbone, depth = ARCHITECTURES[architecture]
    segmentation = task == SEGMENTATION
    prefix = _prefix(segmentation, backbone)
    classifier_key = ("classifier.4.weight" if segmentation else
                      "fc.weight" if backbone == RESNET else "classifier.3.weight")
    if classifier_key not in state_dict:
        looks_like = ("a DeepLabv3 or FCN model" if any(k.startswith("backbone.") for k in state_dict)
                      else "a ResNet classifier" if "fc.weight" in state_dict
                      else "a MobileNetV3 classifier" if "features.0.0.weight" in state_dict
                      else "neither")
        raise ValueError(f"{source} has no {classifier_key!r}: it is not a {architecture} "
                         f"state_dict (it looks like {looks_like}); check --arch.")
    if backbone == RESNET:
        units = tuple(_units(state_dict, prefix, s) for s in (1, 2, 3, 4))
        if units != BLOCKS_PER_DEPTH[depth]:
            raise ValueError(f"{source}: the backbone has {units} units per stage, "
                             f"{architecture} has {BLOCKS_PER_DEPTH[depth]}; check --arch.")
    else:
        found = {int(m.group(1)) for k in state_dict
                 if (m := re.match(rf"{re.escape(prefix)}(\d+)\.", k))}
        stem = state_dict.get(f"{prefix}0.0.weight")
        if len(found) != MOBILENET_FEATURES or stem is None or stem.shape[0] != 16:
            raise ValueError(
                f"{source}: the backbone has {len(found)} feature modules"
                + ("" if stem is None else f" and a {stem.shape[0]}-channel stem")
                + f"; {architecture} (width 1.0) has {MOBILENET_FEATURES} and 16; check --arch.")
    num_classes = int(state_dict[classifier_key].shape[0])
    base = dict(num_classes=num_classes, backbone=backbone, depth=depth or 101)
    if segmentation:
        # torchvision's DeepLabv3-ResNets run at output stride 8, its MobileNetV3 at 16.
        config = torchvision_deeplabv3(ModelConfig(
            **base, output_stride=output_stride or (8 if backbone == RESNET else 16),
            aux_head=any(k.startswith("aux_classifier.") for k in state_dict)))
    else:
        config = torchvision_backbone(ModelConfig(
            **base, output_stride=output_stride or 32,
            multi_grid=(1,) * BLOCKS_PER_DEPTH[base["depth"]][-1], dilate_first_unit=False))
    return task, config


def _prefix(segmentation: bool, backbone: str) -> str:
    """The state_dict prefix of the backbone's modules."""
    if segmentation:
        return "backbone."
    return "" if backbone == RESNET else "features."


def mobilenet_modules(config: ModelConfig) -> dict[str, str]:
    """Keras MobileNetV3 layer name -> torchvision `features` module (no prefix).

    features[i] is block i (1..15) of `mobilenet_v3.block_plan`, in order;
    inside it, `block.k` counts the block's parts: expansion (if any),
    depthwise, squeeze-excite (if any), projection. A conv part's conv and
    BN are `.0` and `.1`; squeeze-excite's convs are `fc1`, `fc2`.
    """
    names = {"conv1_conv": "0.0", "conv1_bn": "0.1"}
    plan = mobilenet_v3.block_plan(config)
    for index, block in enumerate(plan, start=1):
        parts = ((["expand"] if block["expanded"] != block["input"] else []) + ["dw"]
                 + (["se"] if block["se"] else []) + ["project"])
        for k, part in enumerate(parts):
            module = f"{index}.block.{k}"
            if part == "se":
                names[f"{block['name']}_se_reduce"] = f"{module}.fc1"
                names[f"{block['name']}_se_expand"] = f"{module}.fc2"
            else:
                names[f"{block['name']}_{part}_conv"] = f"{module}.0"
                names[f"{block['name']}_{part}_bn"] = f"{module}.1"
    names["conv5_last_conv"] = f"{len(plan) + 1}.0"
    names["conv5_last_bn"] = f"{len(plan) + 1}.1"
    return names


def torch_module(layer_path: str, segmentation: bool,
                 config: ModelConfig | None = None) -> str:
    """The torchvision module name of a Keras layer path (see the module docstring);
    `config` tells the backbone (default: a ResNet)."""
    backbone = config.backbone if config is not None else RESNET
    if layer_path.startswith(f"{BACKBONE_NAME}/"):
        name = layer_path[len(BACKBONE_NAME) + 1:]
        prefix = _prefix(segmentation, backbone)
        if backbone == MOBILENET_V3_LARGE:
            modules = mobilenet_modules(config)
            if name in modules:
                return prefix + modules[name]
            raise ValueError(f"Layer {layer_path!r} has no torchvision counterpart.")
        if name in ("conv1_conv", "conv1_bn"):
            return prefix + ("conv1" if name == "conv1_conv" else "bn1")
        match = _BACKBONE_UNIT.fullmatch(name)
        if match:
            stage, unit, index, kind = (int(match[1]), int(match[2]), int(match[3]), match[4])
            base = f"{prefix}layer{stage - 1}.{unit - 1}."
            if index == 0:
                return base + ("downsample.0" if kind == "conv" else "downsample.1")
            return base + f"{kind}{index}"
    elif layer_path in _HEAD_MODULES:
        return _HEAD_MODULES[layer_path]
    elif layer_path in _CLASSIFIER_MODULES[backbone]:
        return _CLASSIFIER_MODULES[backbone][layer_path]
    raise ValueError(f"Layer {layer_path!r} has no torchvision counterpart.")


def _entries(layer) -> list[tuple[tf.Variable, str, Callable[[np.ndarray], np.ndarray]]]:
    """(variable, state_dict suffix, torch -> Keras transform) of one layer."""
    same = lambda a: a  # noqa: E731
    if isinstance(layer, keras.layers.BatchNormalization):
        return [(layer.gamma, "weight", same), (layer.beta, "bias", same),
                (layer.moving_mean, "running_mean", same),
                (layer.moving_variance, "running_var", same)]
    if isinstance(layer, keras.layers.Conv2D):
        entries = [(layer.kernel, "weight", lambda a: a.transpose(2, 3, 1, 0))]
    elif isinstance(layer, keras.layers.DepthwiseConv2D):
        # torch [C, 1, k, k] (groups=C) -> Keras [k, k, C, 1].
        entries = [(layer.kernel, "weight", lambda a: a.transpose(2, 3, 0, 1))]
    elif isinstance(layer, keras.layers.Dense):
        entries = [(layer.kernel, "weight", lambda a: a.T)]
    else:
        raise ValueError(f"Layer {layer.name!r} ({type(layer).__name__}) has no torchvision mapping.")
    if layer.use_bias:
        entries.append((layer.bias, "bias", same))
    return entries


def load_state_dict(model: keras.Model, state_dict: dict[str, np.ndarray], segmentation: bool,
                    source: str = "state_dict", config: ModelConfig | None = None) -> int:
    """Fills every weight of `model` from a torchvision state_dict, each entry used once.

    Args:
      model: From `build_deeplabv3` (with its auxiliary head when the file has
        one) or `build_classifier`, built with a `torchvision_*` config.
      state_dict: NumPy arrays by torchvision key (`read_state_dict`).
      segmentation: DeepLabv3 (keys under "backbone.") or a bare classifier.
      source: Named in error messages.
      config: The model's config (its backbone; default: a ResNet).

    Returns:
      Number of state_dict entries assigned.

    Raises:
      ValueError: entries the model has no place for, layers the file does not
        fill, or shapes that differ; each named. Nothing is assigned then.
    """
    remaining = {k: v for k, v in state_dict.items() if not k.endswith(".num_batches_tracked")}
    used, missing, assignments = set(), [], []
    for path, layer in flat_layers(model).items():
        module = torch_module(path, segmentation, config)
        for variable, suffix, transform in _entries(layer):
            key = f"{module}.{suffix}"
            if key in used:
                raise ValueError(f"{key!r} would fill two layers (the second is {path!r}).")
            if key not in remaining:
                missing.append(f"{key} (for {path})")
                continue
            value = transform(remaining.pop(key))
            used.add(key)
            if tuple(value.shape) != tuple(variable.shape):
                raise ValueError(
                    f"{source}: {key!r} has shape {tuple(state_dict[key].shape)}; layer {path!r} "
                    f"needs {tuple(variable.shape)} (after torch -> Keras layout).")
            assignments.append((variable, value))
    if missing or remaining:
        problems = []
        if remaining:
            problems.append(f"{len(remaining)} entries the model has no place for: "
                            f"{_first(sorted(remaining))}")
        if missing:
            problems.append(f"{len(missing)} entries missing: {_first(missing)}")
        raise ValueError(f"{source} does not fit the model: " + "; ".join(problems) + ".")
    for variable, value in assignments:
        variable.assign(value.astype(variable.dtype))
    return len(assignments)


def _first(items: list[str], count: int = 8) -> str:
    shown = ", ".join(items[:count])
    return shown + (f", ... ({len(items) - count} more)" if len(items) > count else "")


def import_torchvision(architecture: str, checkpoint: str, output_dir: str,
                       output_stride: int | None = None, overwrite: bool = False,
                       log: Callable[[str], None] = print) -> dict:
    """Converts a torchvision `.pth` into a run directory of this package.

    Writes, atomically (a temporary sibling renamed at the end): experiment.json
    (the model config, VOC class names for 21-class DeepLabv3), a checkpoint
    `ckpt-0` of the model, and import.json (source file, its SHA-256, what
    torchvision reports for the published weights).

    Args:
      architecture: A key of `ARCHITECTURES`.
      checkpoint: The `.pth` file.
      output_dir: Run directory to create.
      output_stride: Override the stride the model is built at (DeepLabv3: 8,
        ResNets: 32); evaluation and export can change it again later.
      overwrite: Replace an existing non-empty `output_dir`.
      log: Progress messages.

    Returns:
      The import.json contents.
    """
    # Imported here: experiments imports the model package.
    from deeplabv3_tf.experiments import DataConfig, EvalConfig, ExperimentConfig, save_experiment
    from deeplabv3_tf.model.classifier import build_classifier
    from deeplabv3_tf.model.deeplabv3 import build_deeplabv3

    if architecture not in ARCHITECTURES:
        raise ValueError(f"--arch {architecture!r} is not one of {sorted(ARCHITECTURES)}.")
    output_dir = os.path.abspath(output_dir)
    if os.path.exists(output_dir) and os.listdir(output_dir) and not overwrite:
        raise FileExistsError(f"{output_dir} exists and is not empty; choose another "
                              "--output_dir or pass --overwrite.")
    log(f"reading {checkpoint}")
    state_dict = read_state_dict(checkpoint)
    task, config = import_config(architecture, state_dict, checkpoint, output_stride)
    segmentation = task == SEGMENTATION
    model = build_deeplabv3(config) if segmentation else build_classifier(config)
    assigned = load_state_dict(model, state_dict, segmentation, source=checkpoint, config=config)
    log(f"mapped {assigned} of {len(state_dict)} entries onto {model.count_params():,} "
        f"parameters ({len(state_dict) - assigned} num_batches_tracked counters dropped)")

    class_names = ()
    if segmentation:
        class_names = (VOC_CLASSES if config.num_classes == len(VOC_CLASSES)
                       else tuple(f"class_{i}" for i in range(config.num_classes)))
    experiment = ExperimentConfig(
        name=f"torchvision_{architecture}", task=task, model=config,
        data=DataConfig(train_records="", val_records="", class_names=class_names),
        eval=dataclasses.replace(EvalConfig(), output_strides=(config.output_stride,),
                                 multiscale_output_stride=0))
    provenance = {
        "architecture": architecture,
        "source": os.path.abspath(checkpoint),
        "source_sha256": file_sha256(checkpoint),
        "entries_assigned": assigned,
        "published": PUBLISHED_WEIGHTS[architecture],
        "imported_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }
    parent = os.path.dirname(output_dir)
    os.makedirs(parent, exist_ok=True)
    staging = tempfile.mkdtemp(dir=parent, prefix=f".{os.path.basename(output_dir)}.importing-")
    try:
        save_experiment(experiment, staging)
        manager = tf.train.CheckpointManager(tf.train.Checkpoint(model=model), staging,
                                             max_to_keep=1)
        manager.save(checkpoint_number=0)
        with open(os.path.join(staging, IMPORT_FILE), "w") as f:
            json.dump(provenance, f, indent=2)
        if os.path.exists(output_dir):
            shutil.rmtree(output_dir)
        os.replace(staging, output_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    log(f"wrote {output_dir} ({task}, output stride {config.output_stride})")
    return provenance
