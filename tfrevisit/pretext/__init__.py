"""Pretext tasks, looked up by name:
`get_task("rotation", backbone=models.Backbone("revnet50", 16), num_classes=1000)`.
"""
from tfrevisit import models
# Importing the task modules registers them.
from tfrevisit.pretext import exemplar, jigsaw, relative_patch_location, rotation, supervised  # pylint: disable=unused-import
from tfrevisit.pretext.base import DEFAULT_OUTPUT, TASKS, Task


def get_task(name: str, *, backbone: models.Backbone, num_classes: int,
             **options) -> Task:
  """Builds task `name` around `backbone`.

  Args:
    name: one of `TASKS.names()`.
    backbone: the backbone the task trains.
    num_classes: the number of labels of the training source.
    **options: the task's own options (e.g. `image_size=32`); options not
      given take the task's defaults. (The command lines fill them from gin
      bindings such as `rotation.image_size`: `gin_config.configured_task`.)

  Raises:
    ValueError: for an unknown task or an option the task lacks.
  """
  return TASKS.build(name, backbone, num_classes, **options)
