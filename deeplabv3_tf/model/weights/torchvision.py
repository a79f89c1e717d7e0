"""torchvision's DeepLabv3, ImageNet ResNet and MobileNetV3 weights, imported into this model.

torchvision publishes trained DeepLabv3s (COCO images, the 21 PASCAL VOC
classes: ResNet-50/101 and MobileNetV3-Large) and their ImageNet backbones. `import_torchvision` reads such a downloaded
`.pth` state_dict (`read_state_dict`); `import_config` gives the same network in this package's model code
(`config.torchvision_deeplabv3` / `config.torchvision_backbone`: stride on the
3x3 conv, torchvision's dilation schedule, its head and input normalisation),
maps every entry onto it (`load_state_dict`); `apps/import_weights.py` writes
the result as a run directory that `tools/export.py`, `tools/evaluate.py` and
`train.init` read like any training run.

Key mapping (torchvision module -> Keras layer path). The backbone's modules
are mapped by its own module (`Backbone.torchvision`: resnet.py, mobilenet_v3.py),
under a prefix: "backbone." in DeepLabv3 checkpoints, the backbone's
`classifier_prefix` in bare classifiers. The head, here:

  classifier.0.convs.0.{0,1}          aspp_0_conv, aspp_0_bn
  classifier.0.convs.{1,2,3}.{0,1}    aspp_{1,2,3}_conv, aspp_{1,2,3}_bn
  classifier.0.convs.4.{1,2}          aspp_pool_conv, aspp_pool_bn
  classifier.0.project.{0,1}          aspp_project_conv, aspp_project_bn
  classifier.{1,2}                    head_conv, head_bn
  classifier.4                        logits
  aux_classifier.{0,1}, .4            aux_conv, aux_bn, aux_logits
  (bare classifiers)                  the backbone's `classifier_modules`

Tensors: conv weights OIHW -> HWIO, depthwise [C, 1, k, k] -> [k, k, C, 1], linear weights [out, in] -> [in, out],
BN weight/bias/running_mean/running_var -> gamma/beta/moving_mean/
moving_variance; `num_batches_tracked` carries no weight and is dropped. Every
other entry is used exactly once: an entry nothing maps to, or a layer no
entry fills, is an error naming it.

torch is needed only here, imported when a file is read (requirements-torch.txt).
It is imported inside `read_state_dict` because it is optional, not to avoid a cycle.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Callable

import keras
import numpy as np
import tensorflow as tf

from deeplabv3_tf.model.backbones import BACKBONE_NAME, BACKBONES, Backbone, get_backbone
from deeplabv3_tf.model.config import ModelConfig, torchvision_backbone, torchvision_deeplabv3
from deeplabv3_tf.model.transfer import flat_layers

SEGMENTATION, CLASSIFICATION = "segmentation", "classification"
DEEPLABV3_PREFIX = "deeplabv3_"


def _architectures() -> dict[str, tuple[str, Backbone, dict]]:
    """--arch -> (task, backbone, the ModelConfig fields the architecture fixes)."""
    found = {}
    for backbone in BACKBONES.values():
        layout = backbone.torchvision
        for arch, fields in layout.architectures.items():
            found[arch] = (CLASSIFICATION, backbone, fields)
            if DEEPLABV3_PREFIX + arch in layout.published:
                found[DEEPLABV3_PREFIX + arch] = (SEGMENTATION, backbone, fields)
    return found


# --arch -> (task, backbone record, config fields).
ARCHITECTURES = _architectures()
# The files torchvision publishes for these architectures and what torchvision
# reports for them (torchvision.models weight enums); recorded in import.json.
PUBLISHED_WEIGHTS = {arch: backbone.torchvision.published[arch]
                     for arch, (_, backbone, _) in ARCHITECTURES.items()}

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
    task, backbone, fields = ARCHITECTURES[architecture]
    segmentation = task == SEGMENTATION
    layout = backbone.torchvision
    prefix = _prefix(segmentation, backbone)
    head = "classifier.4" if segmentation else layout.classifier_modules["classifier"]
    classifier_key = f"{head}.weight"
    if classifier_key not in state_dict:
        classifiers = (f"a {name} classifier" for name, other in BACKBONES.items()
                       if f"{other.torchvision.classifier_modules['classifier']}.weight"
                       in state_dict)
        looks_like = ("a DeepLabv3 or FCN model" if any(k.startswith("backbone.") for k in state_dict)
                      else next(classifiers, "neither"))
        raise ValueError(f"{source} has no {classifier_key!r}: it is not a {architecture} "
                         f"state_dict (it looks like {looks_like}); check --arch.")
    layout.check_state_dict(state_dict, prefix, fields, architecture, source)
    num_classes = int(state_dict[classifier_key].shape[0])
    base = dict(num_classes=num_classes, backbone=backbone.name, **fields)
    if segmentation:
        # torchvision's DeepLabv3-ResNets run at output stride 8, its MobileNetV3 at 16.
        config = torchvision_deeplabv3(ModelConfig(
            **base, output_stride=output_stride or layout.deeplabv3_output_stride,
            aux_head=any(k.startswith("aux_classifier.") for k in state_dict)))
    else:
        config = torchvision_backbone(ModelConfig(
            **base, output_stride=output_stride or 32, dilate_first_unit=False))
        config = dataclasses.replace(config, multi_grid=(1,) * len(config.multi_grid))
    return task, config


def _prefix(segmentation: bool, backbone: Backbone) -> str:
    """The state_dict prefix of the backbone's modules."""
    return "backbone." if segmentation else backbone.torchvision.classifier_prefix


def torch_module(layer_path: str, segmentation: bool,
                 config: ModelConfig | None = None) -> str:
    """The torchvision module name of a Keras layer path (see the module docstring);
    `config` tells the backbone (default: a ResNet's)."""
    config = config if config is not None else ModelConfig()
    backbone = get_backbone(config.backbone)
    module = None
    if layer_path.startswith(f"{BACKBONE_NAME}/"):
        module = backbone.torchvision.module_of(layer_path[len(BACKBONE_NAME) + 1:], config)
        if module is not None:
            module = _prefix(segmentation, backbone) + module
    elif segmentation:
        module = _HEAD_MODULES.get(layer_path)
    else:
        module = backbone.torchvision.classifier_modules.get(layer_path)
    if module is None:
        raise ValueError(f"Layer {layer_path!r} has no torchvision counterpart.")
    return module


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
