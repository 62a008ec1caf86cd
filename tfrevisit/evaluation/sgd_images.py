"""The release's SGD linear evaluation: a linear layer trained on the fly.

Instead of cached features, each training step reads images, preprocesses them
in training mode (the export's spec `resize_small(256)|crop(224)|...` then
takes a random 224 crop, as the release did), and computes the end point's
pooled features through the frozen encoder; so the features differ from
epoch to epoch. The reported split is preprocessed in eval mode (central crop)
and evaluated after every epoch. Slower than `linear_sgd` on cached features,
which stays the fast option.

Probes that need images are registered with `needs_images=True`; `evaluate`
calls them as `probe(context, num_classes) -> row` with an `ImageProbeContext`
instead of feature splits.
"""
import dataclasses
import functools
import time
from typing import Any, Dict, Optional, Sequence, Tuple

import gin
import keras
import numpy as np
import tensorflow as tf

from tfrevisit import data
from tfrevisit.evaluation import features as features_lib
from tfrevisit.evaluation import probes as probes_lib


@dataclasses.dataclass
class ImageProbeContext:
  """What a probe on images needs, passed by `evaluate`.

  Attributes:
    module: the loaded export (`features.load_module`).
    source: the data source.
    preprocess: the evaluation preprocessing spec; applied in training mode
      to the training images, in eval mode to the reported split.
    end_point: the end point of the `representation` signature to probe.
    train_splits: source splits whose examples, concatenated in this order,
      are the training set (table2: train, val; table1: train).
    eval_split: the reported split (table2: test; table1: val).
    pooling_mode, feature_target, patch_combine: as `features.make_featurizer`.
    max_examples: keep the first examples of each split (quick runs).
    train_index: sorted indices into the training set to keep (a label
      fraction, `probes.balanced_subset`); None keeps all.
    eval_batch_size: batch size of the evaluation passes.
    seed: seeds initialisation, order and augmentation.
    hub_module: the export's directory (`finetune` reads its encoder.keras).
  """
  module: Any
  source: data.Source
  preprocess: str
  end_point: str
  train_splits: Tuple[str, ...]
  eval_split: str
  pooling_mode: str = "max"
  feature_target: int = 9000
  patch_combine: str = "avg"
  max_examples: Optional[int] = None
  train_index: Optional[np.ndarray] = None
  eval_batch_size: int = 64
  seed: int = 0
  hub_module: Optional[str] = None


def end_point_names(module) -> list:
  """The sorted end points of the export's `representation` signature."""
  return sorted(module.signatures["representation"].structured_outputs)


def training_labels(context: ImageProbeContext) -> np.ndarray:
  """Labels [N] of the training examples in order (reads them once)."""
  examples = SplitExamples(context.source, context.train_splits,
                           context.max_examples).as_dataset()
  batches = examples.map(lambda example: example["label"]).batch(4096)
  return np.concatenate(list(batches.as_numpy_iterator()))


class SplitExamples:
  """A source-like view for `data.make_dataset`: the first `max_examples` of
  each of `splits`, concatenated, optionally only the examples at `index`.

  Whatever split `make_dataset` asks for, it yields these examples.
  """

  def __init__(self, source: data.Source, splits: Sequence[str],
               max_examples: Optional[int] = None,
               index: Optional[np.ndarray] = None):
    self.name, self.num_classes = source.name, source.num_classes
    self.may_contain_corrupt_images = source.may_contain_corrupt_images
    self._source, self._splits = source, tuple(splits)
    self._sizes = [min(source.num_examples(s), max_examples or np.inf)
                   for s in self._splits]
    self._index = index

  def num_examples(self, split: Optional[str] = None) -> int:
    del split
    return len(self._index) if self._index is not None else int(sum(self._sizes))

  def as_dataset(self, split=None, *, shuffle_files=False, seed=None,
                 input_context=None) -> tf.data.Dataset:
    """One pass; file order is shuffled only when every example is kept."""
    del split
    if input_context and input_context.num_input_pipelines > 1:
      raise ValueError("The on-the-fly probe reads on one worker.")
    everything = self._index is None and all(
        size == self._source.num_examples(s)
        for s, size in zip(self._splits, self._sizes))
    parts = [self._source.as_dataset(s, shuffle_files=shuffle_files and everything,
                                     seed=seed).take(int(size))
             for s, size in zip(self._splits, self._sizes)]
    if everything and shuffle_files and len(parts) > 1:
      # Interleaved at random, so that `val` does not always come last.
      return tf.data.Dataset.sample_from_datasets(
          parts, weights=np.array(self._sizes) / sum(self._sizes), seed=seed,
          stop_on_empty_dataset=False)
    examples = functools.reduce(tf.data.Dataset.concatenate, parts)
    if self._index is None:
      return examples
    keep = np.zeros(int(sum(self._sizes)), bool)
    keep[self._index] = True
    keep = tf.constant(keep)
    return examples.enumerate().filter(
        lambda i, _: tf.gather(keep, i)).map(lambda _, example: example)


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


def datasets(context: ImageProbeContext, batch_size: int):
  """(training examples, repeated and augmented; eval examples, one pass)."""
  train = SplitExamples(context.source, context.train_splits,
                        context.max_examples, context.train_index)
  evaluation = SplitExamples(context.source, [context.eval_split],
                             context.max_examples)
  as_pairs = lambda ds: ds.map(lambda ex: (ex["image"], ex["label"]))
  train_ds = data.make_dataset(train, "train", context.preprocess, batch_size,
                               training=True, seed=context.seed)
  eval_ds = data.make_dataset(evaluation, "test", context.preprocess,
                              context.eval_batch_size, training=False)
  return train.num_examples(), as_pairs(train_ds), as_pairs(eval_ds)


@gin.configurable(denylist=["context", "num_classes"])
def train_linear_sgd_on_images(
    context: ImageProbeContext,
    num_classes: int,
    epochs: int = 70,
    decay_epochs: Sequence[int] = (30, 50),
    batch_size: int = 2048,
    base_learning_rate: float = 0.1,
    momentum: float = 0.9,
) -> probes_lib.ProbeResult:
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
  num_train, train_ds, eval_ds = datasets(context, batch_size)
  steps_per_epoch = num_train // batch_size
  if not steps_per_epoch:
    raise ValueError(f"{num_train} training examples make no batch of "
                     f"{batch_size}; lower train_linear_sgd_on_images.batch_size.")
  featurize = _featurizer(context)
  num_features = int(featurize(next(iter(eval_ds))[0]).shape[1])
  model = FrozenEncoderLinear(featurize, num_features, num_classes)
  result = probes_lib.fit_sgd(
      model, train_ds, eval_ds, epochs, steps_per_epoch,
      base_learning_rate * batch_size / 256, decay_epochs, momentum)
  return result


@probes_lib.PROBES.register("linear_sgd_images", needs_images=True)
def linear_sgd_images_probe(context: ImageProbeContext, num_classes: int
                            ) -> Dict[str, Any]:
  """`train_linear_sgd_on_images`; a row like `linear_sgd`'s."""
  result = train_linear_sgd_on_images(context, num_classes)
  return {**probes_lib.history_row(result),
          "num_features": int(result.model.logits.kernel.shape[0])}
