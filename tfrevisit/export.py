r"""Exports a trained encoder as a TF-Hub-style (reusable) SavedModel.

`python -m tfrevisit.export --workdir DIR [--checkpoint PATH] [--output PATH]`
writes DIR/export/<step>/ and points DIR/export/latest at it.

The SavedModel, loaded with `tf.saved_model.load(path)` as `obj`:
  obj(images, training=False)    the task's default output (`logits`: the
                                 pretext logits or the embedding).
  obj.representation(images)     dict of every backbone end point.
  obj.preprocess(uint8_images)   uint8 [B, H, W, 3] -> the model's evaluation
                                 input: float32 [B, h, w, 3], or for patch
                                 models [B, 9, 64, 64, 3] (run the encoder on
                                 the B*9 patches and combine the 9 outputs).
  obj.variables, obj.trainable_variables, obj.regularization_losses
                                 the Reusable SavedModel API that
                                 `hub.KerasLayer(trainable=True)` fine-tunes.
  signatures: "serving_default" ({"default": default output}) and
  "representation" (the end points), both on float32 `images` [B, H, W, 3]
  already preprocessed; batch (and, for ResNet/RevNet, spatial) size dynamic.
  assets/tfrevisit.json: task, architecture, preprocessing and training facts.
"""
import argparse
import json
import logging
import os
import re
import shutil
import tempfile
from typing import Any, Dict, Optional, Sequence

import gin
import keras
import tensorflow as tf

from tfrevisit import pretext
from tfrevisit.data import preprocess as preprocess_lib

log = logging.getLogger("tfrevisit.export")

METADATA_FILE = "tfrevisit.json"
TASK_INFO_FILE = "task.json"  # written by the trainer: task name, num_classes


def build_module(encoder: keras.Model, *, default_output: str,
                 preprocess_spec: str) -> tf.Module:
  """Wraps `encoder` (images -> dict of end points) into a saveable object."""
  input_spec = tf.TensorSpec([None, *encoder.input_shape[1:]], tf.float32,
                             name="images")
  root = tf.train.Checkpoint()
  root.variables = [v.value for v in encoder.variables]
  root.trainable_variables = [v.value for v in encoder.trainable_variables]
  root.regularization_losses = [
      _regularization_loss_fn(v) for v in encoder.trainable_variables
      if v.regularizer is not None]

  @tf.function
  def call(images, training=False):
    return encoder(images, training=training)[default_output]

  @tf.function(input_signature=[input_spec])
  def representation(images):
    return dict(encoder(images, training=False))

  @tf.function(input_signature=[input_spec])
  def serving_default(images):
    return {"default": encoder(images, training=False)[default_output]}

  example_fn = preprocess_lib.get_preprocess_fn(preprocess_spec, training=False)

  @tf.function(input_signature=[tf.TensorSpec([None, None, None, 3], tf.uint8)])
  def preprocess(images):
    fn = lambda image: example_fn({"image": image})["image"]
    return tf.map_fn(fn, images, fn_output_signature=tf.float32)

  for training in (False, True):
    call.get_concrete_function(input_spec, training=training)
  root.__call__ = call
  root.representation = representation
  root.preprocess = preprocess
  root.serving_default = serving_default
  return root


def _regularization_loss_fn(variable):
  """A no-argument tf.function computing `variable`'s weight-decay term."""
  return tf.function(lambda: variable.regularizer(variable), input_signature=[])


def save_module(root: tf.Module, path: str, metadata: Dict[str, Any]) -> None:
  """Saves `root` with `metadata` in assets/tfrevisit.json, atomically: to a
  temporary sibling directory, renamed when complete."""
  parent = os.path.dirname(os.path.abspath(path))
  os.makedirs(parent, exist_ok=True)
  tmp = tempfile.mkdtemp(prefix=".tmp-", dir=parent)
  try:
    tf.saved_model.save(root, tmp, signatures={
        "serving_default": root.serving_default,
        "representation": root.representation})
    os.makedirs(os.path.join(tmp, "assets"), exist_ok=True)
    with open(os.path.join(tmp, "assets", METADATA_FILE), "w") as f:
      json.dump(metadata, f, indent=2, sort_keys=True)
    if os.path.exists(path):
      shutil.rmtree(path)
    os.rename(tmp, path)
  except BaseException:
    shutil.rmtree(tmp, ignore_errors=True)
    raise


def point_latest(export_dir: str, name: str) -> None:
  """Atomically points `export_dir/latest` at `export_dir/name`."""
  link = os.path.join(export_dir, "latest")
  tmp_link = os.path.join(export_dir, ".latest.tmp")
  if os.path.lexists(tmp_link):
    os.remove(tmp_link)
  os.symlink(name, tmp_link)
  os.replace(tmp_link, link)


def export_task(task: pretext.Task, workdir: str, step: int,
                output: Optional[str] = None) -> str:
  """Exports `task`'s encoder; returns the SavedModel's path.

  Without `output`, writes `workdir/export/<step>` and updates `latest`.
  """
  metadata = {
      "task": task.name,
      "architecture": _query("backbone.name"),
      "filters_factor": _query("backbone.filters_factor"),
      "last_relu": _query("backbone.last_relu", True),
      "patch_mode": task.patch_mode,
      "input_shape": list(task.encoder.input_shape[1:]),
      "image_size": task.image_size,
      "value_range": task.value_range,
      "preprocess": task.eval_preprocess,
      "default_output": pretext.DEFAULT_OUTPUT,
      "end_points": sorted(task.encoder.output.keys()),
      "global_step": int(step),
      "gin_config": gin.config_str(),
  }
  root = build_module(task.encoder, default_output=pretext.DEFAULT_OUTPUT,
                      preprocess_spec=task.eval_preprocess)
  if output is None:
    export_dir = os.path.join(workdir, "export")
    output = os.path.join(export_dir, str(step))
    save_module(root, output, metadata)
    point_latest(export_dir, str(step))
  else:
    save_module(root, output, metadata)
  log.info("Exported the encoder at step %d to %s.", step, output)
  return output


def _query(name, default=None):
  try:
    return gin.query_parameter(name)
  except ValueError:
    return default


def restore_task(workdir: str, checkpoint: Optional[str] = None):
  """Rebuilds the task of a training workdir and restores its encoder.

  Returns:
    (task, step) with the encoder's weights from `checkpoint` (default: latest).
  """
  info_path = os.path.join(workdir, TASK_INFO_FILE)
  config_path = os.path.join(workdir, "config.gin")
  for path in (info_path, config_path):
    if not os.path.exists(path):
      raise FileNotFoundError(
          f"{path} is missing: {workdir!r} is not a tfrevisit training workdir "
          "(run `python -m tfrevisit.train --workdir ...` first).")
  checkpoint = checkpoint or tf.train.latest_checkpoint(
      os.path.join(workdir, "checkpoints"))
  if not checkpoint:
    raise FileNotFoundError(
        f"No checkpoint in {os.path.join(workdir, 'checkpoints')}: train first, "
        "or pass --checkpoint PATH.")
  with open(info_path) as f:
    info = json.load(f)
  gin.parse_config_file(config_path)
  task = pretext.get_task(info["task"], num_classes=info["num_classes"])
  tf.train.Checkpoint(encoder=task.encoder).restore(checkpoint).expect_partial()
  match = re.search(r"-(\d+)$", checkpoint)
  return task, int(match.group(1)) if match else 0


def parse_args(argv=None):
  parser = argparse.ArgumentParser(
      description="Export a trained encoder as a TF-Hub-style SavedModel.")
  parser.add_argument("--workdir", required=True, help="the training workdir.")
  parser.add_argument("--checkpoint", default=None,
                      help="checkpoint prefix (default: the latest in WORKDIR).")
  parser.add_argument("--output", default=None,
                      help="SavedModel path (default: WORKDIR/export/<step>).")
  return parser.parse_args(argv)


def main(argv: Optional[Sequence[str]] = None):
  args = parse_args(argv)
  logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
  task, step = restore_task(args.workdir, args.checkpoint)
  path = export_task(task, args.workdir, step, args.output)
  print(path)
  return path


if __name__ == "__main__":
  main()
