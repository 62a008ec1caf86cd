"""Pretext tasks, looked up by name: `get_task("rotation", num_classes=...)`."""
# Importing the task modules registers them.
from tfrevisit.pretext import exemplar, jigsaw, relative_patch_location, rotation, supervised  # pylint: disable=unused-import
from tfrevisit.pretext.base import DEFAULT_OUTPUT, TASKS, Task


def get_task(name: str, num_classes: int) -> Task:
  """Builds task `name`; its own knobs come from gin (e.g. `rotation.image_size`).

  Args:
    name: one of `TASKS.names()`.
    num_classes: the number of labels of the training source.
  """
  return TASKS.get(name)(num_classes=num_classes)
