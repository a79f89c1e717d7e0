"""Whole-image against sliding-window inference: peak memory, time and mIoU.

  python bench/sliding_window.py                    # ~10 min on 2 cores
  python bench/sliding_window.py --run_dir runs/cityscapes_r101_os16 \\
      --records 'records/cityscapes/val-*' --images 20

memory: R101 (19 classes; random weights unless --run_dir: memory and time do
        not depend on their values) segmenting 1024x2048 images at output
        stride 16 and 8, whole and by 769x769 windows (stride 513, one window
        a call): resident memory with the model loaded, the peak of the first
        call (which also builds the graph) and of the later calls (VmHWM reset
        between), seconds per image (later calls), and the float accumulator
        each holds (whole: the full-size logits; windowed: one row of windows). With --run_dir and
        --records, also the mIoU of that run on those records' first --images
        images, whole and windowed.
miou:   without --run_dir, where no trained R101 is at hand: the tiny model
        trained here on generated scenes (crop 97) and evaluated on generated
        128x256 scenes, whole and by 97x97 windows (stride 65): the window
        covers the same share of the image as 769 of Cityscapes' 1024x2048.

Each measurement runs in a fresh process, so that peak memory is its own.
Every figure names the CPU.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench.common import describe_cpu, peak_rss_mib, reset_peak_rss, run_child  # noqa: E402

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

SIZE = (1024, 2048)


def _images(count: int, seed: int = 0):
    """Smooth random 1024x2048 images (random weights: their content does not matter)."""
    rng = np.random.default_rng(seed)
    for _ in range(count):
        small = rng.uniform(0, 255, (1, SIZE[0] // 32, SIZE[1] // 32, 3)).astype(np.float32)
        yield tf.image.resize(small, SIZE).numpy(), None


def _record_images(pattern: str, count: int):
    from deeplabv3_tf.data import make_dataset

    for batch in make_dataset(pattern, training=False).take(count):
        yield batch["image"].numpy(), batch["label"].numpy()


def child_memory(args) -> dict:
    from deeplabv3_tf.configs.recipes import cityscapes_r101_os16
    from deeplabv3_tf.evaluation.inference import Windows, predict_labels
    from deeplabv3_tf.ops.metrics import confusion_matrix, iou_from_confusion
    from deeplabv3_tf.model import build_deeplabv3
    from deeplabv3_tf.runs import load_trained_model

    if args.run_dir:
        model, experiment, _ = load_trained_model(args.run_dir, args.output_stride)
        num_classes = experiment.model.num_classes
    else:
        import dataclasses

        config = dataclasses.replace(cityscapes_r101_os16().model,
                                     output_stride=args.output_stride)
        model, num_classes = build_deeplabv3(config), config.num_classes
    windows = Windows((args.window,) * 2, (args.stride,) * 2) if args.mode == "windowed" else None
    predict = tf.function(lambda x: predict_labels(model, x, windows=windows),
                          input_signature=[tf.TensorSpec([1, None, None, 3], tf.float32)])
    images = (_record_images(args.records, args.images) if args.records
              else _images(args.images))
    before = peak_rss_mib()
    seconds, matrix, sizes = [], np.zeros((num_classes, num_classes), np.int64), set()
    first = None
    for image, label in images:
        start = time.perf_counter()
        labels = predict(tf.constant(image)).numpy()
        seconds.append(time.perf_counter() - start)
        sizes.add(image.shape[1:3])
        if first is None:
            # The first call also builds and optimises the graph; later calls'
            # peak is measured on its own (VmHWM reset).
            first = peak_rss_mib()
            reset_peak_rss()
        if label is not None:
            matrix += confusion_matrix(tf.constant(label), tf.constant(labels),
                                       num_classes, 255).numpy()
    height, width = max(sizes)
    if windows is None:
        accumulator = height * width * num_classes * 4
    else:
        accumulator = min(args.window, height) * width * num_classes * 4
    result = {"output_stride": args.output_stride, "mode": args.mode,
              "images": len(seconds), "size": [int(height), int(width)],
              "model_mib": round(before), "first_peak_mib": round(first),
              "peak_mib": round(peak_rss_mib() if len(seconds) > 1 else first),
              # The first call traces; the others are steady state.
              "seconds": round(float(np.median(seconds[1:] or seconds)), 2),
              "accumulator_mib": round(accumulator / 2**20)}
    if args.records:
        result["miou"] = round(100 * iou_from_confusion(matrix)["miou"], 2)
    return result


def child_tiny_miou(args) -> dict:
    """Trains the tiny model on generated scenes, evaluates whole and windowed."""
    from deeplabv3_tf.data import make_dataset
    from deeplabv3_tf.data.tfrecord_builders.voc import build_voc
    from deeplabv3_tf.evaluation.evaluate import evaluate_model
    from deeplabv3_tf.configs.experiment import override
    from deeplabv3_tf.configs.recipes import tiny_voc
    from deeplabv3_tf.evaluation.inference import Windows
    from deeplabv3_tf.runs import load_trained_model
    from deeplabv3_tf.data.synthetic import write_voc_dataset
    from deeplabv3_tf.training.trainer import train

    quiet = dict(progress=False, log=lambda _: None)
    root = tempfile.mkdtemp(prefix="sliding-window-")
    train_data = write_voc_dataset(os.path.join(root, "train"), num_train=48, num_val=1,
                                   with_sbd=False, size_range=(96, 160), max_objects=2)
    build_voc(train_data["voc_dir"], os.path.join(root, "records"), splits=("train",), **quiet)
    # Val scenes of Cityscapes' shape, 8 times smaller (128x256), more objects.
    val_data = write_voc_dataset(os.path.join(root, "val"), num_train=1, num_val=args.tiny_images,
                                 with_sbd=False, size_range=(128, 128), max_objects=4, seed=7)
    import shutil

    from PIL import Image

    voc = val_data["voc_dir"]
    for example_id in val_data["val"]:  # widen 128x128 scenes to 128x256
        for folder, suffix in (("JPEGImages", ".jpg"), ("SegmentationClass", ".png")):
            path = os.path.join(voc, folder, example_id + suffix)
            image = Image.open(path)
            wide = image.resize((256, 128), Image.NEAREST if suffix == ".png" else Image.BILINEAR)
            if suffix == ".png":
                wide.putpalette(image.getpalette())
            wide.save(path)
    build_voc(voc, os.path.join(root, "val_records"), splits=("val",), **quiet)
    experiment = override(tiny_voc(), [
        f"data.train_records={os.path.join(root, 'records', 'train-*')!r}",
        "data.val_records=''", f"train.steps={args.tiny_steps}"])
    run_dir = os.path.join(root, "run")
    train(experiment, run_dir, **quiet)
    results = {}
    windows = Windows((97, 97), (65, 65))
    for output_stride in (16, 8):
        model, _, _ = load_trained_model(run_dir, output_stride)
        for mode, setting in (("whole", None), ("windowed", windows)):
            dataset = make_dataset(os.path.join(root, "val_records", "val-*"), training=False)
            result = evaluate_model(model, dataset, 21, windows=setting)
            results[f"os{output_stride}_{mode}"] = round(100 * result["miou"], 2)
    shutil.rmtree(root, ignore_errors=True)
    return results


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--run_dir", help="A trained run (default: R101 with random weights).")
    parser.add_argument("--records", help="Its evaluation records (for mIoU).")
    parser.add_argument("--images", type=int, default=3, help="Images per measurement.")
    parser.add_argument("--output_strides", default="16,8")
    parser.add_argument("--window", type=int, default=769)
    parser.add_argument("--stride", type=int, default=513)
    parser.add_argument("--sections", default="memory,miou")
    parser.add_argument("--tiny_steps", type=int, default=600)
    parser.add_argument("--tiny_images", type=int, default=24)
    parser.add_argument("--child", choices=["memory", "miou"])
    parser.add_argument("--output_stride", type=int, default=16)
    parser.add_argument("--mode", choices=["whole", "windowed"], default="whole")
    args = parser.parse_args()
    if args.child == "memory":
        print(json.dumps(child_memory(args)))
        return
    if args.child == "miou":
        print(json.dumps(child_tiny_miou(args)))
        return

    print(f"{describe_cpu()}; TensorFlow {tf.__version__}")
    sections = args.sections.split(",")
    base = [sys.executable, os.path.abspath(__file__), f"--images={args.images}",
            f"--window={args.window}", f"--stride={args.stride}"]
    if args.run_dir:
        base += [f"--run_dir={args.run_dir}"]
    if args.records:
        base += [f"--records={args.records}"]
    if "memory" in sections:
        source = args.run_dir or "R101, random weights, 19 classes"
        print(f"\n{source}: {args.images} images, whole against {args.window}x{args.window} "
              f"windows (stride {args.stride})")
        print(f"{'setting':<16} {'s/image':>8} {'model MiB':>10} {'1st call':>9} "
              f"{'peak MiB':>9} {'added MiB':>10} {'accumulator MiB':>16}"
              + ("  mIoU" if args.records else ""))
        for output_stride in (int(s) for s in args.output_strides.split(",")):
            for mode in ("whole", "windowed"):
                name = f"os{output_stride} {mode}"
                r = run_child(base + ["--child=memory", f"--output_stride={output_stride}",
                                      f"--mode={mode}"], name)
                if r is None:
                    continue
                print(f"{name:<16} {r['seconds']:>8.2f} {r['model_mib']:>10} "
                      f"{r['first_peak_mib']:>9} {r['peak_mib']:>9} "
                      f"{r['peak_mib'] - r['model_mib']:>10} {r['accumulator_mib']:>16}"
                      + (f"  {r['miou']:.2f}" if "miou" in r else ""), flush=True)
    if "miou" in sections and not args.records:
        print(f"\ntiny model, {args.tiny_steps} steps on generated scenes (crop 97), "
              f"{args.tiny_images} generated 128x256 val scenes: mIoU whole / 97x97 windows")
        r = run_child([sys.executable, os.path.abspath(__file__), "--child=miou",
                       f"--tiny_steps={args.tiny_steps}", f"--tiny_images={args.tiny_images}"],
                      "tiny")
        if r is not None:
            for output_stride in (16, 8):
                print(f"os{output_stride}: whole {r[f'os{output_stride}_whole']:.2f}, "
                      f"windowed {r[f'os{output_stride}_windowed']:.2f}")


if __name__ == "__main__":
    main()
