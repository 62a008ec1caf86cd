"""End-to-end fine-tuning: the encoder and a linear head trained together.

The `finetune` probe loads the export's native Keras 3 encoder
(`encoder.keras`, see `tfrevisit.export`) or, with `train_finetune.workdir`,
rebuilds a training workdir's encoder from its task.json and latest
checkpoint, puts a Dense layer on one end point and trains both with Keras
`fit`: SGD with momentum, x0.1 step decays, the encoder's BatchNorm in
training mode (batch statistics, moving averages updated) and its weight
decay (the exported kernel regularisers) in the loss. Training images go
through the export's preprocessing in training mode (random crops), the
reported split in eval mode, evaluated after every epoch. Label fractions
(`evaluate.label_fractions`) train on a class-balanced subset, as for the
other probes.

BatchNorm's moving averages (momentum 0.99 at the release's default) lag
far behind the weights on a short fine-tuning: after 20 steps they are still
mostly the pretrained (or, from random init, the initial) statistics, and
inference-mode accuracy can sit at chance while training accuracy climbs.
Before each evaluation the moving statistics are therefore re-estimated as
the plain mean of `batch_norm_batches` training batches' statistics
("precise BatchNorm"); 0 keeps the moving averages.

Spatial end points are globally average-pooled to [B, C] before the head;
patch models' nine patches run through the encoder as B*9 images and their
features are averaged.
"""
import dataclasses
import os
from typing import Any, Callable, Dict, Optional, Sequence

import keras
import numpy as np

from tfrevisit import artifacts
from tfrevisit import restore
from tfrevisit.evaluation import inputs as inputs_lib
from tfrevisit.evaluation import keras_probes
from tfrevisit.evaluation.inputs import ImageProbeContext, ProbeInputs


@dataclasses.dataclass
class FineTuneResult(keras_probes.ProbeResult):
  """A `ProbeResult` with `encoder_relative_change`: ||w - w0|| / ||w0|| over
  the encoder's trainable weights w (w0: before fine-tuning)."""
  encoder_relative_change: float = 0.0


class FineTuneClassifier(keras.Model):
  """Images [B, h, w, 3] (or patches [B, P, h, w, 3]) -> logits [B, C].

  The encoder's `end_point` ([B, D], or [B, H, W, D] averaged over H, W;
  patches: averaged over P), then a Dense layer. `self.encoder` is the part
  of the encoder that computes the end point (its layers and variables are
  the encoder's; layers past the end point, such as a pretext head, are
  left out, so their weights get neither gradients nor decay). Encoder and
  head are both trainable; `training` reaches the encoder's BatchNorm, and the
  encoder's weight decay is in `losses`.
  """

  def __init__(self, encoder: keras.Model, end_point: str, num_classes: int,
               head_weight_decay: float = 0.0):
    super().__init__(name="finetune")
    self.encoder = keras.Model(encoder.input, encoder.output[end_point],
                               name=f"{encoder.name}_to_{end_point}")
    self.logits = keras.layers.Dense(
        num_classes, name="logits", kernel_regularizer=(
            keras.regularizers.L2(head_weight_decay / 2)
            if head_weight_decay else None))

  def call(self, images, training=False):
    num_patches = images.shape[1] if len(images.shape) == 5 else None
    if num_patches:
      images = keras.ops.reshape(images, (-1, *images.shape[2:]))
    features = self.encoder(images, training=training)
    if len(features.shape) == 4:
      features = keras.ops.mean(features, axis=(1, 2))
    if num_patches:
      features = keras.ops.mean(
          keras.ops.reshape(features, (-1, num_patches, features.shape[-1])),
          axis=1)
    return self.logits(features)


def precise_batch_norm(model: keras.Model, batches: Sequence[Any]) -> None:
  """Sets every BatchNorm layer's moving mean and variance of `model` to the
  mean, over `batches` (model inputs), of the training-mode batch statistics.

  Runs eagerly: step t (from 0) uses momentum t / (t + 1), so that after T
  batches each moving statistic is the average of the T batch statistics.
  The layers' momenta are restored afterwards.
  """
  layers = [layer for layer in model._flatten_layers()  # pylint: disable=protected-access
            if isinstance(layer, keras.layers.BatchNormalization)]
  momenta = [layer.momentum for layer in layers]
  try:
    for step, inputs in enumerate(batches):
      for layer in layers:
        layer.momentum = step / (step + 1)
      model(inputs, training=True)
  finally:
    for layer, momentum in zip(layers, momenta):
      layer.momentum = momentum


class PreciseBatchNorm(keras.callbacks.Callback):
  """Re-estimates the BatchNorm statistics of `model.encoder` from
  `num_batches` batches of `train` (inputs, labels) before each evaluation."""

  def __init__(self, train: Any, num_batches: int):
    super().__init__()
    self.train, self.num_batches = train, num_batches

  def on_test_begin(self, logs=None):
    precise_batch_norm(self.model.encoder,
                       (images for images, _ in self.train.take(self.num_batches)))


def load_encoder(export_dir: Optional[str], workdir: Optional[str] = None
                 ) -> keras.Model:
  """The encoder to fine-tune: `workdir`'s latest checkpoint if given, else
  the export's encoder.keras.

  Raises:
    FileNotFoundError: the export has no encoder.keras (exported before it:
      re-export it with `python -m tfrevisit.export --workdir`, or set
      `train_finetune.workdir`).
  """
  if workdir:
    task, _ = restore.restore_task(workdir)
    return task.encoder
  path = artifacts.keras_encoder_path(export_dir or "")
  if not os.path.exists(path):
    raise FileNotFoundError(
        f"{path} is missing: the export predates encoder.keras. Re-export it "
        "(`python -m tfrevisit.export --workdir WORKDIR`) or fine-tune the "
        "checkpoint with `train_finetune.workdir = 'WORKDIR'`.")
  return keras.saving.load_model(path)


def train_finetune(
    context: ImageProbeContext,
    num_classes: int,
    workdir: Optional[str] = None,
    epochs: int = 30,
    decay_epochs: Sequence[int] = (15, 25),
    batch_size: int = 256,
    base_learning_rate: float = 0.1,
    momentum: float = 0.9,
    head_weight_decay: float = 0.0,
    batch_norm_batches: int = 10,
) -> keras_probes.ProbeResult:
  """Fine-tunes the encoder with a linear head on `context.end_point`.

  Args:
    context: the export, data and end point (`inputs.ImageProbeContext`).
    num_classes: C.
    workdir: a training workdir whose latest checkpoint to fine-tune instead
      of the export's encoder.keras.
    epochs: training epochs; one epoch is floor(N / batch_size) steps.
    decay_epochs: learning rate x0.1 at these epochs.
    batch_size: training examples per SGD step.
    base_learning_rate: the learning rate per 256 examples of a batch.
    momentum: SGD momentum.
    head_weight_decay: wd in wd / 2 * ||W||^2 on the head's kernel (the
      encoder keeps its own, exported, decay).
    batch_norm_batches: training batches whose statistics replace BatchNorm's
      moving averages before each evaluation (see the module docstring); 0:
      evaluate on the moving averages.

  Returns:
    The FineTuneResult; `model` is the `FineTuneClassifier` (`model.encoder`
    the fine-tuned encoder), `history["val_top1"]` the reported split's top-1
    after each epoch.

  Raises:
    ValueError: the training set makes no batch.
  """
  keras.utils.set_random_seed(context.seed)
  num_train, train_ds, eval_ds = inputs_lib.image_datasets(context,
                                                           batch_size)
  steps_per_epoch = num_train // batch_size
  if not steps_per_epoch:
    raise ValueError(f"{num_train} training examples make no batch of "
                     f"{batch_size}; lower train_finetune.batch_size.")
  model = FineTuneClassifier(load_encoder(context.export_dir, workdir),
                             context.end_point, num_classes, head_weight_decay)
  initial = [np.array(v) for v in model.encoder.trainable_weights]
  callbacks = ([PreciseBatchNorm(train_ds, batch_norm_batches)]
               if batch_norm_batches else [])
  result = keras_probes.fit_sgd(
      model, train_ds, eval_ds, epochs, steps_per_epoch,
      base_learning_rate * batch_size / 256, decay_epochs, momentum,
      callbacks=callbacks)
  return FineTuneResult(**vars(result), encoder_relative_change=(
      relative_change(initial, model.encoder.trainable_weights)))


def relative_change(before: Sequence[np.ndarray], after: Sequence[Any]
                    ) -> float:
  """||after - before|| / ||before|| over all the arrays together."""
  delta = sum(float(np.sum((np.asarray(a) - b) ** 2))
              for a, b in zip(after, before))
  norm = sum(float(np.sum(b ** 2)) for b in before)
  return float(np.sqrt(delta / norm))


def finetune_probe(inputs: ProbeInputs,
                   fit: Callable[..., FineTuneResult] = train_finetune
                   ) -> Dict[str, Any]:
  """The `finetune` probe: `fit` (the configured `train_finetune`) on
  `inputs.images`; a row like `linear_sgd_images`', plus how far the
  encoder's trainable weights moved (`encoder_relative_change`)."""
  result = fit(inputs.images, inputs.num_classes)
  return {**keras_probes.history_row(result),
          "num_features": int(result.model.logits.kernel.shape[0]),
          "encoder_relative_change": result.encoder_relative_change}
