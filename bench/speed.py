"""Prints DeepLabv3-R101 speed on this machine as ratios to its own matmul peak.

  python bench/speed.py [--runs 5] [--sections peak,inference,training,serving,pipeline]

The first line names the CPU, the features that decide its kernels (AMX,
AVX512_BF16, AVX512_FP16) and the oneDNN implementations bfloat16 convolutions and
matmuls get here, i.e. whether they run on AMX (`common.describe_cpu`).

One run prints:
  peak       tf.matmul 4096x4096 GFLOP/s in float32 and bfloat16 (each section
             measures it again in its own process). Inference and training rows
             alternate their calls with the matmul's, since this machine's speed
             drifts within minutes: a row's share of the peak is the median over
             its calls of its speed relative to the matmul call beside it, and its
             "peak" the matmul GFLOP/s that gives that share
             (`common.median_with_peak`).
  inference  R101 513x513 batch 1 at output stride 16 and 8, and OS8 + 6 scales
             + flip: the trained graph (float32), the BN-folded graph in float32
             and in bfloat16.
  training   R101 OS16 321x321 batch 2, SGD momentum + weight decay, in float32
             and mixed_bfloat16, each in its own process: s/step, GFLOP/s (3x the
             forward FLOPs), peak resident memory; and, with TensorFlow's BFC
             allocator on the CPU, the memory its tensors hold and peak at.
  serving    every signature of the exported SavedModel (float32 and
             --precision bfloat16) next to the in-memory graph it exports (BN
             folded, same precision), also with requests of two sizes alternating;
             ratio = the median of export / in memory over alternated calls.
  pipeline   record building with 1 and 2 workers; the 513x513 training input
             pipeline pinned to 1 core and to 2 cores (examples/s per core).

FLOPs are 2 x MACs. "all taps" counts every kernel tap, as the paper's and
torchvision's figures do; "inside" leaves out atrous taps that fall entirely
into the zero padding, which oneDNN skips: that is the work actually done, so
its ratio is the honest one (`deeplabv3_tf.model.cost.count_macs`).
"""

import argparse
import io
import json
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import (describe_cpu, matmul_peak_gflops, median_pair,  # noqa: E402
                    median_with_peak, peak_rss_mib, r101_training_step, random_weights_run,
                    run_child, runnable)

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

SECTIONS = ("peak", "inference", "training", "serving", "pipeline")
SCALES = (0.5, 0.75, 1.0, 1.25, 1.5, 1.75)


def section_peak(args):
    f32 = matmul_peak_gflops(tf.float32, runs=args.runs)
    bf16 = matmul_peak_gflops(tf.bfloat16, runs=args.runs)
    print(f"tf.matmul 4096x4096: float32 {f32:.0f} GFLOP/s, bfloat16 {bf16:.0f} GFLOP/s "
          f"({os.cpu_count()} cores)")


def _macs(config, height, width, cache={}):
    from deeplabv3_tf.model import build_deeplabv3
    from deeplabv3_tf.model.cost import count_macs

    key = (config.output_stride, height, width)
    if key not in cache:
        model = build_deeplabv3(config, input_shape=(height, width, 3))
        cache[key] = count_macs(model), count_macs(model, inside_only=True)
    return cache[key]


def _row(name, seconds, macs, peak):
    every, inside = macs
    print(f"{name:<40}{seconds * 1000:>9.0f}{2 * every / seconds / 1e9:>9.0f}"
          f"{100 * 2 * every / seconds / 1e9 / peak:>8.0f}%"
          f"{100 * 2 * inside / seconds / 1e9 / peak:>8.0f}%{peak:>7.0f}", flush=True)


def section_inference(args):
    from deeplabv3_tf.model.config import ModelConfig
    from deeplabv3_tf.evaluation.inference import predict_probabilities
    from deeplabv3_tf.model import build_deeplabv3
    from deeplabv3_tf.model.fold import fold_batch_norm

    size = 513
    image = tf.random.uniform((1, size, size, 3), 0, 255, seed=0)
    print(f"R101, {size}x{size}, batch 1; each call beside a 4096x4096 matmul of its dtype; "
          "% = the median over the calls of its speed / the matmul's, peak = the matmul "
          "GFLOP/s that gives it")
    print(f"{'graph':<40}{'ms':>9}{'GFLOP/s':>9}{'% all':>9}{'% inside':>9}{'peak':>7}")
    for output_stride in (16, 8):
        config = ModelConfig(output_stride=output_stride)
        model = build_deeplabv3(config)
        macs = _macs(config, size, size)
        variants = [("trained graph float32", model, tf.float32),
                    ("BN folded float32", fold_batch_norm(model, config), tf.float32)]
        if "bfloat16" in runnable(("bfloat16",)):
            variants.append(("BN folded bfloat16", fold_batch_norm(model, config, "bfloat16"),
                             tf.bfloat16))
        for name, graph, dtype in variants:
            run = tf.function(lambda x, graph=graph: graph(x, training=False))
            seconds, peak = median_with_peak(lambda: run(image).numpy(), dtype, args.runs)
            _row(f"OS{output_stride} {name}", seconds, macs, peak)
        if output_stride == 8:
            sizes = [tuple(int(v) for v in np.maximum(np.round(np.array([size, size]) * s), 1))
                     for s in SCALES]
            total = [2 * sum(_macs(config, h, w)[i] for h, w in sizes) for i in (0, 1)]
            for name, graph, dtype in variants[1:]:
                run = tf.function(lambda x, graph=graph: predict_probabilities(
                    graph, x, SCALES, flip=True))
                seconds, peak = median_with_peak(lambda: run(image).numpy(), dtype,
                                                 max(1, args.runs // 3))
                _row(f"OS8 + 6 scales + flip, {name}", seconds, total, peak)


def training_child(precision, runs):
    """One training configuration in this process; prints a JSON line."""
    import keras

    baseline = peak_rss_mib()
    step, experiment, batch = r101_training_step([f"train.precision={precision!r}"])
    bfc = bool(os.environ.get("TF_CPU_ALLOCATOR_USE_BFC"))
    if bfc:  # TensorFlow's own tensors: held between steps, and the peak within steps.
        tf.config.experimental.reset_memory_stats("CPU:0")
        held = tf.config.experimental.get_memory_info("CPU:0")["current"]
    for _ in range(4):  # tracing, warm-up, and steps whose memory peak is the step's own
        float(step(batch)[0])
    result = {"rss": peak_rss_mib(), "import_rss": baseline}
    if bfc:
        result.update(tf_held=held, tf_peak=tf.config.experimental.get_memory_info("CPU:0")["peak"])
    # Timed after the memory is read: the matmul's operands would count at the peak.
    dtype = tf.bfloat16 if precision == "mixed_bfloat16" else tf.float32
    seconds, peak = median_with_peak(lambda: float(step(batch)[0]), dtype, runs)
    keras.config.set_dtype_policy("float32")
    every, inside = _macs(experiment.model, 321, 321)
    result.update(seconds=seconds, macs=every, inside=inside, peak=peak)
    print(json.dumps(result))


def section_training(args):
    print("R101 OS16 training step, 321x321, batch 2, SGD momentum + weight decay "
          "(FLOPs = 3 x forward); each row in its own process")
    print(f"{'precision':<18}{'s/step':>8}{'img/s':>7}{'GFLOP/s':>9}{'% all':>8}{'% inside':>9}"
          f"{'peak RSS MiB':>14}")
    for precision in runnable(("float32", "mixed_bfloat16")):
        r = run_child([sys.executable, __file__, "--child_training", precision,
                       "--runs", str(args.runs)], precision)
        if r is None:
            continue
        flops = 3 * 2 * 2 * r["macs"]
        print(f"{precision:<18}{r['seconds']:>8.2f}{2 / r['seconds']:>7.2f}"
              f"{flops / r['seconds'] / 1e9:>9.0f}{100 * flops / r['seconds'] / 1e9 / r['peak']:>7.0f}%"
              f"{100 * flops * r['inside'] / r['macs'] / r['seconds'] / 1e9 / r['peak']:>8.0f}%"
              f"{r['rss']:>14.0f}   (peak {r['peak']:.0f} GFLOP/s; TensorFlow imported: "
              f"{r['import_rss']:.0f} MiB)", flush=True)
    # Where the float32 step's memory goes, from TensorFlow's BFC allocator on the CPU.
    r = run_child([sys.executable, __file__, "--child_training", "float32", "--runs", "2"],
                  "allocator", env={"TF_CPU_ALLOCATOR_USE_BFC": "true"})
    if r is not None:
        print(f"float32 with TF_CPU_ALLOCATOR_USE_BFC=true: TensorFlow tensors held between "
              f"steps {r['tf_held'] / 2**20:.0f} MiB, peak within a step "
              f"{r['tf_peak'] / 2**20:.0f} MiB; peak RSS {r['rss']:.0f} MiB")


def section_serving(args):
    from PIL import Image

    from deeplabv3_tf.configs.recipes import voc_r101_os16
    from deeplabv3_tf.serving.export import ExportOptions, export_saved_model
    from deeplabv3_tf.evaluation.inference import predict_labels
    from deeplabv3_tf.model.fold import fold_batch_norm
    from deeplabv3_tf.runs import load_trained_model

    size, other = (513, 513), (385, 513)
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as tmp:
        experiment = voc_r101_os16()
        run_dir = random_weights_run(experiment, os.path.join(tmp, "run"))
        model, _, _ = load_trained_model(run_dir)
        exports = {p: tf.saved_model.load(export_saved_model(
            run_dir, os.path.join(tmp, p), ExportOptions(precision=p), log=lambda _: None))
            for p in runnable(("float32", "bfloat16"))}
        # In memory, the graph each export holds: BN folded, in its precision.
        graphs = {p: fold_batch_norm(model, experiment.model, p) for p in exports}
        images = [rng.integers(0, 255, (1, *hw, 3), np.uint8) for hw in (size, other)]
        buffer = io.BytesIO()
        Image.fromarray(images[0][0]).save(buffer, format="JPEG", quality=95)
        jpeg = tf.constant([buffer.getvalue()])
        example = tf.constant([tf.train.Example(features=tf.train.Features(feature={
            "image/encoded": tf.train.Feature(bytes_list=tf.train.BytesList(
                value=[buffer.getvalue()]))})).SerializeToString()])
        pixels = [tf.constant(image) for image in images]

        def in_memory(graph):
            single = tf.function(lambda x: predict_labels(graph, tf.cast(x, tf.float32)))
            multi = tf.function(lambda x: predict_labels(graph, tf.cast(x, tf.float32),
                                                         SCALES, True))
            # The same work as the encoded_image signature: decode, predict, encode the mask.
            decode = tf.function(lambda data: tf.io.encode_png(tf.cast(single(
                tf.io.decode_image(data[0], channels=3, expand_animations=False)[None])[0,
                ..., None], tf.uint8)))
            return {"serving_default": lambda: single(pixels[0]),
                    "two sizes alternating": lambda: (single(pixels[0]), single(pixels[1])),
                    "multiscale_flip": lambda: multi(pixels[0]),
                    "encoded_image (JPEG)": lambda: decode(jpeg),
                    "tf_example": lambda: decode(jpeg)}

        def exported(signatures):
            return {"serving_default": lambda: signatures["serving_default"](images=pixels[0]),
                    "two sizes alternating": lambda: (
                        signatures["serving_default"](images=pixels[0]),
                        signatures["serving_default"](images=pixels[1])),
                    "multiscale_flip": lambda: signatures["multiscale_flip"](images=pixels[0]),
                    "encoded_image (JPEG)": lambda: signatures["encoded_image"](images=jpeg),
                    "tf_example": lambda: signatures["tf_example"](examples=example)}

        calls = {p: (in_memory(graphs[p]), exported(exports[p].signatures)) for p in exports}
        print(f"R101 OS16 SavedModel, {size[0]}x{size[1]}, batch 1, median of {args.runs} "
              f"(multiscale_flip: 6 scales + flip, median of fewer; two sizes: {size[0]}x"
              f"{size[1]} then {other[0]}x{other[1]}, both); in memory: the BN-folded graph of "
              "the same precision, called as the signature calls it")
        print(f"{'signature':<24}" + "".join(
            f"{p + ': in memory':>{20 + (p != 'float32')}}{'export':>8}{'ratio':>7}"
            for p in exports))
        for name in calls["float32"][0]:
            runs = max(1, args.runs // 3) if name == "multiscale_flip" else args.runs
            line = f"{name:<24}"
            for precision, width in ((p, 20 + (p != "float32")) for p in exports):
                memory_call, export_call = (c[name] for c in calls[precision])
                # Alternated; ratio = the median of export / in memory over the rounds.
                pair = median_pair(memory_call, export_call, runs)
                line += (f"{pair.first * 1000:>{width}.0f}{pair.second * 1000:>8.0f}"
                         f"{pair.ratio:>7.2f}")
            print(line, flush=True)


def pipeline_child(records, batches):
    from deeplabv3_tf.data import make_dataset

    cores = len(os.sched_getaffinity(0))
    dataset = make_dataset(records, training=True, batch_size=8, crop_size=(513, 513))
    iterator = iter(dataset)
    for _ in range(3):
        next(iterator)
    start = time.perf_counter()
    for _ in range(batches):
        next(iterator)
    rate = batches * 8 / (time.perf_counter() - start)
    print(json.dumps({"cores": cores, "rate": rate}))


def section_pipeline(args):
    from deeplabv3_tf.data.tfrecord_builders.voc import build_voc
    from deeplabv3_tf.data.synthetic import write_voc_dataset

    images = 200
    cores = os.cpu_count() or 1
    with tempfile.TemporaryDirectory() as root:
        info = write_voc_dataset(root, num_train=images, num_val=1, with_sbd=False,
                                 size_range=(375, 500))
        warm = write_voc_dataset(os.path.join(root, "warm"), num_train=8, num_val=1,
                                 with_sbd=False, size_range=(375, 500))
        for workers in sorted({1, cores}):
            build_voc(warm["voc_dir"], os.path.join(root, f"warm{workers}"), splits=("train",),
                      num_workers=workers, progress=False, log=lambda _: None)
            start = time.perf_counter()
            build_voc(info["voc_dir"], os.path.join(root, f"records{workers}"),
                      splits=("train",), num_workers=workers, progress=False,
                      log=lambda _: None)
            rate = images / (time.perf_counter() - start)
            print(f"records: {images} VOC-sized JPEG+PNG pairs, --num_workers {workers}: "
                  f"{rate:.0f} images/s", flush=True)
        records = os.path.join(root, f"records{cores}", "train-*")
        for pinned in sorted({1, cores}):
            cpus = ",".join(str(c) for c in sorted(os.sched_getaffinity(0))[:pinned])
            r = run_child(["taskset", "-c", cpus, sys.executable, __file__, "--child_pipeline",
                           records], f"pipeline on {pinned} core(s)")
            if r is None:
                continue
            print(f"training pipeline (decode, scale 0.5-2, pad, crop 513, flip), {r['cores']} "
                  f"core(s): {r['rate']:.0f} examples/s = {r['rate'] / r['cores']:.0f} per core",
                  flush=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--sections", default=",".join(SECTIONS))
    parser.add_argument("--child_training", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--child_pipeline", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child_training:
        return training_child(args.child_training, args.runs)
    if args.child_pipeline:
        return pipeline_child(args.child_pipeline, 40)
    print(f"{describe_cpu()}; TensorFlow {tf.__version__}")
    for section in args.sections.split(","):
        if section not in SECTIONS:
            raise SystemExit(f"unknown section {section!r}; choose from {SECTIONS}")
        print(f"\n== {section}")
        globals()[f"section_{section}"](args)


if __name__ == "__main__":
    main()
