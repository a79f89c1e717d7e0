"""Shared fixtures."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import pytest  # noqa: E402


@pytest.fixture
def dtype_policy():
    """Sets a global dtype policy for one test and restores float32 after."""
    yield keras.mixed_precision.set_global_policy
    keras.mixed_precision.set_global_policy("float32")


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory):
    """A tiny_voc run trained for 30 steps on generated VOC records.

    Returns {"run_dir", "records_dir", "voc_dir", "val_records"}.
    """
    from deeplabv3_tf.data.tfrecord_builders.voc import build_voc
    from deeplabv3_tf.configs.experiment import override
    from deeplabv3_tf.configs.recipes import tiny_voc
    from deeplabv3_tf.data.synthetic import write_voc_dataset
    from deeplabv3_tf.training.trainer import train

    root = tmp_path_factory.mktemp("trained")
    info = write_voc_dataset(str(root / "data"), num_train=24, num_val=6, with_sbd=False,
                             size_range=(70, 100), max_objects=2)
    build_voc(info["voc_dir"], str(root / "records"), splits=("train", "val"),
              progress=False, log=lambda _: None)
    experiment = override(tiny_voc(), [
        f"data.train_records={str(root / 'records' / 'train-*')!r}",
        f"data.val_records={str(root / 'records' / 'val-*')!r}",
        "train.steps=30", "data.crop_size=(65, 65)", "train.checkpoint_every=30"])
    train(experiment, str(root / "run"), progress=False, log=lambda _: None)
    return {"run_dir": str(root / "run"), "records_dir": str(root / "records"),
            "voc_dir": info["voc_dir"], "val_records": str(root / "records" / "val-*"),
            "val_ids": info["val"]}


@pytest.fixture(scope="session")
def trained_plus_run(trained_run, tmp_path_factory):
    """A tiny_voc_plus (DeepLabv3+) run: started from `trained_run` (its encoder
    carried over, decoder new), trained 30 more steps on the same records.

    Returns {"run_dir", "log"} (the training log's lines).
    """
    from deeplabv3_tf.configs.experiment import override
    from deeplabv3_tf.configs.recipes import tiny_voc_plus
    from deeplabv3_tf.training.trainer import train

    run = str(tmp_path_factory.mktemp("trained_plus") / "run")
    experiment = override(tiny_voc_plus(), [
        f"data.train_records={trained_run['records_dir'] + '/train-*'!r}",
        f"data.val_records={trained_run['val_records']!r}",
        f"train.init={trained_run['run_dir']!r}",
        "train.steps=30", "data.crop_size=(65, 65)", "train.checkpoint_every=30"])
    lines = []
    train(experiment, run, progress=False, log=lines.append)
    return {"run_dir": run, "log": lines}
