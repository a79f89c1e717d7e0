"""The dataset's description, from the records to the run, the export and the masks."""

import json
import os
import shutil

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from deeplabv3_tf.data.dataset import (
    CITYSCAPES, CITYSCAPES_COLORS, PASCAL_VOC, DatasetInfo)
from deeplabv3_tf.data.palette_file import with_palette_file
from deeplabv3_tf.data.tfrecord_builders.cityscapes import build_cityscapes
from deeplabv3_tf.data.tfrecord_builders.folder import build_folder
from deeplabv3_tf.data.tfrecord_builders.cityscapes import read_cityscapes_label
from deeplabv3_tf.runs import EXPERIMENT_FILE
from deeplabv3_tf.configs.experiment import override, resolve_experiment
from deeplabv3_tf.configs.recipes import tiny_voc
from deeplabv3_tf.serving.export import export_saved_model
from deeplabv3_tf.serving.predict import predict_files
from deeplabv3_tf.serving.options import ExportOptions
from deeplabv3_tf.training.trainer import train
from tests.data import fixtures

QUIET = dict(progress=False, log=lambda _: None)
# write_folder's palette: black, red, green (VOC's class 1 and 2 are dark red and dark green).
FOLDER_COLOURS = [[0, 0, 0], [255, 0, 0], [0, 255, 0]]


def _train_tiny(records_dir, run_dir, *assignments, log=lambda _: None):
    experiment = resolve_experiment(tiny_voc(), [
        f"data.train_records={os.path.join(records_dir, 'train-*')!r}",
        "data.val_records=''", "train.steps=2", "train.batch_size=2",
        "data.crop_size=(33, 33)", "train.checkpoint_every=2", *assignments], log=log)
    train(experiment, run_dir, **QUIET)
    return experiment


def _mask_colours(path):
    return {tuple(c) for c in np.asarray(Image.open(path).convert("RGB")).reshape(-1, 3)}


def test_folder_colours_from_the_records_to_the_served_masks(tmp_path):
    root = str(tmp_path / "folder")
    fixtures.write_folder(root, num_classes=3, count=4, colour=True)
    manifest = build_folder(f"{root}/images", f"{root}/masks", {"train": f"{root}/train.txt"},
                            str(tmp_path / "records"),
                            palette_path=f"{root}/palette.json", **QUIET)["train"]
    assert manifest["dataset"] == {"name": "folder", "class_names": ["class0", "class1", "class2"],
                                   "colors": FOLDER_COLOURS, "ignore_label": 255, "label_ids": []}

    # tiny_voc is a 21-class recipe: the records' 3 classes, names and colours win.
    lines = []
    experiment = _train_tiny(str(tmp_path / "records"), str(tmp_path / "run"), log=lines.append)
    assert experiment.model.num_classes == 3
    assert experiment.data.class_names == ("class0", "class1", "class2")
    assert [list(c) for c in experiment.data.colors] == FOLDER_COLOURS
    assert any("folder, 3 classes (class0, class1, class2)" in line for line in lines)
    with open(tmp_path / "run" / EXPERIMENT_FILE) as f:
        assert json.load(f)["data"]["colors"] == FOLDER_COLOURS

    path = export_saved_model(str(tmp_path / "run"), str(tmp_path / "export"), ExportOptions(),
                              log=lambda _: None)
    metadata = tf.saved_model.load(path).signatures["metadata"](unused=tf.constant(0))
    assert metadata["palette"].numpy().tolist() == FOLDER_COLOURS
    assert [n.decode() for n in metadata["class_names"].numpy()] == ["class0", "class1", "class2"]
    assert metadata["dataset"].numpy() == b"folder"
    with open(os.path.join(path, "assets", "palette.txt")) as f:
        assert f.read() == "0 0 0\n255 0 0\n0 255 0\n"

    images = sorted(os.path.join(root, "images", n) for n in os.listdir(f"{root}/images"))
    allowed = {tuple(c) for c in FOLDER_COLOURS}
    for source in (path, str(tmp_path / "run")):
        out = tmp_path / ("served" if source == path else "checkpoint")
        results = predict_files(source, images, str(out), log=lambda _: None)
        seen = set()
        for result in results:
            colours = _mask_colours(result["outputs"]["mask"])
            assert colours <= allowed, (source, colours - allowed)
            seen |= colours
        assert len(seen) >= 2  # the masks hold more than one class


def test_export_palette_file_overrides_the_run(trained_run, tmp_path):
    colours = [[i, 255 - i, 7] for i in range(21)]
    palette = tmp_path / "palette.json"
    palette.write_text(json.dumps({"colors": colours}))
    path = export_saved_model(trained_run["run_dir"], str(tmp_path / "export"), ExportOptions(),
                              palette_file=str(palette), log=lambda _: None)
    metadata = tf.saved_model.load(path).signatures["metadata"](unused=tf.constant(0))
    assert metadata["palette"].numpy().tolist() == colours
    assert metadata["class_names"].numpy()[15] == b"person"  # names kept
    palette.write_text(json.dumps({"colors": colours[:3]}))
    with pytest.raises(ValueError, match=r"palette.json: 3 colors for 21 classes"):
        export_saved_model(trained_run["run_dir"], str(tmp_path / "export2"), ExportOptions(),
                           palette_file=str(palette), log=lambda _: None)


def test_cityscapes_records_official_colours_and_label_id_round_trip(tmp_path):
    fixtures.write_cityscapes(str(tmp_path / "cs"), per_city=2, size=(48, 64))
    manifest = build_cityscapes(str(tmp_path / "cs"), str(tmp_path / "records"),
                                splits=("train",), **QUIET)["train"]
    info = DatasetInfo.from_dict(manifest["dataset"])
    assert info == CITYSCAPES
    assert info.colors[0] == (128, 64, 128) and info.colors[13] == (0, 0, 142)  # road, car
    assert info.label_ids[:3] == (7, 8, 11) and info.label_ids[-1] == 33
    # label id -> train id -> label id gives back every evaluated label id.
    all_ids = np.arange(256, dtype=np.uint8).reshape(16, 16)
    path = str(tmp_path / "ids.png")
    Image.fromarray(all_ids).save(path)
    train_ids = read_cityscapes_label(path)
    evaluated = train_ids != 255
    assert evaluated.sum() == 19
    np.testing.assert_array_equal(np.asarray(info.label_ids)[train_ids[evaluated]],
                                  all_ids[evaluated])

    # A run on these records predicts label-id PNGs named as the test server expects.
    experiment = _train_tiny(str(tmp_path / "records"), str(tmp_path / "run"))
    assert experiment.data.dataset == "cityscapes"
    assert experiment.data.colors == CITYSCAPES_COLORS
    image = next(p for p in sorted((tmp_path / "cs").rglob("*_leftImg8bit.png")))
    [result] = predict_files(str(tmp_path / "run"), [str(image)], str(tmp_path / "out"),
                             label_ids=True, log=lambda _: None)
    written = result["outputs"]["label_ids"]
    assert os.path.basename(written) == image.name  # <city>_<seq>_<frame>_leftImg8bit.png
    ids = np.asarray(Image.open(written))
    classes = np.asarray(Image.open(result["outputs"]["labels"]))
    np.testing.assert_array_equal(ids, np.asarray(CITYSCAPES.label_ids)[classes])
    assert _mask_colours(result["outputs"]["mask"]) <= set(CITYSCAPES_COLORS)


def test_older_run_without_a_description_still_exports(trained_run, tmp_path, capsys):
    run = tmp_path / "old_run"
    shutil.copytree(trained_run["run_dir"], run)
    with open(run / EXPERIMENT_FILE) as f:
        values = json.load(f)
    for key in ("dataset", "colors", "label_ids"):
        del values["data"][key]
    with open(run / EXPERIMENT_FILE, "w") as f:
        json.dump(values, f)
    path = export_saved_model(str(run), str(tmp_path / "export"), ExportOptions(),
                              log=lambda _: None)
    export_saved_model(str(run), str(tmp_path / "export"), ExportOptions(), log=lambda _: None)
    metadata = tf.saved_model.load(path).signatures["metadata"](unused=tf.constant(0))
    assert metadata["palette"].numpy().tolist() == [list(c) for c in PASCAL_VOC.colors]
    assert metadata["label_ids"].numpy().tolist() == list(range(21))
    # Said once, naming the file.
    assert capsys.readouterr().err.count("has no dataset description") == 1


def test_records_give_classes_unless_set(tmp_path):
    root = str(tmp_path / "folder")
    fixtures.write_folder(root, num_classes=3, count=2)
    records = str(tmp_path / "records")
    build_folder(f"{root}/images", f"{root}/masks", {"train": f"{root}/train.txt"}, records,
                 num_classes=3, class_names=["bg", "road", "car"], ignore_label=99, **QUIET)
    given = [f"data.train_records={os.path.join(records, 'train-*')!r}"]
    # Only the number of classes given (it used to need the names again).
    experiment = resolve_experiment(tiny_voc(), given + ["model.num_classes=3"], log=print)
    assert experiment.data.class_names == ("bg", "road", "car")
    assert experiment.data.colors == PASCAL_VOC.colors[:3]  # no palette: the default map
    # Names set explicitly win over the records'.
    experiment = resolve_experiment(
        tiny_voc(), given + ["data.class_names=('a', 'b', 'c')"], log=print)
    assert experiment.data.class_names == ("a", "b", "c") and experiment.model.num_classes == 3
    with pytest.raises(ValueError, match=r"have 3 classes .*train.manifest.json.*num_classes=5"):
        resolve_experiment(tiny_voc(), given + ["model.num_classes=5"], log=print)

    # A manifest written before descriptions existed: its classes and names, said once.
    manifest_path = os.path.join(records, "train.manifest.json")
    with open(manifest_path) as f:
        manifest = json.load(f)
    del manifest["dataset"]
    with open(manifest_path, "w") as f:
        json.dump(manifest, f)
    experiment = resolve_experiment(tiny_voc(), given, log=print)
    assert experiment.data.class_names == ("bg", "road", "car")
    assert experiment.data.info.colors == PASCAL_VOC.colors[:3]


def test_palette_file_and_colour_checks(tmp_path):
    path = tmp_path / "p.json"
    path.write_text(json.dumps({"colors": [[1, 2, 3], [4, 5, 6]], "names": ["x", "y"],
                                "label_ids": [10, 20]}))
    info = with_palette_file(DatasetInfo("mine", ("a", "b"), ((0, 0, 0), (9, 9, 9))), str(path))
    assert info == DatasetInfo("mine", ("x", "y"), ((1, 2, 3), (4, 5, 6)), label_ids=(10, 20))
    path.write_text(json.dumps({"colors": [[1, 2, 300], [4, 5, 6]]}))
    with pytest.raises(ValueError, match=r"p.json: \[1, 2, 300\] is not an \[r, g, b\]"):
        with_palette_file(info, str(path))
    with pytest.raises(ValueError, match="3 data.colors for 21 classes"):
        override(tiny_voc(), ["data.colors=((0, 0, 0), (1, 1, 1), (2, 2, 2))"])
