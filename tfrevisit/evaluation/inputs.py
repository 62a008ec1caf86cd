"""What `evaluate` gives a probe: `ProbeInputs`, the one argument of every
probe (`probes.PROBES`).

A probe registered with `needs="features"` gets the feature splits of one
end point (`ProbeInputs.features`, see `splits`); one registered with
`needs="images"` gets an `ImageProbeContext` (`ProbeInputs.images`): the
export, the data and the end point, from which it reads images itself
(`image_datasets`: augmented training batches, the reported split in eval
mode).
"""
import dataclasses
import functools
from typing import Any, Dict, Optional, Sequence, Tuple

import numpy as np
import tensorflow as tf

from tfrevisit import data
from tfrevisit.evaluation import splits as splits_lib

# What a probe may need (its `needs` in `probes.PROBES`).
FEATURES = "features"
IMAGES = "images"


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
    export_dir: the export's directory (`finetune` reads its encoder.keras).
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
  export_dir: Optional[str] = None


def end_point_names(module) -> list:
  """The sorted end points of the export's `representation` signature."""
  return sorted(module.signatures["representation"].structured_outputs)


def training_labels(context: ImageProbeContext) -> np.ndarray:
  """Labels [N] of the training examples in order (reads them once)."""
  examples = SplitExamples(context.source, context.train_splits,
                           context.max_examples).as_dataset()
  batches = examples.map(lambda example: example["label"]).batch(4096)
  return np.concatenate(list(batches.as_numpy_iterator()))


@dataclasses.dataclass(frozen=True)
class ProbeInputs:
  """The one argument of every probe: `probe(inputs, **options) -> row`.

  Attributes:
    num_classes: C.
    features: for probes that need "features": {"train", "val", "trainval",
      "test"} -> `splits.Split` of one end point, under the protocol and the
      label fraction (`splits.protocol_splits`, `splits.label_subset`);
      the rows report on "test". None otherwise.
    images: for probes that need "images": the `ImageProbeContext`, its
      `train_index` the label fraction. None otherwise.
  """
  num_classes: int
  features: Optional[Dict[str, splits_lib.Split]] = None
  images: Optional[ImageProbeContext] = None


def with_label_fraction(context: ImageProbeContext,
                        per_split: Optional[Dict[str, splits_lib.Split]],
                        fraction: float, seed: int) -> ImageProbeContext:
  """`context` restricted to a label fraction: a class-balanced, seeded
  subset of trainval's indices into the training examples (train then val,
  table2); image probes have fixed hyper-parameters, so no split chooses.
  `per_split`: the features' protocol splits, whose trainval labels are the
  training examples' (None: read them from the source)."""
  if fraction >= 1:
    return context
  if per_split:
    labels = per_split["trainval"][1]
  else:
    labels = training_labels(context)
  return dataclasses.replace(context, train_index=splits_lib.balanced_subset(
      labels, fraction, seed, context.source.num_classes))


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



def image_datasets(context: ImageProbeContext, batch_size: int):
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

