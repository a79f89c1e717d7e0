"""Every kind of bad input fails with the file named, or is skipped and counted."""

import functools
import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from deeplabv3_tf.data.images import InvalidExampleError
from deeplabv3_tf.data.tfrecord_builders.voc import build_voc
from deeplabv3_tf.data.tfrecord_builders.shards import (
    SplitSpec, Task, WorkerDiedError, write_split)
from deeplabv3_tf.data.synthetic import write_voc_dataset
from tests.data.fixtures import encode_index, read_records
from tests.helpers import ROOT

QUIET = dict(progress=False, log=lambda _: None)


@pytest.fixture(scope="module")
def pristine(tmp_path_factory):
    root = tmp_path_factory.mktemp("pristine")
    return str(root), write_voc_dataset(str(root), num_train=5, num_val=2, with_sbd=False)


@pytest.fixture
def voc(pristine, tmp_path):
    root, info = pristine
    shutil.copytree(root, tmp_path / "data")
    voc_dir = str(tmp_path / "data" / os.path.relpath(info["voc_dir"], root))
    return voc_dir, info["train"]


def _jpeg(voc_dir, example_id):
    return os.path.join(voc_dir, "JPEGImages", f"{example_id}.jpg")


def _mask(voc_dir, example_id):
    return os.path.join(voc_dir, "SegmentationClass", f"{example_id}.png")


def truncated_image(voc_dir, ids):
    path = _jpeg(voc_dir, ids[1])
    with open(path, "rb") as f:
        data = f.read()
    with open(path, "wb") as f:
        f.write(data[: len(data) // 2])
    return path, "not a readable image"


def not_an_image(voc_dir, ids):
    path = _jpeg(voc_dir, ids[1])
    with open(path, "w") as f:
        f.write("this is text")
    return path, "not a readable image"


def size_mismatch(voc_dir, ids):
    path = _mask(voc_dir, ids[1])
    mask = Image.open(path)
    mask.crop((0, 0, mask.width - 3, mask.height)).save(path)
    return path, r"mask is \d+x\d+ \(WxH\) but image .*\.jpg is"


def label_out_of_range(voc_dir, ids):
    path = _mask(voc_dir, ids[1])
    mask = np.asarray(Image.open(path)).copy()
    mask[0, 0] = 30
    image = Image.frombytes("P", mask.shape[::-1], mask.tobytes())
    image.putpalette(Image.open(path).getpalette())
    image.save(path)
    return path, r"mask values \[30\] are outside \{0..20, 255\}"


def colour_mask(voc_dir, ids):
    path = _mask(voc_dir, ids[1])
    Image.open(path).convert("RGB").save(path)
    return path, r"a colour \(RGB\) mask where an index mask"


def missing_image(voc_dir, ids):
    path = _jpeg(voc_dir, ids[1])
    os.remove(path)
    return path, "file not found"


def missing_mask(voc_dir, ids):
    path = _mask(voc_dir, ids[1])
    os.remove(path)
    return path, "file not found"


def duplicate_id(voc_dir, ids):
    path = os.path.join(voc_dir, "ImageSets", "Segmentation", "train.txt")
    with open(path, "a") as f:
        f.write(f"{ids[1]}\n")
    return path, f"duplicate id '{ids[1]}'"


@pytest.mark.parametrize("corrupt", [
    truncated_image, not_an_image, size_mismatch, label_out_of_range, colour_mask,
    missing_image, missing_mask, duplicate_id])
def test_bad_example_fails_naming_the_file_or_is_skipped(voc, tmp_path, corrupt):
    voc_dir, ids = voc
    path, message = corrupt(voc_dir, ids)
    out = tmp_path / "out"
    with pytest.raises(InvalidExampleError, match=message) as error:
        build_voc(voc_dir, str(out), splits=("train",), num_workers=2, num_shards=2, **QUIET)
    assert path in str(error.value)
    assert not list(out.glob("*.incomplete")) and not (out / "train.manifest.json").exists()

    manifest = build_voc(voc_dir, str(out), splits=("train",), num_workers=2, num_shards=2,
                         skip_invalid=True, **QUIET)["train"]
    expected_count = len(ids) if corrupt is duplicate_id else len(ids) - 1
    assert manifest["count"] == expected_count == len(read_records(str(out / "train-*")))
    assert manifest["num_skipped"] == 1
    assert manifest["skipped"][0]["id"] == ids[1]
    assert path in manifest["skipped"][0]["error"]


def test_empty_split_is_an_error(voc, tmp_path):
    voc_dir, _ = voc
    path = os.path.join(voc_dir, "ImageSets", "Segmentation", "train.txt")
    open(path, "w").close()
    with pytest.raises(ValueError, match="empty.*train.txt"):
        build_voc(voc_dir, str(tmp_path / "out"), splits=("train",), **QUIET)


def test_missing_dataset_and_list_are_named(voc, tmp_path):
    voc_dir, _ = voc
    with pytest.raises(FileNotFoundError, match="nowhere"):
        build_voc(str(tmp_path / "nowhere"), str(tmp_path / "out"), **QUIET)
    with pytest.raises(FileNotFoundError, match="test.txt"):
        build_voc(voc_dir, str(tmp_path / "out"), splits=("test",), **QUIET)


KILLABLE_BUILD = textwrap.dedent("""
    import sys, time
    from deeplabv3_tf.data.tfrecord_builders import voc
    encode = voc.encode_segmentation
    def slow_encode(task, num_classes):
        time.sleep(float(sys.argv[3]))
        return encode(task, num_classes)
    voc.encode_segmentation = slow_encode
    voc.build_voc(sys.argv[1], sys.argv[2], splits=("train",), num_workers=1,
                  num_shards=8, progress=False)
""")


@pytest.mark.parametrize("kill_signal", [signal.SIGKILL, signal.SIGTERM])
def test_killed_build_leaves_no_complete_looking_shard_and_rerun_finishes(
        tmp_path, kill_signal):
    info = write_voc_dataset(str(tmp_path / "data"), num_train=16, num_val=1, with_sbd=False,
                             size_range=(40, 60))
    out = tmp_path / "out"
    process = subprocess.Popen(
        [sys.executable, "-c", KILLABLE_BUILD, info["voc_dir"], str(out), "0.15"],
        cwd=ROOT)
    progress = out / ".train.progress.json"
    deadline = time.time() + 120
    while time.time() < deadline:
        if progress.exists():
            with open(progress) as f:
                try:
                    if len(json.load(f)["shards"]) >= 2:
                        break
                except json.JSONDecodeError:
                    pass
        time.sleep(0.02)
    process.send_signal(kill_signal)
    process.wait(timeout=60)
    assert not (out / "train.manifest.json").exists()
    with open(progress) as f:
        done = json.load(f)["shards"]
    assert 2 <= len(done) < 8
    finals = sorted(p.name for p in out.glob("train-*-of-00008.tfrecord"))
    # Every shard under its final name is complete: listed and with all its records.
    assert finals == sorted(s["file"] for s in done.values())
    for shard in done.values():
        assert len(read_records(str(out / shard["file"]))) == shard["count"] == 2

    lines = []
    resumed = build_voc(info["voc_dir"], str(out), splits=("train",), num_shards=8,
                        progress=False, log=lines.append)["train"]
    assert any("resuming" in line for line in lines)
    clean = build_voc(info["voc_dir"], str(tmp_path / "clean"), splits=("train",),
                      num_shards=8, **QUIET)["train"]
    assert resumed["shards"] == clean["shards"] and resumed["count"] == 16
    assert not list(out.glob("*.incomplete")) and not progress.exists()


def test_dead_worker_fails_the_build_and_rerun_finishes(tmp_path):
    tasks = [Task(f"ex{i:02d}", (f"ex{i:02d}",), payload=i) for i in range(24)]
    spec = SplitSpec(num_classes=1, source={"generated": "index"},
                     stats_name="class_image_counts")
    out = tmp_path / "out"
    with pytest.raises(WorkerDiedError, match="worker process died.*Rerun the same command"):
        write_split(str(out), "train", tasks, functools.partial(encode_index, die_at=13),
                    spec, num_shards=4, num_workers=2, **QUIET)
    assert not list(out.glob("*.incomplete")) and not (out / "train.manifest.json").exists()
    with open(out / ".train.progress.json") as f:
        done = json.load(f)["shards"]
    assert set(done) <= {"0", "1"}  # Shard 2 holds example 13.

    lines = []
    manifest = write_split(str(out), "train", tasks, encode_index, spec, num_shards=4,
                           num_workers=2, progress=False, log=lines.append)
    assert manifest["count"] == 24 and (not done or any("resuming" in x for x in lines))
    indices = [tf.train.Example.FromString(r).features.feature["index"].int64_list.value[0]
               for r in read_records(str(out / "train-*"))]
    assert indices == list(range(24))


ORPHANING_BUILD = textwrap.dedent("""
    import functools, sys
    from deeplabv3_tf.data.tfrecord_builders.shards import SplitSpec, Task, write_split
    from tests.data.fixtures import encode_index
    tasks = [Task(f"ex{i}", (f"ex{i}",), payload=i) for i in range(2000)]
    write_split(sys.argv[1], "train", tasks,
                functools.partial(encode_index, pid_dir=sys.argv[2], delay=0.05),
                SplitSpec(num_classes=1, source={}), num_shards=2, num_workers=2,
                progress=False)
""")


def _running(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"  # A zombie has ended.
    except FileNotFoundError:
        return False


@pytest.mark.skipif(not os.path.exists("/proc/self/stat"), reason="reads /proc")
def test_workers_end_when_the_build_is_killed(tmp_path):
    pid_dir = tmp_path / "pids"
    pid_dir.mkdir()
    process = subprocess.Popen(
        [sys.executable, "-c", ORPHANING_BUILD, str(tmp_path / "out"), str(pid_dir)],
        cwd=ROOT)
    deadline = time.time() + 120
    while len(list(pid_dir.iterdir())) < 2 and time.time() < deadline:
        time.sleep(0.05)
    workers = [int(p.name) for p in pid_dir.iterdir()]
    assert len(workers) == 2 and process.pid not in workers
    assert all(_running(pid) for pid in workers)
    process.kill()  # SIGKILL: no cleanup runs in the build's process.
    process.wait(timeout=60)
    deadline = time.time() + 30
    while any(_running(pid) for pid in workers) and time.time() < deadline:
        time.sleep(0.1)
    assert not any(_running(pid) for pid in workers)


def test_rerun_with_other_inputs_starts_over(voc, tmp_path):
    voc_dir, ids = voc
    out = tmp_path / "out"
    build_voc(voc_dir, str(out), splits=("train",), num_shards=2, **QUIET)
    with open(os.path.join(voc_dir, "ImageSets", "Segmentation", "train.txt"), "w") as f:
        f.write("".join(f"{i}\n" for i in ids[:3]))
    manifest = build_voc(voc_dir, str(out), splits=("train",), num_shards=2, **QUIET)["train"]
    assert manifest["count"] == 3 == len(read_records(str(out / "train-*")))
