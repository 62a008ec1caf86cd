"""Rebuilding a workdir's task from its task.json and loading its weights."""
import json
import os

import keras
import numpy as np
import pytest
import tensorflow as tf

from tfrevisit import artifacts
from tfrevisit import models
from tfrevisit import pretext
from tfrevisit import restore

pytestmark = pytest.mark.usefixtures("shallow_backbones")

BACKBONE = models.Backbone("resnet50_v2", 1, batch_norm_epsilon=1e-5)


def _saved_run(workdir, step=3):
  """A workdir as training leaves it (task.json, one checkpoint at `step`)
  without training: a task at random weights; returns the task."""
  keras.utils.set_random_seed(1)
  task = pretext.get_task("rotation", backbone=BACKBONE, num_classes=10,
                          image_size=32)
  artifacts.write_run_info(workdir, "", artifacts.task_record(task))
  manager = tf.train.CheckpointManager(
      tf.train.Checkpoint(**task.checkpoint_items()),
      artifacts.checkpoint_dir(workdir), max_to_keep=1)
  manager.save(checkpoint_number=step)
  return task


def test_restore_task_gives_the_saved_task_and_weights(tmp_path):
  workdir = str(tmp_path)
  saved = _saved_run(workdir)
  keras.utils.set_random_seed(2)  # Fresh weights differ from the saved ones.
  task, step = restore.restore_task(workdir)
  assert step == 3
  assert (task.name, task.backbone, task.options) == (
      "rotation", BACKBONE, {"image_size": 32})
  weights, expected = task.encoder.get_weights(), saved.encoder.get_weights()
  assert len(weights) == len(expected)
  for value, saved_value in zip(weights, expected):
    np.testing.assert_array_equal(value, saved_value)
  images = tf.random.stateless_uniform([2, 32, 32, 3], [0, 0], -1, 1)
  np.testing.assert_array_equal(
      task.encoder(images, training=False)["pre_logits"],
      saved.encoder(images, training=False)["pre_logits"])


def test_restore_encoder_reads_the_step_from_the_prefix(tmp_path):
  workdir = str(tmp_path)
  _saved_run(workdir, step=7)
  task = restore.build_task(artifacts.read_task_record(workdir))
  assert restore.restore_encoder(task, artifacts.latest_checkpoint(workdir)) == 7


def test_a_task_json_without_the_backbone_is_refused(tmp_path):
  workdir = str(tmp_path)
  _saved_run(workdir)
  with open(os.path.join(workdir, artifacts.TASK_FILE), "w") as f:
    json.dump({"task": "rotation", "num_classes": 10}, f)
  with pytest.raises(ValueError, match="does not record the backbone .* "
                     "`python -m tfrevisit.export`"):
    restore.restore_task(workdir)


def test_a_workdir_without_task_json_is_resumable(tmp_path):
  restore.check_resumable(str(tmp_path), BACKBONE)
