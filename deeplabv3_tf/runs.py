"""A training run on disk as a model for inference.

A run directory holds experiment.json and the checkpoints (`train.train`
writes both). `load_trained_model` rebuilds the model from the experiment, so
that architecture and preprocessing cannot drift from training, and restores
its weights; the export, the evaluation, prediction and the LiteRT conversion
all load a run this way.
"""

from __future__ import annotations

import dataclasses

from deeplabv3_tf.experiments import load_experiment
from deeplabv3_tf.model import build_deeplabv3
from deeplabv3_tf.model.transfer import latest_checkpoint, restore_model, transfer_weights


def load_trained_model(run_dir: str, output_stride: int | None = None,
                       checkpoint: str | None = None):
    """Rebuilds a run's model from its experiment.json and restores its weights.

    Args:
      run_dir: Training run directory (experiment.json + checkpoints).
      output_stride: Inference output stride (None: the training one).
      checkpoint: A checkpoint prefix (default: the run's latest).

    Returns:
      (model, experiment as trained, checkpoint prefix).
    """
    experiment = load_experiment(run_dir)
    if experiment.task != "segmentation":
        raise ValueError(f"{run_dir} is a {experiment.task} run, not a segmentation run.")
    trained_config = dataclasses.replace(experiment.model, sync_bn=False)
    # Restore into the graph as trained: tf.train.Checkpoint matches Keras layers
    # by position, and another output stride adds or removes padding layers.
    model = build_deeplabv3(trained_config)
    prefix = checkpoint or latest_checkpoint(run_dir)
    restore_model(model, prefix)
    other_stride = output_stride and output_stride != trained_config.output_stride
    if other_stride or trained_config.aux_head:
        # The inference graph: at the requested stride, without the auxiliary head.
        inference = build_deeplabv3(
            dataclasses.replace(trained_config, output_stride=output_stride or
                                trained_config.output_stride), include_aux=False)
        transfer_weights(model, inference, skip_mismatched=(), log=lambda _: None)
        model = inference
    return model, experiment, prefix
