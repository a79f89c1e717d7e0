"""COCO, Cityscapes, folder and classification builders, read back."""

import io
import json

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from deeplabv3_tf.data import make_classification_dataset
from deeplabv3_tf.data.images import InvalidExampleError
from deeplabv3_tf.data.tfrecord_builders.cityscapes import build_cityscapes
from deeplabv3_tf.data.tfrecord_builders.classification import build_classification
from deeplabv3_tf.data.tfrecord_builders.coco import build_coco
from deeplabv3_tf.data.tfrecord_builders.folder import build_folder
from deeplabv3_tf.data.tfrecord_builders.cityscapes import LABEL_ID_TO_TRAIN_ID
from tests.data import fixtures

QUIET = dict(progress=False, log=lambda _: None)


def _labels(pattern):
    return {i: label for i, _, label, _ in map(fixtures.parse_segmentation,
                                               fixtures.read_records(pattern))}


def test_coco_voc_classes_conflicts_crowds_and_filter(tmp_path):
    annotations, images_dir, expected = fixtures.write_coco(str(tmp_path / "coco"))
    manifest = build_coco(annotations, images_dir, str(tmp_path / "out"), split="train",
                          num_workers=2, **QUIET)["train"]
    labels = _labels(str(tmp_path / "out" / "train-*"))
    assert sorted(labels) == ["000000000001", "000000000002"]
    np.testing.assert_array_equal(labels["000000000001"], expected[1])
    np.testing.assert_array_equal(labels["000000000002"], expected[2])
    # Person/dog overlap and the crowd region are void; giraffe is background.
    assert (labels["000000000001"][30:50, 40:60] == 255).all()
    assert (labels["000000000001"][70:80, 0:20] == 255).all()
    assert set(np.unique(labels["000000000002"])) == {0, 7}
    assert manifest["num_filtered"] == 1 and manifest["count"] == 2
    assert manifest["class_names"][18] == "sofa"


def test_coco_bad_json_is_named(tmp_path):
    path = tmp_path / "broken.json"
    path.write_text("{not json")
    with pytest.raises(ValueError, match="broken.json"):
        build_coco(str(path), str(tmp_path), str(tmp_path / "out"), **QUIET)


def test_cityscapes_label_ids_map_to_train_ids(tmp_path):
    expected = fixtures.write_cityscapes(str(tmp_path / "cs"))
    manifest = build_cityscapes(str(tmp_path / "cs"), str(tmp_path / "out"), splits=("train",),
                                **QUIET)["train"]
    labels = _labels(str(tmp_path / "out" / "train-*"))
    assert sorted(labels) == sorted(expected)
    lut = np.full(256, 255)
    for label_id, train_id in LABEL_ID_TO_TRAIN_ID.items():
        lut[label_id] = train_id
    for stem, label_ids in expected.items():
        np.testing.assert_array_equal(labels[stem], lut[label_ids])
    assert manifest["num_classes"] == 19 and len(manifest["class_pixel_counts"]) == 19
    assert set(np.unique(np.concatenate([l.ravel() for l in labels.values()]))) == \
        set(range(19)) | {255}


def test_folder_index_masks_with_custom_ignore(tmp_path):
    ids, expected = fixtures.write_folder(str(tmp_path / "f"), num_classes=4, ignore_value=99)
    root = tmp_path / "f"
    manifest = build_folder(str(root / "images"), str(root / "masks"),
                            {"train": str(root / "train.txt")}, str(tmp_path / "out"),
                            num_classes=4, ignore_label=99, **QUIET)["train"]
    labels = _labels(str(tmp_path / "out" / "train-*"))
    for example_id in ids:
        np.testing.assert_array_equal(labels[example_id], expected[example_id])
    assert manifest["ignore_label"] == 255 and manifest["source"]["source_ignore_label"] == 99


def test_folder_stray_255_is_reported_when_void_is_another_value(tmp_path):
    ids, _ = fixtures.write_folder(str(tmp_path / "f"), num_classes=4, ignore_value=99)
    root = tmp_path / "f"
    mask_path = root / "masks" / f"{ids[0]}.png"
    mask = np.asarray(Image.open(mask_path)).copy()
    mask[0, 0] = 255
    Image.fromarray(mask).save(mask_path)
    with pytest.raises(InvalidExampleError, match=r"img_000.png: mask values \[255\]"):
        build_folder(str(root / "images"), str(root / "masks"), {"train": str(root / "train.txt")},
                     str(tmp_path / "out"), num_classes=4, ignore_label=99, **QUIET)


def test_folder_colour_masks_with_palette(tmp_path):
    ids, expected = fixtures.write_folder(str(tmp_path / "f"), num_classes=4, colour=True)
    root = tmp_path / "f"
    manifest = build_folder(str(root / "images"), str(root / "masks"),
                            {"train": str(root / "train.txt")}, str(tmp_path / "out"),
                            palette_path=str(root / "palette.json"), **QUIET)["train"]
    labels = _labels(str(tmp_path / "out" / "train-*"))
    for example_id in ids:
        np.testing.assert_array_equal(labels[example_id], expected[example_id])
    assert manifest["num_classes"] == 4
    assert manifest["class_names"] == ["class0", "class1", "class2", "class3"]


def test_folder_colour_not_in_palette_names_file_and_colour(tmp_path):
    ids, _ = fixtures.write_folder(str(tmp_path / "f"), num_classes=4, colour=True)
    root = tmp_path / "f"
    mask_path = root / "masks" / f"{ids[2]}.png"
    mask = np.asarray(Image.open(mask_path)).copy()
    mask[3, 5] = (12, 34, 56)
    Image.fromarray(mask).save(mask_path)
    with pytest.raises(InvalidExampleError,
                       match=r"img_002.png: colour \(12, 34, 56\) \(first at row 3, column 5\)"):
        build_folder(str(root / "images"), str(root / "masks"), {"train": str(root / "train.txt")},
                     str(tmp_path / "out"), palette_path=str(root / "palette.json"), **QUIET)


def test_folder_bad_palette_file(tmp_path):
    root = tmp_path / "f"
    fixtures.write_folder(str(root), num_classes=3, colour=True)
    (root / "palette.json").write_text(json.dumps({"colors": [[0, 0, 0], [300, 0, 0]]}))
    with pytest.raises(ValueError, match=r"palette.json: \[300, 0, 0\]"):
        build_folder(str(root / "images"), str(root / "masks"), {"train": str(root / "train.txt")},
                     str(tmp_path / "out"), palette_path=str(root / "palette.json"), **QUIET)


@pytest.mark.parametrize("fmt", ["csv", "jsonl"])
def test_classification_labels_sorted_deduplicated(tmp_path, fmt):
    manifest_path = fixtures.write_classification(str(tmp_path / "cls"), fmt)
    manifest = build_classification(manifest_path, str(tmp_path / "out"), num_workers=2,
                                    **QUIET)["train"]
    assert manifest["num_classes"] == 10 and manifest["count"] == 4
    assert manifest["class_image_counts"] == [1, 1, 1, 1, 1, 1, 0, 1, 0, 1]
    records = [tf.train.Example.FromString(r).features.feature
               for r in fixtures.read_records(str(tmp_path / "out" / "train-*"))]
    by_id = {f["image/source_id"].bytes_list.value[0].decode(): f for f in records}
    first = by_id["img/a"]
    assert list(first["image/class/label"].int64_list.value) == [2, 7]
    np.testing.assert_allclose(first["image/class/confidence"].float_list.value, [0.9, 0.8])
    assert list(first["image/class/text"].bytes_list.value) == [b"two", b"seven"]
    assert Image.open(io.BytesIO(first["image/encoded"].bytes_list.value[0])).size == (56, 40)

    dataset = make_classification_dataset(str(tmp_path / "out" / "train-*"), num_classes=10,
                                          training=False, batch_size=4, image_size=32,
                                          use_confidence=True)
    batch = next(iter(dataset))
    assert batch["image"].shape == (4, 32, 32, 3)
    targets = {tuple(np.nonzero(t)[0]): t for t in batch["target"].numpy()}
    np.testing.assert_allclose(targets[(2, 7)][[2, 7]], [0.9, 0.8], rtol=1e-6)
    multi_hot = make_classification_dataset(str(tmp_path / "out" / "train-*"), num_classes=10,
                                            training=True, batch_size=2, image_size=32)
    batch = next(iter(multi_hot))
    assert batch["image"].shape == (2, 32, 32, 3)
    assert set(np.unique(batch["target"].numpy())) <= {0.0, 1.0}


def test_classification_bad_rows_name_the_line(tmp_path):
    path = tmp_path / "m.csv"
    path.write_text("image,labels\na.jpg,1;x\n")
    with pytest.raises(ValueError, match="m.csv:2"):
        build_classification(str(path), str(tmp_path / "out"), **QUIET)
    path.write_text("image,labels\na.jpg,4\n")
    with pytest.raises(ValueError, match=r"m.csv:2: label 4 >= num_classes \(3\)"):
        build_classification(str(path), str(tmp_path / "out"), num_classes=3, **QUIET)
    with pytest.raises(FileNotFoundError, match="nope.csv"):
        build_classification(str(tmp_path / "nope.csv"), str(tmp_path / "out"), **QUIET)
