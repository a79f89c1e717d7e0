"""The Beam records builder (DirectRunner, multi_processing, 2 workers) against the
local one: the same shards byte for byte for every source, the same messages and
manifests for bad examples, the same shards after a killed build is rerun."""

import glob
import importlib.util
import json
import os

import pytest

# CI sets DEEPLABV3_REQUIRE_BEAM: there these tests must run, not skip.
if importlib.util.find_spec("apache_beam") is None and not os.environ.get("DEEPLABV3_REQUIRE_BEAM"):
    pytest.skip("pip install -r requirements-beam.txt", allow_module_level=True)

from deeplabv3_tf.data.images import InvalidExampleError  # noqa: E402
from deeplabv3_tf.data.synthetic import write_voc_dataset  # noqa: E402
from deeplabv3_tf.data.tfrecord_builders.beam_shards import BeamEngine  # noqa: E402
from deeplabv3_tf.data.tfrecord_builders.cityscapes import build_cityscapes  # noqa: E402
from deeplabv3_tf.data.tfrecord_builders.classification import build_classification  # noqa: E402
from deeplabv3_tf.data.tfrecord_builders.coco import build_coco  # noqa: E402
from deeplabv3_tf.data.tfrecord_builders.folder import build_folder  # noqa: E402
from deeplabv3_tf.data.tfrecord_builders.voc import build_voc, build_voc_aug  # noqa: E402
from tests.data import fixtures  # noqa: E402

QUIET = dict(progress=False, log=lambda _: None)
BEAM = BeamEngine("DirectRunner", ("--direct_num_workers=2",))

pytestmark = pytest.mark.slow


def _files(directory):
    """{name: bytes} of every shard and manifest."""
    out = {}
    for path in sorted(glob.glob(os.path.join(directory, "*"))):
        with open(path, "rb") as f:
            out[os.path.basename(path)] = f.read()
    return out


def _same_build(local_dir, beam_dir, local, beam):
    """Shards byte-identical; manifests equal but for how the build ran."""
    assert set(local) == set(beam)
    local_files, beam_files = _files(local_dir), _files(beam_dir)
    assert sorted(local_files) == sorted(beam_files)
    shards = [n for n in local_files if n.endswith(".tfrecord")]
    assert shards
    for name in shards:
        assert local_files[name] == beam_files[name], name
    for split in local:
        beam_manifest = dict(beam[split])
        assert beam_manifest.pop("beam") == {"runner": "DirectRunner",
                                             "pipeline_options": ["--direct_num_workers=2"]}
        assert beam_manifest == local[split]
        with open(os.path.join(beam_dir, f"{split}.manifest.json")) as f:
            assert json.load(f) == beam[split]


def _sources(root):
    """Every source kind: name -> builder(output_dir, **options)."""
    voc = write_voc_dataset(os.path.join(root, "voc"), num_train=7, num_val=3, num_sbd_only=3,
                            with_sbd=True, size_range=(40, 60))
    annotations, images_dir, _ = fixtures.write_coco(os.path.join(root, "coco"))
    fixtures.write_cityscapes(os.path.join(root, "cs"))
    fixtures.write_folder(os.path.join(root, "folder"), count=7)
    folder = os.path.join(root, "folder")
    classification = fixtures.write_classification(os.path.join(root, "jft"))
    return {
        "voc": lambda out, **o: build_voc(voc["voc_dir"], out, **o),
        "voc_aug": lambda out, **o: build_voc_aug(voc["voc_dir"], voc["sbd_dir"], out, **o),
        "coco": lambda out, **o: build_coco(annotations, images_dir, out, split="train", **o),
        "cityscapes": lambda out, **o: build_cityscapes(os.path.join(root, "cs"), out,
                                                        splits=("train",), **o),
        "folder": lambda out, **o: build_folder(
            os.path.join(folder, "images"), os.path.join(folder, "masks"),
            {"train": os.path.join(folder, "train.txt")}, out, num_classes=4,
            ignore_label=99, **o),
        "classification": lambda out, **o: build_classification(classification, out, **o),
    }


@pytest.fixture(scope="module")
def sources(tmp_path_factory):
    return _sources(str(tmp_path_factory.mktemp("sources")))


@pytest.mark.parametrize("source", ["voc", "voc_aug", "coco", "cityscapes", "folder",
                                    "classification"])
def test_beam_shards_equal_the_local_builders(sources, tmp_path, source):
    # 3 shards of a few examples: uneven shard sizes, and more shards than one worker's.
    local = sources[source](str(tmp_path / "local"), num_shards=3, num_workers=2, **QUIET)
    beam = sources[source](str(tmp_path / "beam"), num_shards=3, engine=BEAM, **QUIET)
    _same_build(str(tmp_path / "local"), str(tmp_path / "beam"), local, beam)


def _voc_with_bad_images(root, count):
    info = write_voc_dataset(os.path.join(root, "voc"), num_train=8, num_val=2,
                             with_sbd=False, size_range=(40, 60))
    bad = info["train"][2:2 + count]
    for example_id in bad:
        with open(os.path.join(info["voc_dir"], "JPEGImages", f"{example_id}.jpg"), "wb") as f:
            f.write(b"not a jpeg")
    return info["voc_dir"], bad


def test_bad_image_same_message_and_manifest(tmp_path):
    voc_dir, [bad] = _voc_with_bad_images(str(tmp_path), 1)
    options = dict(splits=("train",), num_shards=3, **QUIET)
    with pytest.raises(InvalidExampleError) as local_error:
        build_voc(voc_dir, str(tmp_path / "local"), num_workers=1, **options)
    with pytest.raises(InvalidExampleError) as beam_error:
        build_voc(voc_dir, str(tmp_path / "beam"), engine=BEAM, **options)
    assert str(beam_error.value) == str(local_error.value) and bad in str(beam_error.value)
    assert not glob.glob(str(tmp_path / "beam" / "*.manifest.json"))
    local = build_voc(voc_dir, str(tmp_path / "local"), skip_invalid=True, num_workers=1,
                      **options)
    beam = build_voc(voc_dir, str(tmp_path / "beam"), skip_invalid=True, engine=BEAM, **options)
    assert beam["train"]["skipped"][0]["id"] == bad
    _same_build(str(tmp_path / "local"), str(tmp_path / "beam"), local, beam)


def test_many_bad_images_are_all_named_at_the_end(tmp_path):
    voc_dir, bad = _voc_with_bad_images(str(tmp_path), 4)
    engine = BeamEngine("DirectRunner", ("--direct_num_workers=2",), max_errors_listed=3)
    with pytest.raises(InvalidExampleError) as error:
        build_voc(voc_dir, str(tmp_path / "beam"), splits=("train",), num_shards=3,
                  engine=engine, **QUIET)
    message = str(error.value)
    assert message.startswith("4 examples could not be written")
    assert sum(example_id in message for example_id in bad) == 3
    assert message.endswith("... and 1 more")


def test_rerun_after_a_killed_build_gives_the_same_shards(sources, tmp_path):
    out = str(tmp_path / "beam")
    # One split: each split is a pipeline of its own, whose workers start anew.
    first = sources["voc"](out, splits=("train",), num_shards=3, engine=BEAM, **QUIET)
    expected = _files(out)
    # What a killed build leaves: a temporary of an attempt, one shard missing,
    # another truncated, no manifest, the reports directory.
    shards = sorted(glob.glob(os.path.join(out, "train-*.tfrecord")))
    os.remove(shards[0])
    with open(shards[1], "r+b") as f:
        f.truncate(10)
    with open(shards[2] + ".incomplete-0123", "wb") as f:
        f.write(b"partial")
    os.remove(os.path.join(out, "train.manifest.json"))
    os.makedirs(os.path.join(out, ".train.beam"))
    again = sources["voc"](out, splits=("train",), num_shards=3, engine=BEAM, **QUIET)
    assert _files(out) == expected and again == first
    assert not glob.glob(os.path.join(out, ".*"))


def test_unknown_runner_is_named():
    with pytest.raises(ValueError, match="runner='Local' is not one of"):
        BeamEngine("Local")


def test_tool_builds_on_beam_and_names_bad_flags(tmp_path):
    import subprocess
    import sys

    from tests.helpers import ROOT

    info = write_voc_dataset(str(tmp_path / "voc"), num_train=4, num_val=2, with_sbd=False,
                             size_range=(40, 50))

    def run(*flags):
        return subprocess.run(
            [sys.executable, "tools/build_tfrecords.py", "voc", f"--voc_dir={info['voc_dir']}",
             f"--output_dir={tmp_path / 'out'}", "--noprogress", *flags],
            cwd=ROOT, capture_output=True, text=True, timeout=300)

    done = run("--runner=DirectRunner", "--beam_pipeline_options=direct_num_workers=2",
               "--num_shards=2", "--splits=train,val")
    assert done.returncode == 0, done.stderr[-2000:]
    assert "train: 4 examples, 2 shards, 0 skipped" in done.stdout
    with open(tmp_path / "out" / "val.manifest.json") as f:
        assert json.load(f)["beam"]["pipeline_options"] == ["--direct_num_workers=2"]
    bad = run("--beam_pipeline_options=direct_num_workers=2")
    assert bad.returncode != 0 and "--beam_pipeline_options needs --runner" in bad.stderr
    bad = run("--runner=Local")
    assert bad.returncode != 0 and "--runner" in bad.stderr


def test_sources_and_output_through_tf_io_gfile(tmp_path):
    """A file system other than the local one (TensorFlow's ram://, as gs:// would be):
    VOC + SBD read from it and shards written to it, equal to a local build's. In-memory
    mode: ram:// lives in one process."""
    import tensorflow as tf

    info = write_voc_dataset(str(tmp_path / "data"), num_train=5, num_val=2, num_sbd_only=2,
                             with_sbd=True, size_range=(40, 50))
    remote = f"ram://{tmp_path.name}"
    for directory, _, files in os.walk(str(tmp_path / "data")):
        target = remote + directory[len(str(tmp_path / "data")):]
        tf.io.gfile.makedirs(target)
        for name in files:
            tf.io.gfile.copy(os.path.join(directory, name), f"{target}/{name}")
    voc_dir = info["voc_dir"].replace(str(tmp_path / "data"), remote)
    sbd_dir = info["sbd_dir"].replace(str(tmp_path / "data"), remote)
    local = build_voc_aug(info["voc_dir"], info["sbd_dir"], str(tmp_path / "local"),
                          num_shards=2, num_workers=1, **QUIET)
    engine = BeamEngine("DirectRunner", ("--direct_running_mode=in_memory",))
    beam = build_voc_aug(voc_dir, sbd_dir, f"{remote}/out", num_shards=2, engine=engine,
                         **QUIET)
    for split, manifest in local.items():
        assert beam[split]["count"] == manifest["count"] > 0
        assert [s["sha256"] for s in beam[split]["shards"]] == \
            [s["sha256"] for s in manifest["shards"]]
        for shard in manifest["shards"]:
            with tf.io.gfile.GFile(f"{remote}/out/{shard['file']}", "rb") as f:
                remote_bytes = f.read()
            with open(tmp_path / "local" / shard["file"], "rb") as f:
                assert remote_bytes == f.read()
    assert tf.io.gfile.exists(f"{remote}/out/train_aug.manifest.json")
