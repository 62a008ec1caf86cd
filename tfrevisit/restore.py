"""Rebuilds the task of a training workdir and loads its weights.

The task comes from the workdir's task.json (`artifacts.TaskRecord`: task,
backbone, options), never from gin, so that export, fine-tuning, evaluation
and a resumed run all get the network that was trained. Library code: no
command line and no gin here.
"""
import os
import re
from typing import Optional, Tuple

import tensorflow as tf

from tfrevisit import artifacts
from tfrevisit import models
from tfrevisit import pretext


def build_task(record: artifacts.TaskRecord) -> pretext.Task:
  """The task that `record` describes (it must name its backbone).

  Raises:
    ValueError: the record's backbone layout computes differently today
      (`models.check_layout`).
  """
  models.check_layout(record.backbone["name"], record.layout)
  return pretext.get_task(record.task, num_classes=record.num_classes,
                          backbone=models.Backbone(**record.backbone),
                          **record.options)


def restore_task(workdir: str, checkpoint: Optional[str] = None
                 ) -> Tuple[pretext.Task, int]:
  """Rebuilds the task of a training workdir from its task.json and restores
  its encoder.

  Returns:
    (task, step) with the encoder's weights from `checkpoint` (default: latest).

  Raises:
    FileNotFoundError: not a training workdir, or no checkpoint.
    ValueError: task.json predates the backbone record (`tfrevisit.export`
      reads those runs' config.gin), or its backbone layout computes
      differently today.
  """
  record = artifacts.read_task_record(workdir)
  checkpoint = checkpoint or artifacts.latest_checkpoint(workdir)
  if record.backbone is None:
    raise ValueError(
        f"{artifacts.TASK_FILE} in {workdir!r} does not record the backbone "
        "(written by an older version); export it with "
        "`python -m tfrevisit.export`, which reads its config.gin.")
  task = build_task(record)
  return task, restore_encoder(task, checkpoint)


def restore_encoder(task: pretext.Task, checkpoint: str) -> int:
  """Loads `task.encoder`'s weights from `checkpoint`; returns its step.

  Raises:
    cli.UserError: `checkpoint` is truncated or corrupt.
  """
  artifacts.restore_checkpoint(tf.train.Checkpoint(encoder=task.encoder),
                               checkpoint).expect_partial()
  match = re.search(r"-(\d+)$", checkpoint)
  return int(match.group(1)) if match else 0


def check_resumable(workdir: str, backbone: models.Backbone) -> None:
  """Raises unless `backbone` computes, from the checkpoints of `workdir`,
  what its run trained (`models.check_layout` on its task.json's layout);
  workdirs without task.json pass.

  Raises:
    ValueError: the run's backbone layout computes differently today.
  """
  if tf.io.gfile.exists(os.path.join(workdir, artifacts.TASK_FILE)):
    models.check_layout(backbone.name,
                        artifacts.read_task_record(workdir).layout)
