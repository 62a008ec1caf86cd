"""The files that training and export leave behind: layout and formats.

This module alone names, writes and reads them; it imports no model or task.

A training workdir (written by `tfrevisit.train`):
  config.gin      the operative gin config, for people (nothing parses it,
                  except to re-export a run older than `task.json`'s
                  `backbone`).
  task.json       what rebuilds the task (`TaskRecord`): {"task", "num_classes",
                  "backbone": Backbone.to_dict(), "options": the task's own,
                  "layout": the backbone layout version of its weights}.
  checkpoints/    `ckpt-<step>` checkpoints of the task's models and optimizer.
  tb/             TensorBoard summaries.
  export/<step>/  exported SavedModels; export/latest links to the newest.

An export (a SavedModel directory, written by `tfrevisit.export`):
  encoder.keras   the encoder as a native Keras 3 file (`keras.saving.
                  load_model`, after `import tfrevisit.models` registers the
                  backbones' custom layers); absent in exports older than it.
  assets/tfrevisit.json  metadata: the `TaskRecord` fields (keys "task",
                  "num_classes", "backbone", "task_options", "layout"), the backbone's
                  old flat keys ("architecture", "filters_factor",
                  "last_relu", kept for readers of older versions), patch mode,
                  input shape and size, value range, the evaluation
                  preprocessing spec, default output, end points, global step
                  and the gin config text.
Exports older than "backbone" carry only the flat keys; `export_record` reads
both. Records and exports without "layout" predate it: layout 1.
"""
import contextlib
import dataclasses
import glob
import json
import logging
import os
import shutil
import tempfile
from typing import Any, Dict, Iterator, Optional, Sequence

import tensorflow as tf

from tfrevisit import cli

log = logging.getLogger("tfrevisit.artifacts")

CONFIG_FILE = "config.gin"
TASK_FILE = "task.json"
CHECKPOINT_DIR = "checkpoints"
SUMMARY_DIR = "tb"
EXPORT_DIR = "export"
LATEST = "latest"
METADATA_FILE = "tfrevisit.json"  # in the SavedModel's assets/
KERAS_ENCODER_FILE = "encoder.keras"  # in the SavedModel's directory
LEGACY_LAYOUT = 1  # the layout of records and exports that do not name one


@dataclasses.dataclass(frozen=True)
class TaskRecord:
  """What rebuilds a task: `pretext.get_task(task, num_classes=num_classes,
  backbone=models.Backbone(**backbone), **options)`.

  Attributes:
    task: the task's registry name.
    num_classes: labels of the training source (None in old exports).
    backbone: `Backbone.to_dict()`; None in workdirs older than the record.
    options: the task's own constructor options ({} in old records).
    layout: the backbone layout version (`models.LAYOUT`) the weights were
      trained under; `LEGACY_LAYOUT` in records older than it.
  """
  task: str
  num_classes: Optional[int]
  backbone: Optional[Dict[str, Any]]
  options: Dict[str, Any] = dataclasses.field(default_factory=dict)
  layout: int = LEGACY_LAYOUT


def task_record(task) -> TaskRecord:
  """The record of a built `pretext.Task`."""
  return TaskRecord(task.name, task.num_classes, task.backbone.to_dict(),
                    dict(task.options), task.backbone.layout)


# Workdir.


def write_run_info(workdir: str, gin_config: str, record: TaskRecord) -> None:
  """Writes config.gin (the gin config text) and task.json."""
  tf.io.gfile.makedirs(workdir)
  with tf.io.gfile.GFile(os.path.join(workdir, CONFIG_FILE), "w") as f:
    f.write(gin_config)
  with tf.io.gfile.GFile(os.path.join(workdir, TASK_FILE), "w") as f:
    json.dump(dataclasses.asdict(record), f, indent=2, sort_keys=True)


def read_task_record(workdir: str) -> TaskRecord:
  """Reads task.json; a pre-record one ({"task", "num_classes"}) gives
  `backbone=None`.

  Raises:
    FileNotFoundError: `workdir` is not a training workdir.
  """
  path = os.path.join(workdir, TASK_FILE)
  if not tf.io.gfile.exists(path):
    raise FileNotFoundError(
        f"{path} is missing: {workdir!r} is not a tfrevisit training workdir "
        "(run `python -m tfrevisit.train --workdir ...` first).")
  with tf.io.gfile.GFile(path) as f:
    info = json.load(f)
  return TaskRecord(info["task"], info["num_classes"], info.get("backbone"),
                    info.get("options", {}),
                    info.get("layout", LEGACY_LAYOUT))


def config_path(workdir: str) -> str:
  return os.path.join(workdir, CONFIG_FILE)


def read_config(workdir: str) -> str:
  """The text of config.gin ("" when missing)."""
  path = config_path(workdir)
  if not tf.io.gfile.exists(path):
    return ""
  with tf.io.gfile.GFile(path) as f:
    return f.read()


def checkpoint_dir(workdir: str) -> str:
  return os.path.join(workdir, CHECKPOINT_DIR)


def summary_dir(workdir: str) -> str:
  return os.path.join(workdir, SUMMARY_DIR)


def latest_checkpoint(workdir: str) -> str:
  """The newest checkpoint prefix in `workdir` whose files exist.

  Raises:
    FileNotFoundError: there is none.
  """
  directory = checkpoint_dir(workdir)
  state = tf.train.get_checkpoint_state(directory)
  checkpoints = existing_checkpoints(
      [os.path.join(directory, os.path.basename(p))
       for p in (state.all_model_checkpoint_paths if state else [])])
  if not checkpoints:
    raise FileNotFoundError(
        f"No checkpoint in {directory}: train first, or pass --checkpoint PATH.")
  return checkpoints[-1]


def existing_checkpoints(prefixes: Sequence[str]) -> Sequence[str]:
  """The `prefixes` (oldest first) whose files exist: a checkpoint whose files
  were deleted (e.g. a corrupt one) is skipped."""
  return [p for p in prefixes if tf.io.gfile.exists(p + ".index")]


def _older_checkpoints(path: str) -> Sequence[str]:
  """The checkpoints saved before `path` in its directory, oldest first."""
  directory = os.path.dirname(path)
  state = tf.train.get_checkpoint_state(directory)
  names = [os.path.basename(p) for p in
           (state.all_model_checkpoint_paths if state else [])]
  name = os.path.basename(path)
  older = names[:names.index(name)] if name in names else []
  return [os.path.join(directory, n) for n in older]


# Checkpoint files that are truncated or corrupt fail with one of these.
_CORRUPT_CHECKPOINT_ERRORS = (tf.errors.OpError, IndexError, EOFError)


def restore_checkpoint(checkpoint: tf.train.Checkpoint, path: str):
  """`checkpoint.restore(path)`, with a clear error for unreadable files.

  Raises:
    cli.UserError: `path`'s files are truncated or corrupt; the message names
      them and the previous checkpoint in the same directory to fall back to.
  """
  try:
    return checkpoint.restore(path)
  except _CORRUPT_CHECKPOINT_ERRORS as e:
    older = existing_checkpoints(_older_checkpoints(path))
    fallback = (f"fall back to the previous checkpoint {older[-1]}: delete "
                f"{path}.* (training resumes from it) or pass --checkpoint "
                f"{older[-1]} (export)" if older else
                f"there is no previous checkpoint: delete {path}.* to start over")
    raise cli.UserError(
        f"Checkpoint {path} is truncated or corrupt ({cli.one_line(e)}); "
        f"{fallback}.") from e


# Exports.


def export_dir(workdir: str) -> str:
  return os.path.join(workdir, EXPORT_DIR)


def point_latest(directory: str, name: str) -> None:
  """Atomically points `directory/latest` at `directory/name`."""
  link = os.path.join(directory, LATEST)
  tmp_link = os.path.join(directory, f".{LATEST}.tmp")
  if os.path.lexists(tmp_link):
    os.remove(tmp_link)
  os.symlink(name, tmp_link)
  os.replace(tmp_link, link)


TMP_PREFIX = ".tmp-"


def remove_temporaries(directory: str) -> None:
  """Deletes the `.tmp-*` entries of `directory` that a killed writer left
  (each directory has one writer at a time: the chief)."""
  for stale in glob.glob(os.path.join(directory, TMP_PREFIX + "*")):
    log.info("Removing %s, left by an interrupted run.", stale)
    shutil.rmtree(stale, ignore_errors=True)


@contextlib.contextmanager
def atomic_directory(path: str) -> Iterator[str]:
  """Yields a temporary sibling of `path` to fill; it replaces `path` when the
  block completes and is deleted when the block raises. Temporaries that
  killed runs left next to `path` are deleted first."""
  parent = os.path.dirname(os.path.abspath(path))
  os.makedirs(parent, exist_ok=True)
  remove_temporaries(parent)
  tmp = tempfile.mkdtemp(prefix=TMP_PREFIX, dir=parent)
  try:
    yield tmp
    if os.path.exists(path):
      shutil.rmtree(path)
    os.rename(tmp, path)
  except BaseException:
    shutil.rmtree(tmp, ignore_errors=True)
    raise


def keras_encoder_path(saved_model_dir: str) -> str:
  """The export's native Keras 3 encoder file (see the module docstring)."""
  return os.path.join(saved_model_dir, KERAS_ENCODER_FILE)


def write_metadata(saved_model_dir: str, metadata: Dict[str, Any]) -> None:
  os.makedirs(os.path.join(saved_model_dir, "assets"), exist_ok=True)
  with open(os.path.join(saved_model_dir, "assets", METADATA_FILE), "w") as f:
    json.dump(metadata, f, indent=2, sort_keys=True)


def read_metadata(saved_model_dir: str) -> Dict[str, Any]:
  """assets/tfrevisit.json of an export; {} for SavedModels not made by us."""
  path = os.path.join(saved_model_dir, "assets", METADATA_FILE)
  if not os.path.exists(path):
    return {}
  with open(path) as f:
    return json.load(f)


def export_metadata(task, *, default_output: str, step: int,
                    gin_config: str) -> Dict[str, Any]:
  """The metadata of an export of `task` (a built `pretext.Task`) at `step`."""
  record = task_record(task)
  return {
      "task": record.task,
      "num_classes": record.num_classes,
      "backbone": record.backbone,
      "task_options": record.options,
      "layout": record.layout,
      "architecture": record.backbone["name"],
      "filters_factor": record.backbone["filters_factor"],
      "last_relu": record.backbone["last_relu"],
      "patch_mode": task.patch_mode,
      "input_shape": list(task.encoder.input_shape[1:]),
      "image_size": task.image_size,
      "value_range": task.value_range,
      "preprocess": task.eval_preprocess,
      "default_output": default_output,
      "end_points": sorted(task.encoder.output.keys()),
      "global_step": int(step),
      "gin_config": gin_config,
  }


def export_record(metadata: Dict[str, Any]) -> TaskRecord:
  """The `TaskRecord` in an export's metadata; older exports (flat backbone
  keys, no task options or num_classes) give `options={}` and
  `num_classes=None`."""
  backbone = metadata.get("backbone") or {
      "name": metadata["architecture"],
      "filters_factor": metadata["filters_factor"],
      "last_relu": metadata.get("last_relu", True),
  }
  return TaskRecord(metadata["task"], metadata.get("num_classes"), backbone,
                    metadata.get("task_options", {}),
                    metadata.get("layout", LEGACY_LAYOUT))
