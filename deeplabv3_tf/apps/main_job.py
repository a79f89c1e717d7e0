"""The main job, end to end: records -> training -> evaluation -> export -> served predictions.

Every stage is a call of the library function the project's command-line tool
calls, in this process, and prints the command line that does the same from a
shell: the job is a walk through the product, and it runs wherever the package
is installed (no repository checkout needed). On a fresh machine it generates a
VOC-format dataset first; given a real VOCdevkit (and optionally SBD) it runs
the same stages on it with the paper's recipe.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shlex
import time
from typing import Callable

import numpy as np
import tensorflow as tf
from PIL import Image

from deeplabv3_tf.configs.experiment import FLAG_FIELDS, resolve_experiment
from deeplabv3_tf.configs.recipes import get_recipe
from deeplabv3_tf.core.files import write_json_atomically
from deeplabv3_tf.data.dataset import VOC_CLASSES
from deeplabv3_tf.pages.records_page import inspect_records
from deeplabv3_tf.data.synthetic import write_voc_dataset
from deeplabv3_tf.data.tfrecord_builders.segmentation import read_split_list
from deeplabv3_tf.data.tfrecord_builders.voc import build_voc, build_voc_aug, find_voc_root
from deeplabv3_tf.evaluation.evaluate import evaluate_run
from deeplabv3_tf.ops.metrics import confusion_matrix, iou_from_confusion
from deeplabv3_tf.serving.export import export_saved_model
from deeplabv3_tf.serving.options import ExportOptions
from deeplabv3_tf.serving.predict import predict_files
from deeplabv3_tf.training.trainer import train


@dataclasses.dataclass(frozen=True)
class MainJobConfig:
    """What the main job runs.

    Attributes:
      workdir: Where everything goes (data/, records/, run/, export/, ...).
      voc_dir: A real VOCdevkit/VOC2012; None generates a dataset.
      sbd_dir: SBD benchmark_RELEASE, to train on train_aug (with voc_dir).
      experiment: Recipe (tiny_voc on generated data, voc_r101_os16 on VOC).
      init: Initial weights (ImageNet .h5 for the R101 recipes).
      steps: Training steps (None: the recipe's).
      num_train, num_val: Generated images per split.
      size_range: Generated image sides, in pixels.
      train_flags: Extra tools/train.py flags: --set=section.field=value, or a
        one-field flag such as --batch_size=4 (`train_assignments`).
      eval_scales: Scales of the multi-scale + flip evaluation and export.
    """

    workdir: str = "runs/demo"
    voc_dir: str | None = None
    sbd_dir: str | None = None
    experiment: str = "tiny_voc"
    init: str | None = None
    steps: int | None = None
    num_train: int = 240
    num_val: int = 48
    size_range: tuple[int, int] = (96, 160)
    train_flags: tuple[str, ...] = ()
    eval_scales: tuple[float, ...] = (0.75, 1.0, 1.25)


def _command(log: Callable[[str], None], tool: str, *args: str) -> None:
    """Prints the shell command that runs what the next stage calls."""
    log("$ " + " ".join(shlex.quote(c) for c in ["python", f"tools/{tool}", *args]))


# tools/train.py flags that set up the process rather than the experiment.
PROCESS_FLAGS = ("--deterministic_ops", "--nodeterministic_ops", "--progress", "--noprogress")


def train_assignments(train_flags: tuple[str, ...]) -> list[str]:
    """`--set` assignments of extra tools/train.py flags: `--set=a.b=v`, `--set a.b=v`,
    or a one-field flag (`--batch_size=4`, see `FLAG_FIELDS`).

    Raises:
      ValueError: a flag the main job cannot pass on, naming it.
    """
    assignments, flags = [], list(train_flags)
    while flags:
        flag = flags.pop(0)
        if flag in PROCESS_FLAGS:
            continue  # not an experiment field: `run_main_job` applies it
        name, sep, value = flag.lstrip("-").partition("=")
        if not sep and flags and not flags[0].startswith("--"):
            value, sep = flags.pop(0), "="
        if flag.startswith("--") and sep and name == "set":
            assignments.append(value)
        elif flag.startswith("--") and sep and name in FLAG_FIELDS:
            assignments.append(f"{FLAG_FIELDS[name]}={value}")
        else:
            raise ValueError(f"train flag {flag!r}: the main job passes on --set=section.field="
                             f"value, --{{{','.join(FLAG_FIELDS)}}}=value and "
                             f"{', '.join(PROCESS_FLAGS)}.")
    return assignments


def _indented(log: Callable[[str], None]) -> Callable[[str], None]:
    """`log` with every line of a text indented under the stage's command."""
    def indented(text) -> None:
        for line in str(text).splitlines():
            log("  " + line)
    return indented


def _served_predictions(export_path: str, voc_root: str, split_ids: list[str],
                        log: Callable[[str], None]) -> dict:
    """Asks the reloaded SavedModel about the val images through encoded_image and
    serving_default; scores the served masks against the VOC labels."""
    loaded = tf.saved_model.load(export_path)
    encoded_image = loaded.signatures["encoded_image"]
    serving_default = loaded.signatures["serving_default"]
    matrix = np.zeros((len(VOC_CLASSES), len(VOC_CLASSES)), np.int64)
    agree = total = 0
    batch = 8
    for start in range(0, len(split_ids), batch):
        ids = split_ids[start:start + batch]
        data = []
        for example_id in ids:
            with open(os.path.join(voc_root, "JPEGImages", f"{example_id}.jpg"), "rb") as f:
                data.append(f.read())
        out = encoded_image(images=tf.constant(data))
        for i, example_id in enumerate(ids):
            h, w = int(out["height"][i]), int(out["width"][i])
            served = out["semantic"][i, :h, :w].numpy()
            pixels = tf.io.decode_jpeg(data[i], channels=3)[None]
            dense = serving_default(images=pixels)["semantic"][0].numpy()
            agree += int(np.sum(dense == served))
            total += served.size
            label = np.asarray(Image.open(
                os.path.join(voc_root, "SegmentationClass", f"{example_id}.png")))
            matrix += confusion_matrix(label, served, len(VOC_CLASSES)).numpy()
    result = iou_from_confusion(matrix)
    log(f"  served {len(split_ids)} val images through encoded_image (batches of {batch}, "
        f"mixed sizes) and serving_default: masks agree on {100 * agree / total:.3f}% of pixels; "
        f"mIoU of the served masks {100 * result['miou']:.2f}")
    return {"images": len(split_ids), "agreement": agree / total, "miou": result["miou"]}


class _Job:
    """The main job's state between stages: its paths, where it prints, the times."""

    def __init__(self, config: MainJobConfig, log: Callable[[str], None]):
        self.config, self.log, self.out = config, log, _indented(log)
        self.workdir = os.path.abspath(config.workdir)
        self.paths = {name: os.path.join(self.workdir, name) for name in
                      ("data", "records", "inspection", "run", "eval", "export", "predictions")}
        self.times: dict[str, float] = {}

    def stage(self, title: str, key: str, run: Callable[[], object]):
        """Runs one stage under its title, timing it as `key`."""
        self.log(f"\n== {title} ==")
        start = time.perf_counter()
        result = run()
        self.times[key] = time.perf_counter() - start
        return result

    def command(self, tool: str, *args: str) -> None:
        _command(self.log, tool, *args)


def _dataset(job: _Job) -> str:
    """A real VOCdevkit, or a generated one; its VOC2012 root."""
    config = job.config
    if config.voc_dir:
        voc_root = find_voc_root(config.voc_dir)
        job.out(f"using PASCAL VOC 2012 at {voc_root}")
        return voc_root
    info = write_voc_dataset(job.paths["data"], num_train=config.num_train,
                             num_val=config.num_val, num_sbd_only=0, with_sbd=False,
                             size_range=config.size_range, max_objects=2, void_width=2)
    job.out(f"generated {config.num_train} train + {config.num_val} val images in the VOC "
            f"format (JPEGs, palette PNGs with void bands, split lists) under "
            f"{job.paths['data']}")
    return info["voc_dir"]


def _records(job: _Job, voc_root: str) -> list[str]:
    """Records of train (or train_aug) and val, and a look at them; their globs."""
    config, records = job.config, job.paths["records"]
    if config.sbd_dir:
        job.command("build_tfrecords.py", "voc_aug", f"--voc_dir={voc_root}",
                    f"--sbd_dir={config.sbd_dir}", f"--output_dir={records}")
        manifests = build_voc_aug(voc_root, config.sbd_dir, records, log=job.out)
        train_split = "train_aug"
    else:
        job.command("build_tfrecords.py", "voc", f"--voc_dir={voc_root}", "--splits=train,val",
                    f"--output_dir={records}")
        manifests = build_voc(voc_root, records, splits=("train", "val"), log=job.out)
        train_split = "train"
    for split, manifest in manifests.items():
        job.out(f"{split}: {manifest['count']} examples, {manifest['num_shards']} shards, "
                f"{manifest['num_skipped']} skipped -> {records}")
    crop = get_recipe(config.experiment).data.crop_size
    patterns = [f"{records}/{train_split}-*", f"{records}/val-*"]
    job.command("inspect_records.py", *patterns, f"--output_dir={job.paths['inspection']}",
                "--crop_size={}x{}".format(*crop), "--noprogress")
    inspect_records(patterns, job.paths["inspection"], crop_size=tuple(crop), progress=False,
                    log=job.out)
    return patterns


def _training(job: _Job, patterns: list[str], assignments: list[str]) -> None:
    config, run = job.config, job.paths["run"]
    flags = [f"--experiment={config.experiment}", f"--model_dir={run}",
             f"--train_records={patterns[0]}", f"--val_records={patterns[1]}",
             "--noprogress", "--set=train.eval_every=0"]
    given = [f"data.train_records={patterns[0]!r}", f"data.val_records={patterns[1]!r}",
             "train.eval_every=0"]
    if config.steps:
        flags.append(f"--steps={config.steps}")
        given.append(f"train.steps={config.steps}")
    if config.init:
        flags.append(f"--init={config.init}")
        given.append(f"train.init={config.init!r}")
    job.command("train.py", *flags, *config.train_flags)
    experiment = resolve_experiment(get_recipe(config.experiment), given + assignments,
                                    log=job.out)
    job.out(json.dumps(train(experiment, run, progress=False, log=job.out).summary()))


def _evaluation(job: _Job) -> dict:
    """The run's evaluation protocol; results.json's content."""
    job.command("evaluate.py", f"--model_dir={job.paths['run']}",
                f"--output_dir={job.paths['eval']}", "--noprogress")
    evaluate_run(job.paths["run"], job.paths["eval"], progress=False, log=job.out)
    with open(os.path.join(job.paths["eval"], "results.json")) as f:
        return json.load(f)


def _serving(job: _Job, voc_root: str) -> tuple[str, dict]:
    """The export, asked about every val image; overlays of a few. (export path, served)."""
    scales = tuple(job.config.eval_scales)
    job.command("export.py", f"--model_dir={job.paths['run']}",
                f"--export_dir={job.paths['export']}",
                "--scales=" + ",".join(str(s) for s in scales))
    export_path = export_saved_model(job.paths["run"], job.paths["export"],
                                     ExportOptions(scales=scales), log=job.out)
    job.out(export_path)
    val_ids = read_split_list(os.path.join(voc_root, "ImageSets", "Segmentation", "val.txt"))
    served = _served_predictions(export_path, voc_root, val_ids, job.log)
    images = [os.path.join(voc_root, "JPEGImages", f"{i}.jpg") for i in val_ids[:8]]
    job.command("predict.py", f"--source={export_path}",
                f"--output_dir={job.paths['predictions']}", *images)
    predict_files(export_path, images, job.paths["predictions"], log=job.out)
    return export_path, served


def run_main_job(config: MainJobConfig = MainJobConfig(),
                 log: Callable[[str], None] = print) -> dict:
    """Runs every stage and returns (and writes to workdir/summary.json) the summary."""
    job = _Job(config, log)
    os.makedirs(job.workdir, exist_ok=True)
    assignments = train_assignments(config.train_flags)  # a bad flag fails before any work
    if "--deterministic_ops" in config.train_flags:
        tf.config.experimental.enable_op_determinism()
    voc_root = job.stage("1. dataset", "dataset", lambda: _dataset(job))
    patterns = job.stage("2. records (and a look at them)", "records",
                         lambda: _records(job, voc_root))
    job.stage("3. training", "training", lambda: _training(job, patterns, assignments))
    evaluation = job.stage("4. evaluation", "evaluation", lambda: _evaluation(job))
    export_path, served = job.stage("5. export and served predictions", "export_and_serving",
                                    lambda: _serving(job, voc_root))
    paths = job.paths
    summary = {
        "workdir": job.workdir,
        "experiment": config.experiment,
        "evaluation": {name: {"miou": r["miou"], "pixel_accuracy": r["pixel_accuracy"],
                              "output_stride": r["output_stride"], "scales": r["scales"],
                              "flip": r["flip"], "paper_miou": r["paper_miou"]}
                       for name, r in evaluation.items()},
        "served": served,
        "artefacts": {"dataset": voc_root, "records": paths["records"],
                      "records_page": os.path.join(paths["inspection"], "index.html"),
                      "run": paths["run"],
                      "tensorboard": f"tensorboard --logdir {paths['run']}",
                      "evaluation": paths["eval"],
                      "evaluation_page": os.path.join(paths["eval"], "report.html"),
                      "chart": next(iter(evaluation.values()))["files"]["chart"],
                      "saved_model": export_path, "overlays": paths["predictions"]},
        "seconds": {k: round(v, 1) for k, v in job.times.items()},
    }
    write_json_atomically(os.path.join(job.workdir, "summary.json"), summary)
    _print_summary(summary, log)
    return summary


def _print_summary(summary: dict, log: Callable[[str], None]) -> None:
    log("\n== summary ==")
    for name, result in summary["evaluation"].items():
        paper = f"  (paper: {result['paper_miou']:.2f})" if result["paper_miou"] else ""
        log(f"  val mIoU {name:<14} {100 * result['miou']:6.2f}{paper}")
    log(f"  served masks mIoU       {100 * summary['served']['miou']:6.2f}")
    for name, path in summary["artefacts"].items():
        log(f"  {name:<15} {path}")
    log("  time: " + ", ".join(f"{k} {v:.0f} s" for k, v in summary["seconds"].items())
        + f", total {sum(summary['seconds'].values()):.0f} s")
