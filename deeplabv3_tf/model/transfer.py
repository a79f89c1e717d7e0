"""Moving weights between models by layer name, and which sources a model may take.

`transfer_weights` copies every layer whose name and shapes match (the
`logits` layers may differ: another number of classes), except those
`not_carried` names (the logits of a model with another decoder read other
features); `check_compatible` refuses a source whose backbone weights mean
something else. Runs use both to
start from other runs (`runs.initialize_from_run`); folding and the
inference graphs use `flat_layers` and `transfer_weights` too.
"""

from __future__ import annotations

from typing import Callable

import keras

from deeplabv3_tf.model.backbones import get_backbone
from deeplabv3_tf.model.config import ModelConfig
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
                     log: Callable[[str], None] = print,
                     leave_out: tuple[str, ...] = ()) -> int:
    """Copies weights of layers with the same name and shapes.

    Args:
      source, target: Models whose (nested) layers share names.
      skip_mismatched: Layers that may differ in shape (skipped with a message).
      log: Where messages go.
      leave_out: Layers not copied whatever their shapes (with a message).

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
        if name.split("/")[-1] in leave_out:
            log(f"init: leaving layer {name!r} as initialised (it reads other features here)")
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


def not_carried(source: ModelConfig, target: ModelConfig) -> tuple[str, ...]:
    """Layers of the same name and shapes whose weights would be misread in
    `target`: the logits, when the two decoders differ (a DeepLabv3 run's
    logits read the encoder at the output stride, a DeepLabv3+'s the decoder)."""
    return (LOGITS_LAYER,) if source.decoder != target.decoder else ()


# Config fields that decide what backbone weights mean: weights of a run with
# other values have the same shapes but would be read wrongly (or, for the
# backbone and its size, not at all). Each backbone adds its own
# (`Backbone.weight_fields`), compared only between runs of that backbone.
WEIGHT_SEMANTICS = ("backbone",)


def check_compatible(source: ModelConfig, target: ModelConfig, source_name: str) -> None:
    """Raises ValueError naming the fields where `target` would misread `source`'s weights."""
    fields = WEIGHT_SEMANTICS
    if source.backbone == target.backbone:
        fields += get_backbone(source.backbone).weight_fields
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
