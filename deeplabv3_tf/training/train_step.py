"""One distributed training step: forward, loss, backward, weight decay, update.

What a step computes does not depend on the number of replicas: each replica's
loss sum is divided by the normaliser of the whole global batch (non-ignored
pixels, or examples) and the replicas' gradients are summed (`make_train_step`).
The experiment's task (`tasks/`) gives the loss, its normaliser and what a
step measures.
"""

from __future__ import annotations

import keras
import tensorflow as tf

from deeplabv3_tf.configs.experiment import ExperimentConfig
from deeplabv3_tf.tasks import get_task


def weight_decay_mask(variables):
    """Per variable, whether weight decay applies to it: the kernels of convs and
    dense layers (not biases, not BatchNorm's scale and offset)."""
    return [v.path.endswith("kernel") for v in variables]


def make_train_step(model: keras.Model, optimizer: keras.optimizers.Optimizer,
                    strategy: tf.distribute.Strategy, experiment: ExperimentConfig):
    """The distributed training step: (batch, stop) -> (global loss, confusion matrix, stop).

    `stop` (float32 scalar, 1 when this process received SIGTERM) is summed
    over every replica of every worker, so all workers learn at the same step
    that one of them is being preempted, and all save and stop together.

    The normaliser (non-ignored pixels, or examples) depends on the labels
    only: it is summed over all replicas before the forward pass, and each
    replica takes the gradient of its loss sum divided by it. `apply_gradients`
    sums the replicas' gradients: the update is the gradient of the
    global-batch mean, for any number of replicas.
    """
    tc = experiment.train
    replicas = strategy.num_replicas_in_sync
    task = get_task(experiment.task)
    decayed = weight_decay_mask(model.trainable_variables)

    def forward_backward(batch, total, step):
        with tf.GradientTape() as tape:
            outputs = model(batch["image"], training=True)
            loss_sum = task.loss_sum(batch, outputs, experiment, step)
            # Divided before the backward pass: one division, not one per gradient.
            loss = loss_sum / total
            scaled = optimizer.scale_loss(loss)
        grads = tape.gradient(scaled, model.trainable_variables)
        return grads, loss, task.step_predictions(outputs)

    if tc.jit_compile:
        forward_backward = tf.function(forward_backward, jit_compile=True)

    def with_weight_decay(gradient, variable, decays, decay):
        # Weight decay (d/dw of wd/2 |w|^2) is shared out over the replicas so
        # that the cross-replica sum adds it once. The control dependency keeps
        # the executor from computing wd * w for every kernel at the start of
        # the step (it depends on the weights only) and holding those copies
        # through the forward and backward passes.
        if not decays:
            return gradient
        with tf.control_dependencies([gradient]):
            return gradient + tf.cast(decay, gradient.dtype) * tf.cast(variable, gradient.dtype)

    def replica_step(batch, stop):
        # One collective carries both the loss normaliser and the stop flag.
        # The step this update makes (a loss schedule's clock, e.g. hard-pixel mining).
        step = tf.identity(optimizer.iterations)
        count = task.loss_normalizer(batch, experiment, step)
        context = tf.distribute.get_replica_context()
        reduced = context.all_reduce(tf.distribute.ReduceOp.SUM, tf.stack([count, stop]))
        total = tf.maximum(reduced[0], 1.0)
        grads, loss, predictions = forward_backward(batch, total, step)
        # Outside the XLA-compiled part: the confusion matrix has dynamic shapes.
        matrix = task.step_confusion(batch, predictions, experiment)
        decay = tc.weight_decay * optimizer.scale_loss(tf.constant(1.0)) / replicas
        grads = [with_weight_decay(g, v, d, decay)
                 for g, v, d in zip(grads, model.trainable_variables, decayed)]
        optimizer.apply_gradients(zip(grads, model.trainable_variables))
        return loss, matrix, reduced[1]

    @tf.function
    def distributed_step(batch, stop):
        losses, matrices, stops = strategy.run(replica_step, args=(batch, stop))
        return (strategy.reduce(tf.distribute.ReduceOp.SUM, losses, axis=None),
                strategy.reduce(tf.distribute.ReduceOp.SUM, matrices, axis=None),
                strategy.reduce(tf.distribute.ReduceOp.MEAN, stops, axis=None))

    def train_step(batch, stop: bool = False):
        return distributed_step(batch, tf.constant(1.0 if stop else 0.0))

    return train_step
