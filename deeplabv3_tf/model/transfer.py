"""Initialising a model from another run's checkpoint, layer by layer.

Sources: a DeepLabv3 run (any number of classes: the `logits` layer is skipped
when its shape differs, with a message), or a classification run (its
`backbone` initialises the target's backbone). The source is rebuilt from the
experiment.json saved beside its checkpoints and restored with
`tf.train.Checkpoint`, then weights are copied by layer name.
"""

from __future__ import annotations

import os
from typing import Callable

import keras
import tensorflow as tf

from deeplabv3_tf.config import MOBILENET_V3_LARGE, RESNET, ModelConfig
from deeplabv3_tf.model.backbone import BACKBONE_NAME
from deeplabv3_tf.model.deeplabv3 import AUX_LOGITS_LAYER, LOGITS_LAYER


def flat_layers(model: keras.Model, prefix: str = "") -> dict[str, keras.layers.Layer]:
    """Layers that hold weights, by path ("backbone/conv1_conv", "logits"), in build order."""
    layers = {}
    for layer in model.layers:
        if isinstance(layer, keras.Model):
            layers.update(flat_layers(layer, f"{prefix}{layer.name}/"))
        elif layer.weights:
            layers[f"{prefix}{layer.name}"] = layer
    return layers


def transfer_weights(source: keras.Model, target: keras.Model,
                     skip_mismatched: tuple[str, ...] = (LOGITS_LAYER, AUX_LOGITS_LAYER),
                     log: Callable[[str], None] = print) -> int:
    """Copies weights of layers with the same name and shapes.

    Args:
      source, target: Models whose (nested) layers share names.
      skip_mismatched: Layers that may differ in shape (skipped with a message).
      log: Where messages go.

    Returns:
      Number of layers copied.

    Raises:
      ValueError: a shape mismatch in a layer not in `skip_mismatched`.
    """
    source_layers = flat_layers(source)
    copied = 0
    for name, layer in flat_layers(target).items():
        other = source_layers.get(name)
        if other is None:
            continue
        shapes = [tuple(w.shape) for w in layer.weights]
        other_shapes = [tuple(w.shape) for w in other.weights]
        if shapes != other_shapes:
            if name.split("/")[-1] in skip_mismatched:
                log(f"init: skipping layer {name!r}: checkpoint shapes {other_shapes}, "
                    f"model shapes {shapes} (different number of classes)")
                continue
            raise ValueError(f"Layer {name!r}: checkpoint shapes {other_shapes} do not fit "
                             f"the model's {shapes}.")
        layer.set_weights(other.get_weights())
        copied += 1
    return copied


def latest_checkpoint(path: str) -> str:
    """A checkpoint prefix from a run directory or a prefix."""
    if os.path.isdir(path):
        prefix = tf.train.latest_checkpoint(path)
        if prefix is None:
            raise FileNotFoundError(f"No checkpoint in {path}.")
        return prefix
    if not tf.io.gfile.glob(path + ".index"):
        raise FileNotFoundError(f"No checkpoint at {path} (expected {path}.index).")
    return path


def restore_model(model: keras.Model, prefix: str) -> None:
    """Restores a model's variables from a training checkpoint (optimizer state ignored)."""
    status = tf.train.Checkpoint(model=model).restore(prefix)
    # Every model variable must come from the checkpoint; the optimizer may be left.
    status.assert_existing_objects_matched().expect_partial()


# Config fields that decide what backbone weights mean: weights of a run with
# other values have the same shapes but would be read wrongly (or, for the
# backbone and its size, not at all). The ResNet's fields only between ResNets.
WEIGHT_SEMANTICS = ("backbone",)
BACKBONE_WEIGHT_SEMANTICS = {RESNET: ("depth", "base_width", "stem", "stride_in_1x1"),
                             MOBILENET_V3_LARGE: ("width_multiplier",)}


def check_compatible(source: ModelConfig, target: ModelConfig, source_name: str) -> None:
    """Raises ValueError naming the fields where `target` would misread `source`'s weights."""
    fields = WEIGHT_SEMANTICS
    if source.backbone == target.backbone:
        fields += BACKBONE_WEIGHT_SEMANTICS[source.backbone]
    fields += ("normalization",)
    differ = [f for f in fields if getattr(source, f) != getattr(target, f)]
    if differ:
        fix = " ".join(f"model.{f}={getattr(source, f)!r}" for f in differ)
        raise ValueError(
            f"{source_name} was trained with "
            + ", ".join(f"{f}={getattr(source, f)!r}" for f in differ)
            + "; the model has " + ", ".join(f"{f}={getattr(target, f)!r}" for f in differ)
            + f". Its weights would be misread: set {fix} (--set), or use a recipe "
            "made for these weights.")


def initialize_from_run(target: keras.Model, path: str,
                        log: Callable[[str], None] = print,
                        target_config: ModelConfig | None = None) -> int:
    """Initialises `target` from the latest checkpoint of a DeepLab or classification run.

    Args:
      target: The model to fill.
      path: A run directory or checkpoint prefix.
      log: Where messages go.
      target_config: `target`'s config; when given, a source whose backbone
        weights mean something else (`WEIGHT_SEMANTICS`) is refused.

    Returns:
      Number of layers copied.
    """
    # Imported here: experiments imports the model package.
    from deeplabv3_tf.experiments import load_experiment
    from deeplabv3_tf.model import build_deeplabv3
    from deeplabv3_tf.model.classifier import build_classifier

    prefix = latest_checkpoint(path)
    experiment = load_experiment(os.path.dirname(prefix))
    if target_config is not None:
        check_compatible(experiment.model, target_config, f"init {path}")
    builder = build_classifier if experiment.task == "classification" else build_deeplabv3
    source = builder(experiment.model)
    restore_model(source, prefix)
    if experiment.task == "classification":
        copied = transfer_weights(source.get_layer(BACKBONE_NAME),
                                  target.get_layer(BACKBONE_NAME), log=log)
        log(f"init: backbone from classification run {experiment.name} ({prefix}), "
            f"{copied} layers")
    else:
        copied = transfer_weights(source, target, log=log)
        log(f"init: {copied} layers from {experiment.name} ({prefix})")
    if copied == 0:
        raise ValueError(f"No layer of {prefix} fits the model.")
    return copied
