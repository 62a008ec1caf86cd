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
                                 `hub.KerasLayer(trainable=True)` fine-tunes
                                 (in tf_keras models only).
  obj.representation_training(image), obj.serving_default_training(image)
                                 `representation` and `serving_default` in
                                 training mode (BatchNorm on batch statistics,
                                 updating its moving averages): the
                                 `call_training_endpoint` of Keras 3's
                                 `TFSMLayer`.
  obj.regularization_loss()      the total weight decay, a scalar: the sum of
                                 `regularization_losses`, which `TFSMLayer`
                                 does not add to `losses` (README).
  obj.image_feature_vector(image)
                                 TF Hub's common image input: float32
                                 [B, H, W, 3] in [0, 1], any size ->
                                 {"default": feature vector [B, D]
                                 (`pre_logits`, averaged over patches), every
                                 end point}, preprocessing inside.
  signatures: "serving_default" ({"default": default output}) and
  "representation" (the end points), both on float32 `image` [B, H, W, 3]
  already preprocessed (the key of the release's TF-Hub modules; exports
  before it used `images`, which `evaluation.features` still reads); batch
  (and, for ResNet/RevNet, spatial) size dynamic. "image_feature_vector"
  (as `obj.image_feature_vector`) on raw `image` in [0, 1].
  assets/tfrevisit.json: the task, its backbone and options, preprocessing
  and training facts (format: `tfrevisit.artifacts`).
  encoder.keras: the encoder (images -> dict of end points) as a native
  Keras 3 file: `keras.saving.load_model(path)` after `import tfrevisit.models`
  (which registers the backbones' layers) gives a trainable `keras.Model` with its
  BatchNorm training mode and weight decay (`model.losses`), the first-class
  way to fine-tune in Keras 3.

The metadata comes from the task itself (`task.backbone`, `task.options`);
`tfrevisit.restore` rebuilds a workdir's task from its task.json, not from gin.
"""
import argparse
import contextlib
import logging
import os
from typing import Any, Dict, Optional, Sequence

import keras
import tensorflow as tf

from tfrevisit import artifacts
from tfrevisit import cli
from tfrevisit import gin_config as gin_config_lib
from tfrevisit import models
from tfrevisit import pretext
from tfrevisit import restore
from tfrevisit.data import preprocess as preprocess_lib

log = logging.getLogger("tfrevisit.export")

# TF Hub's common image signature returns this end point as its `default`.
FEATURE_VECTOR = "pre_logits"
FEATURE_VECTOR_SIGNATURE = "image_feature_vector"


def build_module(encoder: keras.Model, *, default_output: str,
                 preprocess_spec: str) -> tf.Module:
  """Wraps `encoder` (images -> dict of end points) into a saveable object."""
  # The signatures' input key is `image`, as in the release's TF-Hub modules.
  input_spec = tf.TensorSpec([None, *encoder.input_shape[1:]], tf.float32,
                             name="image")
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
  def representation(image):
    return dict(encoder(image, training=False))

  @tf.function(input_signature=[input_spec])
  def serving_default(image):
    return {"default": encoder(image, training=False)[default_output]}

  example_fn = preprocess_lib.get_preprocess_fn(preprocess_spec, training=False)

  @tf.function(input_signature=[tf.TensorSpec([None, None, None, 3], tf.uint8)])
  def preprocess(images):
    fn = lambda image: example_fn({"image": image})["image"]
    return tf.map_fn(fn, images, fn_output_signature=tf.float32)

  @tf.function(input_signature=[
      tf.TensorSpec([None, None, None, 3], tf.float32, name="image")])
  def image_feature_vector(image):
    return _image_feature_vector(encoder, preprocess, image)

  @tf.function(input_signature=[input_spec])
  def representation_training(image):
    return dict(encoder(image, training=True))

  @tf.function(input_signature=[input_spec])
  def serving_default_training(image):
    return {"default": encoder(image, training=True)[default_output]}

  @tf.function(input_signature=[])
  def regularization_loss():
    return tf.add_n([tf.constant(0.0)] + [
        tf.cast(v.regularizer(v), tf.float32)
        for v in encoder.trainable_variables if v.regularizer is not None])

  for training in (False, True):
    call.get_concrete_function(input_spec, training=training)
  root.__call__ = call
  root.representation = representation
  root.representation_training = representation_training
  root.preprocess = preprocess
  root.serving_default = serving_default
  root.serving_default_training = serving_default_training
  root.regularization_loss = regularization_loss
  if FEATURE_VECTOR in encoder.output:  # every backbone's; not test models'
    setattr(root, FEATURE_VECTOR_SIGNATURE, image_feature_vector)
  return root


def _image_feature_vector(encoder: keras.Model, preprocess, image: tf.Tensor
                          ) -> Dict[str, tf.Tensor]:
  """TF Hub's common image input: float32 [B, H, W, 3] in [0, 1], any size.

  The images are quantised to uint8 (image * 255, rounded: exact for images
  decoded from uint8, as the training data were) and go through the export's
  own `preprocess`. Returns {"default": the feature vector [B, D]
  (`pre_logits`, averaged over the 9 patches of patch models), every end
  point (patch models: [B, 9, ...])}.
  """
  pixels = tf.cast(tf.round(tf.clip_by_value(image, 0.0, 1.0) * 255.0),
                   tf.uint8)
  inputs = preprocess(pixels)
  num_patches = inputs.shape[1] if inputs.shape.rank == 5 else None
  if num_patches:
    inputs = tf.reshape(inputs, [-1, *_dims(inputs)[2:]])
  outputs = dict(encoder(inputs, training=False))
  if num_patches:
    outputs = {name: tf.reshape(value, [-1, num_patches, *_dims(value)[1:]])
               for name, value in outputs.items()}
  default = outputs[FEATURE_VECTOR]
  return {"default": tf.reduce_mean(default, 1) if num_patches else default,
          **outputs}


def _dims(value: tf.Tensor) -> list:
  """`value`'s dimensions: static where known, else dynamic scalars."""
  dynamic = tf.shape(value)
  return [dim if dim is not None else dynamic[i]
          for i, dim in enumerate(value.shape.as_list())]


def _regularization_loss_fn(variable):
  """A no-argument tf.function computing `variable`'s weight-decay term."""
  return tf.function(lambda: variable.regularizer(variable), input_signature=[])


def save_module(root: tf.Module, path: str, metadata: Dict[str, Any],
                encoder: Optional[keras.Model] = None) -> None:
  """Saves `root` with `metadata` in assets/tfrevisit.json, and `encoder` (if
  given) as encoder.keras, atomically: to a temporary sibling directory,
  renamed when complete."""
  with artifacts.atomic_directory(path) as tmp:
    signatures = {"serving_default": root.serving_default,
                  "representation": root.representation}
    if hasattr(root, FEATURE_VECTOR_SIGNATURE):
      signatures[FEATURE_VECTOR_SIGNATURE] = root.image_feature_vector
    tf.saved_model.save(root, tmp, signatures=signatures)
    artifacts.write_metadata(tmp, metadata)
    if encoder is not None:
      encoder.save(artifacts.keras_encoder_path(tmp))


def export_task(task: pretext.Task, workdir: str, step: int,
                output: Optional[str] = None, gin_config: str = "",
                default_output: str = pretext.DEFAULT_OUTPUT,
                extra_metadata: Optional[Dict[str, Any]] = None) -> str:
  """Exports `task`'s encoder; returns the SavedModel's path.

  Without `output`, writes `workdir/export/<step>` and updates `latest`.
  `gin_config` is the run's config text, kept in the metadata for people;
  `default_output` the end point that calling the export returns;
  `extra_metadata` is added to the metadata (e.g. where converted weights came
  from).
  """
  metadata = artifacts.export_metadata(
      task, default_output=default_output, step=step, gin_config=gin_config)
  metadata.update(extra_metadata or {})
  encoder = float32_encoder(task)
  root = build_module(encoder, default_output=default_output,
                      preprocess_spec=task.eval_preprocess)
  if output is None:
    export_dir = artifacts.export_dir(workdir)
    output = os.path.join(export_dir, str(step))
    save_module(root, output, metadata, encoder)
    artifacts.point_latest(export_dir, str(step))
  else:
    save_module(root, output, metadata, encoder)
  log.info("Exported the encoder at step %d to %s.", step, output)
  return output


def float32_encoder(task: pretext.Task) -> keras.Model:
  """`task.encoder` if it computes in float32, else (trained under a
  mixed-precision policy) a float32 copy with the same weights.

  Mixed-precision variables are float32 already, so the copy is exact; the
  export then computes and returns float32 everywhere, on any device.
  """
  encoder = task.encoder
  if all(_dtype_name(t) == "float32" for t in tf.nest.flatten(encoder.output)):
    return encoder
  num_outputs = encoder.output[pretext.DEFAULT_OUTPUT].shape[-1]
  with float32_policy():
    copy = task.build_encoder(num_outputs)
  copy.set_weights(encoder.get_weights())
  return copy


def _dtype_name(tensor) -> str:
  return tf.as_dtype(tensor.dtype).name


@contextlib.contextmanager
def float32_policy():
  """Keras's global dtype policy is float32 inside, restored on exit."""
  previous = keras.mixed_precision.global_policy()
  keras.mixed_precision.set_global_policy("float32")
  try:
    yield
  finally:
    keras.mixed_precision.set_global_policy(previous)


def _task_from_gin(workdir: str, record: artifacts.TaskRecord) -> pretext.Task:
  """The task of a workdir whose task.json predates the backbone record, from
  its config.gin, parsed into gin's global config (command line only)."""
  gin_config_lib.parse_gin([artifacts.config_path(workdir)], [])
  backbone = gin_config_lib.configured_backbone()
  models.check_layout(backbone.name, record.layout)
  return gin_config_lib.configured_task(record.task, backbone=backbone,
                                        num_classes=record.num_classes)


def parse_args(argv=None):
  parser = argparse.ArgumentParser(
      description="Export a trained encoder as a TF-Hub-style SavedModel.")
  parser.add_argument("--workdir", required=True, help="the training workdir.")
  parser.add_argument("--checkpoint", default=None,
                      help="checkpoint prefix (default: the latest in WORKDIR).")
  parser.add_argument("--output", default=None,
                      help="SavedModel path (default: WORKDIR/export/<step>).")
  cli.add_verbose_flag(parser)
  return parser.parse_args(argv)


@cli.entry_point
def main(argv: Optional[Sequence[str]] = None):
  args = parse_args(argv)
  logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
  record = artifacts.read_task_record(args.workdir)
  checkpoint = args.checkpoint or artifacts.latest_checkpoint(args.workdir)
  if record.backbone is None:
    task = _task_from_gin(args.workdir, record)
  else:
    task = restore.build_task(record)
  step = restore.restore_encoder(task, checkpoint)
  cli.begin_work()
  path = export_task(task, args.workdir, step, args.output,
                     artifacts.read_config(args.workdir))
  print(path)
  return path


if __name__ == "__main__":
  main()
