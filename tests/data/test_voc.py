import hashlib
import io
import json
import os

import numpy as np
import pytest
import scipy.io
from PIL import Image

from deeplabv3_tf.data.tfrecord_builders.voc import build_voc, build_voc_aug
from deeplabv3_tf.data.synthetic import write_voc_dataset
from tests.data.fixtures import parse_segmentation, read_records

DEEPLAB_KEYS = {
    "image/encoded", "image/filename", "image/format", "image/height", "image/width",
    "image/channels", "image/segmentation/class/encoded", "image/segmentation/class/format",
}


@pytest.fixture(scope="module")
def voc(tmp_path_factory):
    root = tmp_path_factory.mktemp("voc")
    return write_voc_dataset(str(root), num_train=6, num_val=4, num_sbd_only=3)


def _by_id(output_dir, split):
    return {r[0]: r for r in map(parse_segmentation,
                                 read_records(os.path.join(output_dir, f"{split}-*")))}


def test_voc_records_hold_exact_labels_and_original_jpegs(voc, tmp_path):
    manifests = build_voc(voc["voc_dir"], str(tmp_path), num_workers=2, progress=False,
                          log=lambda _: None)
    assert set(manifests) == {"train", "val", "trainval"}
    records = _by_id(tmp_path, "train")
    assert sorted(records) == voc["train"]
    for example_id, (_, image, label, feature) in records.items():
        assert set(feature) == DEEPLAB_KEYS
        mask_path = os.path.join(voc["voc_dir"], "SegmentationClass", f"{example_id}.png")
        palette_png = Image.open(mask_path)
        assert palette_png.mode == "P"
        np.testing.assert_array_equal(label, np.asarray(palette_png))
        assert 255 in label  # void bands survive
        jpeg = os.path.join(voc["voc_dir"], "JPEGImages", f"{example_id}.jpg")
        with open(jpeg, "rb") as f:
            assert feature["image/encoded"].bytes_list.value[0] == f.read()
        assert feature["image/format"].bytes_list.value[0] == b"jpeg"
        assert feature["image/height"].int64_list.value[0] == image.shape[0] == label.shape[0]
        assert feature["image/width"].int64_list.value[0] == image.shape[1] == label.shape[1]
        assert feature["image/channels"].int64_list.value[0] == 3
        assert feature["image/segmentation/class/format"].bytes_list.value[0] == b"png"
    assert sorted(_by_id(tmp_path, "trainval")) == sorted(voc["train"] + voc["val"])


def test_manifest_counts_and_checksums(voc, tmp_path):
    manifest = build_voc(voc["voc_dir"], str(tmp_path), splits=("val",), num_shards=3,
                         progress=False, log=lambda _: None)["val"]
    with open(tmp_path / "val.manifest.json") as f:
        assert json.load(f) == manifest
    assert manifest["count"] == len(voc["val"])
    assert manifest["num_classes"] == 21 and manifest["ignore_label"] == 255
    assert manifest["class_names"][15] == "person"
    assert manifest["source"]["format"] == "voc"
    assert [s["file"] for s in manifest["shards"]] == [
        f"val-{i:05d}-of-00003.tfrecord" for i in range(3)]
    expected = np.zeros(21, np.int64)
    for _, _, label, _ in _by_id(tmp_path, "val").values():
        expected += np.bincount(label[label != 255].ravel(), minlength=21)
    assert manifest["class_pixel_counts"] == expected.tolist()
    for shard in manifest["shards"]:
        with open(tmp_path / shard["file"], "rb") as f:
            assert hashlib.sha256(f.read()).hexdigest() == shard["sha256"]
        assert shard["count"] == len(read_records(str(tmp_path / shard["file"])))
    assert not list(tmp_path.glob("*.incomplete")) and not list(tmp_path.glob(".*progress*"))


def test_train_aug_rule_and_voc_masks_win(voc, tmp_path):
    manifest = build_voc_aug(voc["voc_dir"], voc["sbd_dir"], str(tmp_path), num_workers=2,
                             progress=False, log=lambda _: None)["train_aug"]
    expected_ids = sorted((set(voc["sbd_train"]) | set(voc["sbd_val"]) | set(voc["train"]))
                          - set(voc["val"]))
    assert expected_ids == voc["train_aug"]
    records = _by_id(tmp_path, "train_aug")
    assert sorted(records) == expected_ids and manifest["count"] == len(expected_ids)
    assert not set(records) & set(voc["val"])
    sbd_only = set(voc["sbd_train"]) - set(voc["train"]) - set(voc["val"])
    assert sbd_only
    for example_id, (_, _, label, _) in records.items():
        sbd = scipy.io.loadmat(os.path.join(voc["sbd_dir"], "cls", f"{example_id}.mat"))
        sbd_label = sbd["GTcls"][0]["Segmentation"][0]
        if example_id in sbd_only:
            np.testing.assert_array_equal(label, sbd_label)
            assert 255 not in label
        else:
            voc_mask = np.asarray(Image.open(
                os.path.join(voc["voc_dir"], "SegmentationClass", f"{example_id}.png")))
            np.testing.assert_array_equal(label, voc_mask)
            # Same objects as SBD, plus VOC's void bands.
            np.testing.assert_array_equal(label[label != 255], sbd_label[label != 255])


def _shard_hashes(manifest):
    return [s["sha256"] for s in manifest["shards"]]


def test_output_does_not_depend_on_worker_count(voc, tmp_path):
    one = build_voc_aug(voc["voc_dir"], voc["sbd_dir"], str(tmp_path / "one"), splits=("train_aug",),
                        num_workers=1, num_shards=3, progress=False, log=lambda _: None)
    two = build_voc_aug(voc["voc_dir"], voc["sbd_dir"], str(tmp_path / "two"), splits=("train_aug",),
                        num_workers=2, num_shards=3, progress=False, log=lambda _: None)
    assert _shard_hashes(one["train_aug"]) == _shard_hashes(two["train_aug"])


def test_images_of_other_modes_are_converted(tmp_path):
    info = write_voc_dataset(str(tmp_path / "src"), num_train=3, num_val=1, with_sbd=False)
    jpegs = os.path.join(info["voc_dir"], "JPEGImages")
    ids = info["train"]
    paths = [os.path.join(jpegs, f"{i}.jpg") for i in ids]
    Image.open(paths[0]).convert("L").save(paths[0])
    Image.open(paths[1]).convert("CMYK").save(paths[1])
    # An RGBA PNG under a .jpg name: the content decides, not the extension.
    Image.open(paths[2]).convert("RGBA").save(paths[2], format="PNG")
    build_voc(info["voc_dir"], str(tmp_path / "out"), splits=("train",), progress=False,
              log=lambda _: None)
    records = _by_id(tmp_path / "out", "train")
    for example_id in ids:
        _, image, label, feature = records[example_id]
        assert image.ndim == 3 and image.shape[2] == 3 and image.shape[:2] == label.shape
    assert records[ids[2]][3]["image/format"].bytes_list.value[0] == b"png"
    grey = records[ids[0]][1]
    np.testing.assert_array_equal(grey[..., 0], grey[..., 1])


def test_sixteen_bit_png_image_is_converted(tmp_path):
    from deeplabv3_tf.data.images import read_image

    values = (np.arange(40 * 30).reshape(30, 40) * 50).astype(np.uint16)
    path = str(tmp_path / "deep.png")
    Image.fromarray(values).save(path)
    encoded = read_image(path)
    decoded = np.asarray(Image.open(io.BytesIO(encoded.data)))
    assert decoded.shape == (30, 40, 3) and decoded.dtype == np.uint8
    assert encoded.format == "png" and decoded.max() > 200
