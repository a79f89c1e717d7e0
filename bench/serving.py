"""Prints the exported SavedModel's latency per signature next to the in-memory model's.

  python bench/serving.py [--model_dir RUN] [--size 513] [--runs 5]

Without --model_dir, a DeepLabv3-R101 (OS16, random weights) run directory is
written to a temporary directory first, so the figures are those of the real
architecture. Latency: batch 1, median of --runs calls after one warm-up call.
"""

import argparse
import io
import os
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from PIL import Image  # noqa: E402

from deeplabv3_tf.experiments import override, save_experiment, voc_r101_os16  # noqa: E402
from deeplabv3_tf.export import ExportOptions, export_saved_model, load_trained_model  # noqa: E402
from deeplabv3_tf.inference import predict_labels  # noqa: E402
from deeplabv3_tf.model import build_deeplabv3  # noqa: E402


def median_ms(fn, runs):
    fn()
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return 1000 * float(np.median(times))


def random_run(directory):
    experiment = override(voc_r101_os16(), ["train.init=''"])
    model = build_deeplabv3(experiment.model)
    save_experiment(experiment, directory)
    tf.train.Checkpoint(model=model).save(os.path.join(directory, "ckpt"))
    return directory


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model_dir", default=None)
    parser.add_argument("--size", type=int, default=513)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--scales", default="0.5,0.75,1.0,1.25,1.5,1.75")
    args = parser.parse_args()
    scales = tuple(float(s) for s in args.scales.split(","))
    with tempfile.TemporaryDirectory() as tmp:
        run_dir = args.model_dir or random_run(os.path.join(tmp, "run"))
        path = export_saved_model(run_dir, os.path.join(tmp, "export"),
                                  ExportOptions(scales=scales), log=lambda _: None)
        loaded = tf.saved_model.load(path)
        model, experiment, _ = load_trained_model(run_dir)
        image = np.random.default_rng(0).integers(0, 255, (1, args.size, args.size, 3), np.uint8)
        buffer = io.BytesIO()
        Image.fromarray(image[0]).save(buffer, format="JPEG")
        jpeg = tf.constant([buffer.getvalue()])
        example = tf.constant([tf.train.Example(features=tf.train.Features(feature={
            "image/encoded": tf.train.Feature(bytes_list=tf.train.BytesList(
                value=[buffer.getvalue()]))})).SerializeToString()])
        pixels = tf.constant(image)
        in_memory_single = tf.function(lambda x: predict_labels(model, tf.cast(x, tf.float32)))
        in_memory_multi = tf.function(
            lambda x: predict_labels(model, tf.cast(x, tf.float32), scales, True))
        signatures = loaded.signatures
        rows = [
            ("serving_default", lambda: signatures["serving_default"](images=pixels),
             lambda: in_memory_single(pixels)),
            ("multiscale_flip", lambda: signatures["multiscale_flip"](images=pixels),
             lambda: in_memory_multi(pixels)),
            ("encoded_image (JPEG)", lambda: signatures["encoded_image"](images=jpeg), None),
            ("tf_example", lambda: signatures["tf_example"](examples=example), None),
        ]
        print(f"{experiment.name}: R{experiment.model.depth} OS{experiment.model.output_stride}, "
              f"{args.size}x{args.size}, batch 1, {os.cpu_count()} CPU cores, "
              f"median of {args.runs}; multi-scale {list(scales)} + flip")
        print(f"{'signature':<24}{'SavedModel ms':>15}{'in-memory ms':>15}")
        for name, exported_fn, memory_fn in rows:
            exported_ms = median_ms(exported_fn, args.runs)
            memory_ms = f"{median_ms(memory_fn, args.runs):15.0f}" if memory_fn else f"{'-':>15}"
            print(f"{name:<24}{exported_ms:15.0f}{memory_ms}", flush=True)


if __name__ == "__main__":
    main()
