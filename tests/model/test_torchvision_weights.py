"""torchvision weights imported into the model give torchvision's outputs.

The references are torchvision's models (`deeplabv3_resnet50` with its
auxiliary head, `resnet50`) with random, non-trivial weights, written with
their outputs by `torchvision_reference.py` in a separate process: from
torchvision itself where it is installed, else from `torch_replica.py` (the
same modules and state_dict names in plain torch), which
`test_torch_replica_equals_torchvision` holds equal to torchvision.

torch comes from requirements-torch.txt, which `.ci/run` installs; where it is
missing these tests are skipped, unless DEEPLABV3_REQUIRE_TORCH is set (CI
sets it), in which case they fail.
"""

import importlib.util
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from deeplabv3_tf.runs import load_trained_model
from deeplabv3_tf.runs import load_experiment
from deeplabv3_tf.model.classifier import build_classifier
from deeplabv3_tf.model.weights.torchvision import TORCH_MISSING, load_state_dict, read_state_dict
from deeplabv3_tf.apps.import_weights import import_torchvision
from deeplabv3_tf.runs import latest_checkpoint, restore_model
from tests.helpers import ROOT, assert_close

HAVE_TORCH = importlib.util.find_spec("torch") is not None
if not HAVE_TORCH and not os.environ.get("DEEPLABV3_REQUIRE_TORCH"):
    pytest.skip("pip install -r requirements-torch.txt", allow_module_level=True)
# Asked in another process: torchvision crashes when imported after TensorFlow,
# and PyPI's torchvision does not import beside a CPU build of torch.
HAVE_TORCHVISION = HAVE_TORCH and importlib.util.find_spec("torchvision") is not None and (
    subprocess.run([sys.executable, "-c", "import torchvision"], capture_output=True).returncode == 0)
SOURCE = "torchvision" if HAVE_TORCHVISION else "replica"

HERE = os.path.dirname(os.path.abspath(__file__))
SIZES = ("321x321", "320x480")
# torch float32 against float64 differs by ~4e-4 on these models (logits of std
# 2-7); TensorFlow against torch by up to 2.2e-4 on one CPU. Round-off grows with
# the magnitude of the values summed, so the tolerance is relative to the
# largest |logit| (a wrong dilation moves logits by ~11, BN eps 1e-3 by ~6).
REL = 1e-4


def torchvision_reference(arch: str, seed: int, directory, sizes=SIZES, source=SOURCE):
    """(path of the .pth, {size: {"images", "out"[, "aux"]}}) from torchvision's model."""
    subprocess.run([sys.executable, os.path.join(HERE, "torchvision_reference.py"), source,
                    arch, str(seed), str(directory), *sizes], check=True)
    arrays = np.load(os.path.join(directory, f"{arch}.npz"))
    outputs = {}
    for key in arrays.files:
        size, name = key.split("/")
        outputs.setdefault(size, {})[name] = arrays[key]
    return os.path.join(directory, f"{arch}.pth"), outputs


@pytest.mark.numerics
@pytest.mark.skipif(not HAVE_TORCHVISION, reason="torchvision is not installed or does not import")
@pytest.mark.parametrize("arch", ["deeplabv3_resnet101", "resnet101",
                                  "deeplabv3_mobilenet_v3_large", "mobilenet_v3_large"])
def test_torch_replica_equals_torchvision(arch, tmp_path):
    """The replica's state_dict loads strictly into torchvision's model, which then
    gives the replica's outputs."""
    torchvision_reference(arch, 5, tmp_path, ("65x77",), source="replica")
    check = subprocess.run(
        [sys.executable, os.path.join(HERE, "torchvision_reference.py"), "check", arch,
         str(tmp_path)], check=True, capture_output=True, text=True)
    name, difference = check.stdout.split()
    assert name == "max_abs_difference" and float(difference) <= 1e-5


@pytest.fixture(scope="module")
def deeplab_r50(tmp_path_factory):
    """torchvision DeepLabv3-R50 with aux head, random weights, its outputs and imported run."""
    directory = tmp_path_factory.mktemp("deeplab_r50")
    pth, outputs = torchvision_reference("deeplabv3_resnet50", 0, directory,
                                         SIZES + ("97x131", "161x241"))
    run = str(directory / "run")
    provenance = import_torchvision("deeplabv3_resnet50", pth, run, log=lambda _: None)
    return outputs, pth, run, provenance


@pytest.mark.parametrize("size", SIZES)
def test_deeplabv3_r50_logits_equal_torchvision(deeplab_r50, size):
    reference, _, run, _ = deeplab_r50
    images, expected = reference[size]["images"], reference[size]["out"]
    # The run as export and evaluation load it: inference graph, no aux head.
    model, experiment, _ = load_trained_model(run)
    actual = model(images, training=False).numpy()
    height, width = (int(v) for v in size.split("x"))
    assert actual.shape == expected.shape == (1, height, width, 21)
    # Logits are O(1), so the tolerance is meaningful.
    assert 0.3 < expected.std() < 30
    assert_close(actual, expected, rel=REL)
    assert experiment.model.output_stride == 8
    assert experiment.data.class_names[15] == "person"


def test_deeplabv3_aux_head_equals_torchvision(deeplab_r50):
    from deeplabv3_tf.model.deeplabv3 import AUX_LOGITS, LOGITS, build_deeplabv3

    reference, _, run, _ = deeplab_r50
    expected = reference["97x131"]
    experiment = load_experiment(run)
    assert experiment.model.aux_head
    model = build_deeplabv3(experiment.model)  # with the aux head, as trained
    restore_model(model, latest_checkpoint(run))
    outputs = model(expected["images"], training=False)
    assert_close(outputs[LOGITS].numpy(), expected["out"], rel=REL)
    assert_close(outputs[AUX_LOGITS].numpy(), expected["aux"], rel=REL)


def test_import_writes_a_run_with_provenance(deeplab_r50):
    _, pth, run, provenance = deeplab_r50
    assert sorted(f for f in os.listdir(run) if not f.startswith("ckpt-")) == [
        "checkpoint", "experiment.json", "import.json"]
    with open(os.path.join(run, "import.json")) as f:
        saved = json.load(f)
    assert saved == provenance
    assert saved["architecture"] == "deeplabv3_resnet50"
    # Every entry but the BN counters is assigned.
    state = read_state_dict(pth)
    counters = sum(k.endswith("num_batches_tracked") for k in state)
    assert saved["entries_assigned"] == len(state) - counters > 300
    assert not [f for f in os.listdir(os.path.dirname(run)) if "importing" in f]
    with pytest.raises(FileExistsError, match="--overwrite"):
        import_torchvision("deeplabv3_resnet50", pth, run, log=lambda _: None)


@pytest.fixture(scope="module")
def resnet50(tmp_path_factory):
    directory = tmp_path_factory.mktemp("resnet50")
    pth, outputs = torchvision_reference("resnet50", 2, directory)
    run = str(directory / "run")
    import_torchvision("resnet50", pth, run, log=lambda _: None)
    return outputs, pth, run


@pytest.mark.numerics
@pytest.mark.parametrize("size", SIZES)
def test_resnet50_backbone_and_classifier_equal_torchvision(resnet50, size):
    reference, _, run = resnet50
    experiment = load_experiment(run)
    assert experiment.task == "classification" and experiment.model.num_classes == 1000
    model = build_classifier(experiment.model)
    restore_model(model, latest_checkpoint(run))
    expected = reference[size]["out"]
    assert 0.3 < expected.std() < 30
    assert_close(model(reference[size]["images"], training=False).numpy(), expected, rel=REL)


def test_imported_backbone_initialises_deeplab_training(resnet50):
    """train.init = an imported ResNet run: the backbone weights arrive by name."""
    from deeplabv3_tf.model.config import (ModelConfig, keras_applications_compatible,
                                     torchvision_backbone)
    from deeplabv3_tf.model.deeplabv3 import build_deeplabv3
    from deeplabv3_tf.runs import initialize_from_run

    _, pth, run = resnet50
    config = torchvision_backbone(ModelConfig(depth=50, output_stride=16))
    target = build_deeplabv3(config)
    initialize_from_run(target, run, log=lambda _: None, target_config=config)
    kernel = target.get_layer("backbone").get_layer("conv4_block2_2_conv").kernel.numpy()
    expected = read_state_dict(pth)["layer3.1.conv2.weight"].transpose(2, 3, 1, 0)
    np.testing.assert_array_equal(kernel, expected)
    # A caffe-style backbone config would misread these weights: refused, naming the fix.
    caffe = keras_applications_compatible(ModelConfig(depth=50))
    with pytest.raises(ValueError, match="set model.stride_in_1x1=False "
                                         "model.normalization='imagenet'"):
        initialize_from_run(build_deeplabv3(caffe), run, log=lambda _: None,
                            target_config=caffe)


def test_deeplabv3plus_starts_from_imported_deeplabv3(deeplab_r50):
    """voc_r101_plus_from_torchvision's start, on the R50: the imported run's
    backbone and ASPP arrive exactly; its head conv and logits read the encoder,
    so the decoder and the logits start anew."""
    import dataclasses

    import keras

    from deeplabv3_tf.configs.recipes import voc_r101_plus_from_torchvision
    from deeplabv3_tf.model.deeplabv3 import build_deeplabv3
    from deeplabv3_tf.runs import initialize_from_run

    _, _, run, _ = deeplab_r50
    source, experiment, _ = load_trained_model(run)
    recipe = voc_r101_plus_from_torchvision().model
    # The recipe's model on this run's backbone depth, classes and auxiliary head, at
    # its output stride (8) to compare outputs; the recipe trains the same weights at 16.
    config = dataclasses.replace(recipe, depth=experiment.model.depth,
                                 num_classes=experiment.model.num_classes,
                                 aux_head=experiment.model.aux_head,
                                 output_stride=experiment.model.output_stride)
    assert config.decoder == "deeplabv3plus" and config.head_filters == 0
    target = build_deeplabv3(config, include_aux=False)
    logits_before = target.get_layer("logits").get_weights()[0].copy()
    messages = []
    initialize_from_run(target, run, log=messages.append, target_config=config)
    assert any("'logits'" in m and "other features" in m for m in messages), messages
    np.testing.assert_array_equal(target.get_layer("logits").get_weights()[0], logits_before)
    images = np.random.default_rng(5).uniform(0, 255, (2, 97, 131, 3)).astype(np.float32)
    encoders = [keras.Model(m.input, m.get_layer("aspp_project_relu").output)(images)
                for m in (source, target)]
    np.testing.assert_array_equal(encoders[0].numpy(), encoders[1].numpy())
    endpoints = [m.get_layer("backbone")(images) for m in (source, target)]
    for name in ("c2", "c3", "c4", "c5"):  # the decoder's c2 included
        np.testing.assert_array_equal(endpoints[0][name].numpy(), endpoints[1][name].numpy())
    assert target(images).shape == (2, 97, 131, 21)


def test_unknown_and_missing_entries_are_named(deeplab_r50, tmp_path):
    from deeplabv3_tf.model.deeplabv3 import build_deeplabv3
    from deeplabv3_tf.model.weights.torchvision import import_config

    _, pth, _, _ = deeplab_r50
    state = read_state_dict(pth)
    _, config = import_config("deeplabv3_resnet50", state, pth)
    model = build_deeplabv3(config)
    before = model.get_layer("logits").kernel.numpy().copy()

    extra = dict(state, **{"classifier.9.weight": np.zeros((3, 3), np.float32)})
    with pytest.raises(ValueError, match=r"no place for: classifier\.9\.weight"):
        load_state_dict(model, extra, segmentation=True, source="extra.pth")
    missing = {k: v for k, v in state.items() if k != "backbone.layer3.4.bn2.running_var"}
    with pytest.raises(ValueError, match=r"missing: backbone\.layer3\.4\.bn2\.running_var "
                                         r"\(for backbone/conv4_block5_2_bn\)"):
        load_state_dict(model, missing, segmentation=True, source="missing.pth")
    transposed = dict(state, **{"classifier.4.weight": state["classifier.4.weight"][:20]})
    with pytest.raises(ValueError, match=r"'classifier\.4\.weight' has shape \(20, 256, 1, 1\)"):
        load_state_dict(model, transposed, segmentation=True, source="bad.pth")
    # Failed imports assign nothing.
    np.testing.assert_array_equal(model.get_layer("logits").kernel.numpy(), before)
    # A ResNet-50 file given as ResNet-101, and a DeepLab file given as a ResNet.
    with pytest.raises(ValueError, match=r"\(3, 4, 6, 3\) units per stage"):
        import_config("deeplabv3_resnet101", state, pth)
    with pytest.raises(ValueError, match="looks like a DeepLabv3 or FCN model"):
        import_config("resnet50", state, pth)


def test_bad_files_are_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="nothere.pth"):
        read_state_dict(str(tmp_path / "nothere.pth"))
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"not a zip file at all")
    with pytest.raises(ValueError, match="garbage.pth is not a readable PyTorch checkpoint"):
        read_state_dict(str(garbage))
    import torch  # torch alone imports fine after TensorFlow.

    wrapped = str(tmp_path / "training_checkpoint.pth")
    torch.save({"model": {"module.fc.bias": torch.ones(3)}, "epoch": 3}, wrapped)
    assert list(read_state_dict(wrapped)) == ["fc.bias"]


def test_missing_torch_says_what_to_install(tmp_path, monkeypatch):
    path = tmp_path / "model.pth"
    path.write_bytes(b"x")
    monkeypatch.setitem(sys.modules, "torch", None)  # import torch -> ImportError
    with pytest.raises(ImportError) as error:
        read_state_dict(str(path))
    assert str(error.value) == TORCH_MISSING and "requirements-torch.txt" in TORCH_MISSING


def test_cli_import_then_export_serves_torchvision_outputs(deeplab_r50, tmp_path):
    """The README's two commands: import_weights.py, then export.py; the SavedModel
    answers like torchvision."""
    reference, pth, _, _ = deeplab_r50
    run = str(tmp_path / "imported")
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    subprocess.run([sys.executable, os.path.join(ROOT, "tools", "import_weights.py"),
                    "torchvision", "--arch", "deeplabv3_resnet50", "--checkpoint", pth,
                    "--output_dir", run], check=True, env=env)
    exports = str(tmp_path / "exports")
    subprocess.run([sys.executable, os.path.join(ROOT, "tools", "export.py"),
                    "--model_dir", run, "--export_dir", exports], check=True, env=env)
    served = tf.saved_model.load(os.path.join(exports, "1"))
    expected = reference["161x241"]
    result = served.signatures["serving_default"](
        images=tf.constant(expected["images"].astype(np.uint8)))
    mask = result["semantic"].numpy()
    assert mask.shape == (1, 161, 241)
    # Pixels where torchvision's two best classes are within the tolerance may flip.
    top2 = np.sort(expected["out"], axis=-1)[..., -2:]
    decided = (top2[..., 1] - top2[..., 0]) > 2 * REL * np.abs(expected["out"]).max()
    assert decided.mean() > 0.95
    np.testing.assert_array_equal(mask[decided], expected["out"].argmax(-1)[decided])


def test_cli_reports_bad_input_in_one_line(tmp_path):
    tool = os.path.join(ROOT, "tools", "import_weights.py")
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    missing = subprocess.run(
        [sys.executable, tool, "torchvision", "--arch", "resnet50", "--checkpoint",
         str(tmp_path / "absent.pth"), "--output_dir", str(tmp_path / "out")],
        env=env, capture_output=True, text=True)
    assert missing.returncode == 1
    assert missing.stderr.strip().splitlines()[-1] == (
        f"error: PyTorch checkpoint not found: {tmp_path / 'absent.pth'}")
    assert not (tmp_path / "out").exists()
    usage = subprocess.run([sys.executable, tool, "keras", "--arch", "resnet50", "--checkpoint",
                            "x", "--output_dir", "y"], env=env, capture_output=True, text=True)
    assert usage.returncode != 0 and "torchvision" in usage.stderr


# MobileNetV3-Large: odd and even sizes (the strided depthwise convs pad symmetrically).
MOBILENET_SIZES = ("97x131", "96x128")


@pytest.fixture(scope="module")
def deeplab_mobilenet(tmp_path_factory):
    """torchvision's deeplabv3_mobilenet_v3_large with its aux head, random weights."""
    directory = tmp_path_factory.mktemp("deeplab_mobilenet")
    pth, outputs = torchvision_reference("deeplabv3_mobilenet_v3_large", 3, directory,
                                         MOBILENET_SIZES)
    run = str(directory / "run")
    provenance = import_torchvision("deeplabv3_mobilenet_v3_large", pth, run,
                                    log=lambda _: None)
    return outputs, pth, run, provenance


@pytest.mark.numerics
@pytest.mark.parametrize("size", MOBILENET_SIZES)
def test_deeplabv3_mobilenet_v3_equals_torchvision(deeplab_mobilenet, size):
    """Logits and the auxiliary head's (on features[4], the first block of the
    40-channel stage, not the stage's end) equal torchvision's."""
    from deeplabv3_tf.model.deeplabv3 import AUX_LOGITS, LOGITS, build_deeplabv3

    reference, pth, run, provenance = deeplab_mobilenet
    expected = reference[size]
    experiment = load_experiment(run)
    config = experiment.model
    assert (config.backbone, config.output_stride, config.aux_head) == (
        "mobilenet_v3_large", 16, True)
    assert config.effective_aspp_rates == (12, 24, 36)
    model = build_deeplabv3(config)
    restore_model(model, latest_checkpoint(run))
    outputs = model(expected["images"], training=False)
    assert 0.3 < expected["out"].std() < 30 and 0.1 < expected["aux"].std() < 30
    assert_close(outputs[LOGITS].numpy(), expected["out"], rel=REL)
    assert_close(outputs[AUX_LOGITS].numpy(), expected["aux"], rel=REL)
    state = read_state_dict(pth)
    counters = sum(k.endswith("num_batches_tracked") for k in state)
    assert provenance["entries_assigned"] == len(state) - counters == 306


def test_deeplabv3_mobilenet_v3_export_masks_equal_torchvision(deeplab_mobilenet, tmp_path):
    """The exported SavedModel (BatchNorm folded, depthwise kernels included) answers
    with torchvision's argmax."""
    from deeplabv3_tf.serving.export import export_saved_model
    from deeplabv3_tf.serving.options import ExportOptions

    reference, _, run, _ = deeplab_mobilenet
    # One scale, no flip: the multi-scale signature is the ResNet tests' (and 15 s here).
    version = export_saved_model(run, str(tmp_path / "exports"),
                                 ExportOptions(scales=(1.0,), flip=False), log=lambda _: None)
    served = tf.saved_model.load(version)
    for size in MOBILENET_SIZES:
        expected = reference[size]["out"]
        result = served.signatures["serving_default"](
            images=tf.constant(reference[size]["images"].astype(np.uint8)))
        mask = result["semantic"].numpy()
        top2 = np.sort(expected, axis=-1)[..., -2:]
        decided = (top2[..., 1] - top2[..., 0]) > 2 * REL * np.abs(expected).max()
        assert decided.mean() > 0.95
        np.testing.assert_array_equal(mask[decided], expected.argmax(-1)[decided])


def test_mobilenet_v3_classifier_equals_torchvision_and_initialises_deeplab(tmp_path):
    from deeplabv3_tf.model.config import ModelConfig, torchvision_deeplabv3
    from deeplabv3_tf.model.deeplabv3 import build_deeplabv3
    from deeplabv3_tf.runs import initialize_from_run

    pth, reference = torchvision_reference("mobilenet_v3_large", 4, tmp_path, ("97x131",))
    run = str(tmp_path / "run")
    import_torchvision("mobilenet_v3_large", pth, run, log=lambda _: None)
    experiment = load_experiment(run)
    assert experiment.task == "classification" and experiment.model.num_classes == 1000
    model = build_classifier(experiment.model)
    restore_model(model, latest_checkpoint(run))
    expected = reference["97x131"]["out"]
    assert 0.3 < expected.std() < 30
    assert_close(model(reference["97x131"]["images"], training=False).numpy(), expected,
                 rel=REL)
    # Its backbone initialises a DeepLabv3 training; a ResNet target is refused.
    config = torchvision_deeplabv3(ModelConfig(backbone="mobilenet_v3_large"))
    target = build_deeplabv3(config)
    initialize_from_run(target, run, log=lambda _: None, target_config=config)
    kernel = target.get_layer("backbone").get_layer("conv3_block1_dw_conv").kernel.numpy()
    expected_kernel = read_state_dict(pth)["features.4.block.1.0.weight"].transpose(2, 3, 0, 1)
    np.testing.assert_array_equal(kernel, expected_kernel)
    resnet = torchvision_deeplabv3(ModelConfig(depth=50))
    with pytest.raises(ValueError, match="backbone='mobilenet_v3_large'"):
        initialize_from_run(build_deeplabv3(resnet), run, log=lambda _: None,
                            target_config=resnet)


def test_mobilenet_files_given_as_another_arch_are_named(deeplab_mobilenet):
    from deeplabv3_tf.model.weights.torchvision import import_config

    _, pth, _, _ = deeplab_mobilenet
    state = read_state_dict(pth)
    with pytest.raises(ValueError, match=r"\(0, 0, 0, 0\) units per stage"):
        import_config("deeplabv3_resnet50", state, pth)
    with pytest.raises(ValueError, match="looks like a DeepLabv3 or FCN model"):
        import_config("mobilenet_v3_large", state, pth)
    renamed = {k.replace("backbone.16.", "backbone.17."): v for k, v in state.items()}
    renamed.update({k.replace("backbone.15.", "backbone.16."): v for k, v in state.items()
                    if k.startswith("backbone.15.")})
    with pytest.raises(ValueError, match="18 feature modules"):
        import_config("deeplabv3_mobilenet_v3_large", renamed, pth)
