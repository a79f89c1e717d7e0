"""The optimizer of training: SGD with momentum on the paper's poly schedule.

lr = base * (1 - step / steps) ** power (paper §4.1, power 0.9), after an
optional linear warm-up; momentum 0.9 and weight decay 1e-4 are the reference
implementation's (the decay is added to the gradients by the training step,
`train_step.make_train_step`). The momentum update is one fused kernel (`SGD`).
"""

from __future__ import annotations

import keras
import tensorflow as tf


def poly_schedule(train_config) -> keras.optimizers.schedules.LearningRateSchedule:
    """lr = base * (1 - step / steps) ** power (paper §4.1), after optional warm-up."""
    poly = keras.optimizers.schedules.PolynomialDecay(
        train_config.learning_rate, decay_steps=max(train_config.steps, 1),
        end_learning_rate=0.0, power=train_config.lr_power)
    if not train_config.warmup_steps:
        return poly
    return _Warmup(poly, train_config.learning_rate, train_config.warmup_steps)


class _Warmup(keras.optimizers.schedules.LearningRateSchedule):
    def __init__(self, after, peak, steps):
        self.after, self.peak, self.steps = after, peak, steps

    def __call__(self, step):
        step = tf.cast(step, tf.float32)
        return tf.where(step < self.steps, self.peak * (step + 1) / self.steps,
                        self.after(step))

    def get_config(self):
        return {"peak": self.peak, "steps": self.steps}


class SGD(keras.optimizers.SGD):
    """`keras.optimizers.SGD` with momentum whose update is one fused in-place kernel.

    Same update as Keras (m = momentum * m - lr * g; w += m; same variables
    and checkpoints), computed by `ResourceApplyKerasMomentum` in one pass,
    where Keras runs five ops, three of them allocating a tensor of the variable's size.
    Keras' first op, `momentum * m`, depends on the momentum alone: in a
    `tf.function` graph the executor ran it for every variable at the start of
    the step and held the copies through the forward and backward passes, one
    more copy of all weights at the step's peak (ResNet-101: ~170 MiB).
    Nesterov momentum, no momentum, sparse gradients and a momentum placed on
    another device than its variable take Keras' update.
    """

    def update_step(self, gradient, variable, learning_rate):
        accumulator = None
        if self.momentum and not self.nesterov and not isinstance(gradient, tf.IndexedSlices):
            momentum = self.momentums[self._get_variable_index(variable)]
            target = variable.value if isinstance(variable, keras.Variable) else variable
            # Under a distribution strategy `variable` is this device's copy; the
            # momentum is the distributed variable: take its copy on the same device.
            copies = [local for local in tf.distribute.get_strategy().experimental_local_results(
                momentum.value) if local.device == target.device]
            accumulator = copies[0] if len(copies) == 1 else None
        if accumulator is None:
            with tf.control_dependencies([gradient]):
                return super().update_step(gradient, variable, learning_rate)
        dtype = target.dtype
        tf.raw_ops.ResourceApplyKerasMomentum(
            var=target.handle, accum=accumulator.handle,
            lr=tf.cast(learning_rate, dtype), grad=tf.cast(gradient, dtype),
            momentum=tf.cast(self.momentum, dtype), use_locking=False, use_nesterov=False)


def make_optimizer(train_config) -> keras.optimizers.Optimizer:
    """SGD with momentum on the poly schedule; dynamic loss scaling under float16."""
    optimizer = SGD(learning_rate=poly_schedule(train_config), momentum=train_config.momentum)
    if train_config.precision == "mixed_float16":
        optimizer = keras.optimizers.LossScaleOptimizer(optimizer)
    return optimizer
