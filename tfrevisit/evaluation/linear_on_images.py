"""The release's SGD linear evaluation on images: a linear layer trained on
the fly (the `linear_sgd_images` probe).

Instead of cached features, each training step reads images, preprocesses them
in training mode (the export's spec `resize_small(256)|crop(224)|...` then
takes a random 224 crop, as the release did), and computes the end point's
pooled features through the frozen encoder; so the features differ from
epoch to epoch. The reported split is preprocessed in eval mode (central crop)
and evaluated after every epoch. Slower than `linear_sgd` on cached features,
which stays the fast option.
"""
from typing import Any, Callable, Dict, Sequence

import keras

from tfrevisit.evaluation import features as features_lib
from tfrevisit.evaluation import inputs as inputs_lib
from tfrevisit.evaluation import keras_probes
from tfrevisit.evaluation.inputs import ImageProbeContext, ProbeInputs


class FrozenEncoderLinear(keras.Model):
  """Images [B, h, w, 3] (or [B, P, h, w, 3] patches) -> logits [B, C]:
  the frozen encoder's pooled end point [B, F], then a trainable Dense layer.

  The encoder's variables belong to the SavedModel, not to this model, so
  `fit` trains only `logits`.
  """

  def __init__(self, featurize, num_features: int, num_classes: int):
    super().__init__(name="linear_probe_on_images")
    self._featurize = [featurize]  # A list: not tracked by Keras.
    self.logits = keras.layers.Dense(num_classes, name="logits")
    self.logits.build((None, num_features))

  def call(self, images):
    return self.logits(self._featurize[0](images))


def _featurizer(context: ImageProbeContext):
  """A tf.function: preprocessed images -> the end point's features [B, F]."""
  featurize = features_lib.make_featurizer(
      context.module, context.pooling_mode, context.feature_target,
      context.patch_combine, end_points=[context.end_point])
  return lambda images: featurize(images)[context.end_point]


def train_linear_sgd_on_images(
    context: ImageProbeContext,
    num_classes: int,
    epochs: int = 70,
    decay_epochs: Sequence[int] = (30, 50),
    batch_size: int = 2048,
    base_learning_rate: float = 0.1,
    momentum: float = 0.9,
) -> keras_probes.ProbeResult:
  """Trains a linear layer on features recomputed from augmented images.

  As the release: learning rate base_learning_rate x batch_size / 256, no
  weight decay, SGD with momentum, x0.1 at each decay epoch; by default its
  public schedule (70 epochs, decays at 30 and 50, batch 2048).

  Args:
    context: the encoder, data and end point (`ImageProbeContext`).
    num_classes: C.
    epochs: training epochs; one epoch is floor(N / batch_size) steps.
    decay_epochs: learning rate x0.1 at these epochs.
    batch_size: training examples per SGD step.
    base_learning_rate: the learning rate per 256 examples of a batch.
    momentum: SGD momentum.

  Returns:
    The ProbeResult; `history["val_top1"]` is the reported split's top-1
    after each epoch.
  """
  keras.utils.set_random_seed(context.seed)
  num_train, train_ds, eval_ds = inputs_lib.image_datasets(context, batch_size)
  steps_per_epoch = num_train // batch_size
  if not steps_per_epoch:
    raise ValueError(
        f"{num_train} training examples make no batch of {batch_size}; lower "
        "train_linear_sgd_on_images.batch_size.")
  featurize = _featurizer(context)
  num_features = int(featurize(next(iter(eval_ds))[0]).shape[1])
  model = FrozenEncoderLinear(featurize, num_features, num_classes)
  result = keras_probes.fit_sgd(
      model, train_ds, eval_ds, epochs, steps_per_epoch,
      base_learning_rate * batch_size / 256, decay_epochs, momentum)
  return result


def linear_sgd_images_probe(
    inputs: ProbeInputs,
    fit: Callable[..., keras_probes.ProbeResult] = train_linear_sgd_on_images
) -> Dict[str, Any]:
  """The `linear_sgd_images` probe: `fit` (the configured
  `train_linear_sgd_on_images`) on `inputs.images`; a row like
  `linear_sgd`'s."""
  result = fit(inputs.images, inputs.num_classes)
  return {**keras_probes.history_row(result),
          "num_features": int(result.model.logits.kernel.shape[0])}
