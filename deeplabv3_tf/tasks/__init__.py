"""The tasks: one module each, listed once here (`TASKS`).

  segmentation     DeepLabv3 on pixel labels (tasks/segmentation.py)
  classification   the backbone as a multi-label classifier, JFT-style
                   pretraining (tasks/classification.py)

A new task is a `base.Task` subclass in its own module and one line in `TASKS`.
"""

from __future__ import annotations

from deeplabv3_tf.tasks.base import Task
from deeplabv3_tf.tasks.classification import ClassificationTask
from deeplabv3_tf.tasks.segmentation import SegmentationTask

TASKS: dict[str, Task] = {task.name: task for task in (SegmentationTask(), ClassificationTask())}


def get_task(name: str) -> Task:
    """The task an experiment names; an unknown name is an error listing the known ones."""
    if name not in TASKS:
        raise ValueError(f"task={name!r} is not one of {tuple(TASKS)}.")
    return TASKS[name]
