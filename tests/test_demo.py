import json
import os

import numpy as np
from PIL import Image

from deeplabv3_tf.model.config import ModelConfig
from deeplabv3_tf.apps.demo import run_model_demo
from deeplabv3_tf.model import build_deeplabv3
from deeplabv3_tf.model.cost import count_macs, count_params
from tests.helpers import tiny_config


def test_model_demo_writes_mask_and_reports_cost(tmp_path):
    config = tiny_config(num_classes=21)
    lines = []
    summary = run_model_demo(str(tmp_path), config, image_size=(97, 131), log=lines.append)
    assert summary["trainable_params"] == count_params(build_deeplabv3(config))
    static = build_deeplabv3(config, input_shape=(97, 131, 3))
    assert summary["gmacs"] == round(count_macs(static) / 1e9, 2)
    assert summary["latency_ms_median"] > 0
    for name in ("image.jpg", "mask.png", "overlay.png"):
        assert Image.open(tmp_path / name).size == (131, 97)
    with open(tmp_path / "summary.json") as f:
        assert ModelConfig.from_dict(json.load(f)["config"]) == config
    text = "\n".join(lines)
    assert "Trainable params" in text and "GMACs at 97x131" in text
    mask = np.asarray(Image.open(tmp_path / "mask.png"))
    assert mask.shape == (97, 131, 3)
    assert os.path.getsize(tmp_path / "overlay.png") > 0


def test_model_demo_of_a_recipe_names_its_backbone(tmp_path):
    lines = []
    summary = run_model_demo(str(tmp_path), image_size=(65, 77), experiment="tiny_voc_mobilenetv3",
                             log=lines.append)
    assert ModelConfig.from_dict(summary["config"]).backbone == "mobilenet_v3_large"
    assert not summary["config"]["aux_head"]  # the inference graph
    assert "DeepLabv3-MobileNetV3-Large x0.25, output stride 16, 21 classes" in lines
