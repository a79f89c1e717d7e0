"""The training optimizer (fused momentum kernel) updates as keras.optimizers.SGD does."""

import subprocess
import sys
import textwrap

import pytest

from tests.helpers import ROOT

# Three steps of a small conv net, ours against Keras', from the same weights;
# prints the largest difference of weights and momenta, and how far they moved.
COMPARE = textwrap.dedent("""
    import sys
    import numpy as np
    import tensorflow as tf
    replicas = int(sys.argv[1])
    if replicas > 1:
        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(
            cpu, [tf.config.LogicalDeviceConfiguration()] * replicas)
    import keras
    from deeplabv3_tf.training.optimizer import SGD

    def run(optimizer_class, **options):
        devices = [f"/cpu:{i}" for i in range(replicas)]
        strategy = tf.distribute.MirroredStrategy(devices) if replicas > 1 else tf.distribute.get_strategy()
        keras.utils.set_random_seed(3)
        with strategy.scope():
            model = keras.Sequential([keras.Input((9, 9, 3)), keras.layers.Conv2D(8, 3),
                                      keras.layers.BatchNormalization(), keras.layers.ReLU(),
                                      keras.layers.GlobalAveragePooling2D(), keras.layers.Dense(4)])
            schedule = keras.optimizers.schedules.PolynomialDecay(0.05, 10, 0.0, power=0.9)
            optimizer = optimizer_class(learning_rate=schedule, **options)
            optimizer.build(model.trainable_variables)
        initial = [v.numpy() for v in model.trainable_variables]

        @tf.function
        def step(x, y):
            def replica(x, y):
                with tf.GradientTape() as tape:
                    loss = tf.reduce_sum((model(x, training=True) - y) ** 2)
                grads = tape.gradient(loss, model.trainable_variables)
                optimizer.apply_gradients(zip(grads, model.trainable_variables))
            strategy.run(replica, (x, y))

        rng = np.random.default_rng(0)
        for _ in range(3):
            x = tf.constant(rng.normal(size=(2 * replicas, 9, 9, 3)), tf.float32)
            y = tf.constant(rng.normal(size=(2 * replicas, 4)), tf.float32)
            step(x, y)
        fused = sum(op.type == "ResourceApplyKerasMomentum"
                    for op in step.get_concrete_function(x, y).graph.get_operations())
        local = lambda v: [a.numpy() for a in strategy.experimental_local_results(v.value)]
        state = [a for v in model.trainable_variables + optimizer.variables for a in local(v)]
        weights = [local(v)[0] for v in model.trainable_variables]
        return initial, weights, state, fused

    for options in ({"momentum": 0.9}, {"momentum": 0.9, "nesterov": True}, {}):
        initial, weights, state, fused = run(SGD, **options)
        _, _, keras_state, _ = run(keras.optimizers.SGD, **options)
        moved = max(float(np.abs(a - b).max()) for a, b in zip(initial, weights))
        difference = max(float(np.abs(a - b).max()) for a, b in zip(state, keras_state))
        scale = max(float(np.abs(a).max()) for a in keras_state)
        print("RESULT", ",".join(sorted(options)), fused, len(state), moved, difference, scale)
""")


@pytest.mark.parametrize("replicas", [1, 2])
def test_fused_sgd_updates_as_keras_sgd(replicas):
    result = subprocess.run([sys.executable, "-c", COMPARE, str(replicas)], cwd=ROOT,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    lines = [line.split(" ", 1)[1] for line in result.stdout.splitlines()
             if line.startswith("RESULT")]
    assert len(lines) == 3
    for line in lines:
        options, fused, count, moved, difference, scale = line.split(" ")
        # The fused kernel updates each of the 6 variables on each replica
        # (Nesterov and plain SGD take Keras' update).
        assert int(fused) == (6 * replicas if options == "momentum" else 0), options
        # Every weight and momentum (each replica's copy) compared. The two
        # optimizers differ at most by where their few elementwise float32 ops
        # round (u = 2**-24 of the values) in each of the three steps, and what
        # that does to the next steps' gradients in a net this small: 1e-5 of
        # the largest value leaves 160 such roundings. A wrong update (momentum,
        # Nesterov, learning rate) is off by about the step, > 1e-2.
        assert int(count) >= (12 if "momentum" in options else 6) * replicas
        assert float(moved) > 1e-2, options
        assert float(difference) <= 1e-5 * float(scale), options
