"""The model demo: build DeepLabv3, report its size and cost, segment a generated image."""

from __future__ import annotations

import dataclasses
import json
import os
import time
from typing import Callable

import keras
import numpy as np
import tensorflow as tf
from PIL import Image

from deeplabv3_tf.configs.recipes import get_recipe
from deeplabv3_tf.model.config import ModelConfig
from deeplabv3_tf.model.deeplabv3 import build_deeplabv3
from deeplabv3_tf.model.cost import count_macs, count_params
from deeplabv3_tf.data.synthetic import draw_scene
from deeplabv3_tf.data.visualize import colorize, overlay


def run_model_demo(output_dir: str, config: ModelConfig = ModelConfig(),
                   image_size: tuple[int, int] = (513, 513), seed: int = 0,
                   experiment: str | None = None,
                   log: Callable[[str], None] = print) -> dict:
    """Builds the model, prints its summary and cost, and segments one image.

    The weights are freshly initialised, so the mask shows that the graph runs
    end to end at any size, not what a trained model sees.

    Args:
      output_dir: Where image.jpg, mask.png, overlay.png and summary.json go.
      config: Model to build (DeepLabv3-R101 at output stride 16 by default).
      image_size: (height, width) of the generated image and of the MAC count.
      seed: Seed of the generated image and of the weights.
      experiment: A recipe name: its model instead of `config` (inference
        graph: without an auxiliary head).
      log: Where progress lines go.

    Returns:
      The summary dict also written to summary.json.
    """
    if experiment:
        config = dataclasses.replace(get_recipe(experiment).model, aux_head=False)
    os.makedirs(output_dir, exist_ok=True)
    keras.utils.set_random_seed(seed)
    model = build_deeplabv3(config)
    model.summary(print_fn=log, line_length=120)
    height, width = image_size
    macs = count_macs(build_deeplabv3(config, input_shape=(height, width, 3)))

    image, _ = draw_scene(np.random.default_rng(seed), height, width,
                          num_classes=config.num_classes)
    predict = tf.function(
        lambda x: tf.argmax(model(x, training=False), axis=-1, output_type=tf.int32),
        input_signature=[tf.TensorSpec([None, None, None, 3], tf.float32)])
    batch = tf.constant(image[None].astype(np.float32))
    predict(batch)  # Trace once; the timings below are steady-state.
    times = []
    for _ in range(3):
        start = time.perf_counter()
        mask = predict(batch).numpy()[0]
        times.append(time.perf_counter() - start)

    Image.fromarray(image).save(os.path.join(output_dir, "image.jpg"), quality=95)
    Image.fromarray(colorize(mask.astype(np.uint8))).save(os.path.join(output_dir, "mask.png"))
    Image.fromarray(overlay(image, mask)).save(os.path.join(output_dir, "overlay.png"))
    summary = {
        "config": config.to_dict(),
        "trainable_params": count_params(model),
        "total_params": count_params(model, trainable_only=False),
        "gmacs": round(macs / 1e9, 2),
        "image_size": [height, width],
        "latency_ms_median": round(1000 * float(np.median(times)), 1),
        "mask_classes": sorted(int(c) for c in np.unique(mask)),
        "output_dir": output_dir,
    }
    with open(os.path.join(output_dir, "summary.json"), "w") as f:
        json.dump(summary, f, indent=2)
    log(f"DeepLabv3-{config.backbone_name}, output stride {config.output_stride}, "
        f"{config.num_classes} classes")
    log(f"  trainable params: {summary['trainable_params']:,} "
        f"(total {summary['total_params']:,})")
    log(f"  GMACs at {height}x{width}: {summary['gmacs']}")
    log(f"  CPU latency, batch 1, median of 3: {summary['latency_ms_median']} ms")
    log(f"  segmented a generated {height}x{width} image (untrained weights): "
        f"mask shape {mask.shape}, {len(summary['mask_classes'])} classes present")
    log(f"  wrote image.jpg, mask.png, overlay.png, summary.json to {output_dir}")
    return summary
