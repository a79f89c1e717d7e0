"""torchvision weights as a run directory (`tools/import_weights.py torchvision`).

The mapping of torchvision's names onto this package's layers is
`model/weights/torchvision.py` (and each backbone's own `torchvision` record);
this module builds the experiment around the imported model and writes it as a
run (`runs.write_run`) that `tools/export.py`, `tools/evaluate.py` and
`train.init` read like any training run.
"""

from __future__ import annotations

import dataclasses
import datetime
import os
from typing import Callable

from deeplabv3_tf.configs.experiment import DataConfig, EvalConfig, ExperimentConfig
from deeplabv3_tf.core.checksum import file_sha256
from deeplabv3_tf.data.dataset import VOC_CLASSES
from deeplabv3_tf.model.weights.torchvision import (
    ARCHITECTURES, PUBLISHED_WEIGHTS, import_config, load_state_dict, read_state_dict)
from deeplabv3_tf.runs import write_run
from deeplabv3_tf.tasks import get_task
from deeplabv3_tf.tasks.segmentation import NAME as SEGMENTATION

IMPORT_FILE = "import.json"


def import_torchvision(architecture: str, checkpoint: str, output_dir: str,
                       output_stride: int | None = None, overwrite: bool = False,
                       log: Callable[[str], None] = print) -> dict:
    """Converts a torchvision `.pth` into a run directory of this package.

    Writes, atomically (a temporary sibling renamed at the end): experiment.json
    (the model config, VOC class names for 21-class DeepLabv3), a checkpoint
    `ckpt-0` of the model, and import.json (source file, its SHA-256, what
    torchvision reports for the published weights).

    Args:
      architecture: A key of `ARCHITECTURES`.
      checkpoint: The `.pth` file.
      output_dir: Run directory to create.
      output_stride: Override the stride the model is built at (DeepLabv3: 8,
        ResNets: 32); evaluation and export can change it again later.
      overwrite: Replace an existing non-empty `output_dir`.
      log: Progress messages.

    Returns:
      The import.json contents.
    """
    if architecture not in ARCHITECTURES:
        raise ValueError(f"--arch {architecture!r} is not one of {sorted(ARCHITECTURES)}.")
    output_dir = os.path.abspath(output_dir)
    if os.path.exists(output_dir) and os.listdir(output_dir) and not overwrite:
        raise FileExistsError(f"{output_dir} exists and is not empty; choose another "
                              "--output_dir or pass --overwrite.")
    log(f"reading {checkpoint}")
    state_dict = read_state_dict(checkpoint)
    task, config = import_config(architecture, state_dict, checkpoint, output_stride)
    segmentation = task == SEGMENTATION
    model = get_task(task).build_model(config)
    assigned = load_state_dict(model, state_dict, segmentation, source=checkpoint, config=config)
    log(f"mapped {assigned} of {len(state_dict)} entries onto {model.count_params():,} "
        f"parameters ({len(state_dict) - assigned} num_batches_tracked counters dropped)")

    class_names = ()
    if segmentation:
        class_names = (VOC_CLASSES if config.num_classes == len(VOC_CLASSES)
                       else tuple(f"class_{i}" for i in range(config.num_classes)))
    experiment = ExperimentConfig(
        name=f"torchvision_{architecture}", task=task, model=config,
        data=DataConfig(train_records="", val_records="", class_names=class_names),
        eval=dataclasses.replace(EvalConfig(), output_strides=(config.output_stride,),
                                 multiscale_output_stride=0))
    provenance = {
        "architecture": architecture,
        "source": os.path.abspath(checkpoint),
        "source_sha256": file_sha256(checkpoint),
        "entries_assigned": assigned,
        "published": PUBLISHED_WEIGHTS[architecture],
        "imported_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }
    write_run(output_dir, experiment, model, extra_files={IMPORT_FILE: provenance})
    log(f"wrote {output_dir} ({task}, output stride {config.output_stride})")
    return provenance
