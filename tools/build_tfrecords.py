"""Turns a dataset into sharded TFRecords with a JSON manifest per split.

  python tools/build_tfrecords.py voc --voc_dir VOCdevkit/VOC2012 --output_dir records/voc
  python tools/build_tfrecords.py voc_aug --voc_dir VOCdevkit/VOC2012 \\
      --sbd_dir benchmark_RELEASE --output_dir records/voc
  python tools/build_tfrecords.py coco --coco_annotations annotations/instances_train2017.json \\
      --coco_images train2017 --split train --output_dir records/coco
  python tools/build_tfrecords.py cityscapes --cityscapes_dir cityscapes --output_dir records/cs
  python tools/build_tfrecords.py folder --images_dir imgs --masks_dir masks \\
      --split_lists train=train.txt,val=val.txt --num_classes 5 --ignore_label 255 \\
      [--palette palette.json] --output_dir records/mine
  python tools/build_tfrecords.py classification --manifest labels.csv --output_dir records/jft

  # The same shards on Apache Beam (any source): locally, or on Dataflow, Flink, Spark
  python tools/build_tfrecords.py voc --voc_dir VOCdevkit/VOC2012 --output_dir records/voc \
      --runner DirectRunner
  python tools/build_tfrecords.py coco ... --output_dir gs://bucket/records/coco \
      --runner DataflowRunner --beam_pipeline_options \
      project=my-project,region=europe-west4,temp_location=gs://bucket/tmp,setup_file=./setup.py

Shards: <split>-NNNNN-of-NNNNN.tfrecord; manifest: <split>.manifest.json.
A killed build is finished by rerunning the same command.
"""

from deeplabv3_tf.apps.cli import run_reporting_errors, start_tensorflow

start_tensorflow()  # first: TensorFlow's C++ start-up notices stay hidden

import signal  # noqa: E402
import sys  # noqa: E402

from absl import app, flags, logging  # noqa: E402

from deeplabv3_tf.data.tfrecord_builders.beam_shards import RUNNERS, BeamEngine  # noqa: E402
from deeplabv3_tf.data.tfrecord_builders.cityscapes import build_cityscapes  # noqa: E402
from deeplabv3_tf.data.tfrecord_builders.classification import build_classification  # noqa: E402
from deeplabv3_tf.data.tfrecord_builders.coco import build_coco  # noqa: E402
from deeplabv3_tf.data.tfrecord_builders.folder import build_folder  # noqa: E402
from deeplabv3_tf.data.tfrecord_builders.shards import WorkerDiedError  # noqa: E402
from deeplabv3_tf.data.tfrecord_builders.voc import build_voc, build_voc_aug  # noqa: E402

SOURCES = ("voc", "voc_aug", "coco", "cityscapes", "folder", "classification")

flags.DEFINE_string("output_dir", None, "Directory of the shards and manifests.")
flags.DEFINE_integer("num_workers", 0, "Worker processes (0: all cores).")
flags.DEFINE_integer("num_shards", 0, "Shards per split (0: about 1000 examples each, at least 4).")
flags.DEFINE_bool("skip_invalid", False,
                  "Skip invalid examples (listed in the manifest) instead of stopping.")
flags.DEFINE_list("splits", None, "Splits to build (default: all of the source's).")
flags.DEFINE_bool("progress", True, "Show a progress bar.")
flags.DEFINE_enum("runner", None, list(RUNNERS),
                  "Build on Apache Beam with this runner (pip install -r requirements-beam.txt); "
                  "default: here, with --num_workers processes. The shards are the same.")
flags.DEFINE_list("beam_pipeline_options", [],
                  "Beam pipeline options, comma-separated name=value (as tfds build), e.g. "
                  "project=p,region=r,temp_location=gs://b/tmp; DirectRunner: "
                  "direct_num_workers (default --num_workers or all cores).")
# voc / voc_aug
flags.DEFINE_string("voc_dir", None, "VOCdevkit/VOC2012 (or VOCdevkit, or its parent).")
flags.DEFINE_string("sbd_dir", None, "SBD benchmark_RELEASE (or its dataset/ directory).")
# coco
flags.DEFINE_string("coco_annotations", None, "COCO instances JSON.")
flags.DEFINE_string("coco_images", None, "Directory of the COCO images of that JSON.")
flags.DEFINE_string("split", "train", "Split name for coco and classification records.")
# cityscapes
flags.DEFINE_string("cityscapes_dir", None, "Directory holding leftImg8bit/ and gtFine/.")
# folder
flags.DEFINE_string("images_dir", None, "Folder source: directory of images.")
flags.DEFINE_string("masks_dir", None, "Folder source: directory of <id>.png masks.")
flags.DEFINE_list("split_lists", None, "Folder source: name=path of each split's id list.")
flags.DEFINE_integer("num_classes", None, "Number of classes (folder, classification).")
flags.DEFINE_integer("ignore_label", 255, "Folder source: void value of index masks.")
flags.DEFINE_string("palette", None, "Folder source: JSON palette mapping mask colours to classes.")
flags.DEFINE_list("class_names", None, "Class names, comma-separated (folder, classification).")
# classification
flags.DEFINE_string("manifest", None, "Classification: CSV or JSON-lines manifest.")
FLAGS = flags.FLAGS


def _require(source, *names):
    missing = [f"--{n}" for n in names if getattr(FLAGS, n) in (None, [])]
    if missing:
        raise app.UsageError(f"{source} needs {', '.join(missing)}.")


def _build(source, options):
    splits = {"splits": tuple(FLAGS.splits)} if FLAGS.splits else {}
    if source == "voc":
        _require(source, "voc_dir")
        return build_voc(FLAGS.voc_dir, FLAGS.output_dir, **splits, **options)
    if source == "voc_aug":
        _require(source, "voc_dir", "sbd_dir")
        return build_voc_aug(FLAGS.voc_dir, FLAGS.sbd_dir, FLAGS.output_dir,
                                      **splits, **options)
    if source == "coco":
        _require(source, "coco_annotations", "coco_images")
        return build_coco(FLAGS.coco_annotations, FLAGS.coco_images,
                                   FLAGS.output_dir, split=FLAGS.split, **options)
    if source == "cityscapes":
        _require(source, "cityscapes_dir")
        return build_cityscapes(FLAGS.cityscapes_dir, FLAGS.output_dir,
                                         **splits, **options)
    if source == "folder":
        _require(source, "images_dir", "masks_dir", "split_lists")
        lists = {}
        for item in FLAGS.split_lists:
            name, sep, path = item.partition("=")
            if not sep or not name or not path:
                raise app.UsageError(f"--split_lists item {item!r} is not name=path.")
            lists[name] = path
        return build_folder(
            FLAGS.images_dir, FLAGS.masks_dir, lists, FLAGS.output_dir,
            num_classes=FLAGS.num_classes, ignore_label=FLAGS.ignore_label,
            palette_path=FLAGS.palette, class_names=FLAGS.class_names, **options)
    _require(source, "manifest")
    return build_classification(
        FLAGS.manifest, FLAGS.output_dir, split=FLAGS.split, num_classes=FLAGS.num_classes,
        class_names=FLAGS.class_names, **options)


def main(argv):
    logging.set_verbosity(logging.WARNING)
    if len(argv) != 2 or argv[1] not in SOURCES:
        raise app.UsageError(f"Give one source: {' | '.join(SOURCES)}.")
    _require(argv[1], "output_dir")
    # A termination signal unwinds like an exception: temporary files are removed.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    options = dict(num_workers=FLAGS.num_workers or None, num_shards=FLAGS.num_shards or None,
                   skip_invalid=FLAGS.skip_invalid, progress=FLAGS.progress)
    if FLAGS.runner:
        options["engine"] = BeamEngine(FLAGS.runner, tuple(
            "--" + option.lstrip("-") for option in FLAGS.beam_pipeline_options))
    elif FLAGS.beam_pipeline_options:
        raise app.UsageError("--beam_pipeline_options needs --runner.")

    def build_and_report():
        for split, manifest in _build(argv[1], options).items():
            print(f"{split}: {manifest['count']} examples, {manifest['num_shards']} shards, "
                  f"{manifest['num_skipped']} skipped -> {FLAGS.output_dir}")

    return run_reporting_errors(build_and_report, extra=(WorkerDiedError, ImportError))


if __name__ == "__main__":
    app.run(main)
