"""`make_dataset`: source -> preprocessed, batched `tf.data.Dataset`."""
import logging
from typing import Callable, Optional, Union

import tensorflow as tf

from tfrevisit.data import preprocess as preprocess_lib
from tfrevisit.data import sources

log = logging.getLogger("tfrevisit.data.pipeline")


def _zeros_like_spec(element_spec):
  """Zeros of `element_spec`'s dtypes and shapes (unknown dimensions: 0)."""
  return tf.nest.map_structure(
      lambda spec: tf.zeros([d or 0 for d in spec.shape], spec.dtype),
      element_spec)


def _skip_and_count_failures(ds: tf.data.Dataset,
                             description: str) -> tf.data.Dataset:
  """Drops examples whose reading, decoding or preprocessing failed.

  At the end of each pass, logs how many examples were dropped. Counting is a
  `scan` in the graph; Python runs once per pass.
  """
  expected = int(ds.cardinality())  # Per pass; negative when unknown.

  def log_counts(kept):
    skipped = expected - kept if expected >= 0 else -1  # -1: unknown.
    log_fn = log.warning if skipped else log.info
    log_fn("%s: skipped %d unreadable or failing images this pass, kept %d.",
           description, skipped, kept)
    return kept

  def count(kept, element):
    example, is_end = element
    logged = tf.cond(
        is_end, lambda: tf.numpy_function(log_counts, [kept], tf.int64, stateful=True),
        lambda: kept)
    with tf.control_dependencies([logged]):
      return tf.where(is_end, tf.constant(0, tf.int64), kept + 1), element

  end_marker = tf.data.Dataset.range(1).map(
      lambda _: (_zeros_like_spec(ds.element_spec), True))
  ds = ds.ignore_errors().map(lambda ex: (ex, False)).concatenate(end_marker)
  ds = ds.scan(tf.constant(0, tf.int64), count)
  return ds.filter(lambda _, is_end: tf.logical_not(is_end)).map(
      lambda ex, _: ex)


def make_dataset(source: sources.Source, split: str,
                 preprocess: Union[preprocess_lib.Spec, Callable[[dict], dict]],
                 batch_size: int, training: bool, seed: Optional[int] = None,
                 input_context: Optional[tf.distribute.InputContext] = None,
                 shuffle_buffer: int = 10_000) -> tf.data.Dataset:
  """Batched, preprocessed examples of `split`.

  Training: this worker's shard, shuffled, preprocessed in parallel, repeated
  forever, batched with the remainder dropped. Eval: one pass in order, last
  batch kept. Examples of sources with loose files
  (`source.may_contain_corrupt_images`) that fail to read, decode or preprocess
  are skipped, and the count is logged at the end of each pass.

  Args:
    source: the data source; it shards by `input_context`.
    split: `train`, `val`, `trainval` or `test`.
    preprocess: a spec (`"op1|op2(args)"` or a list of them) or a function on
      example dicts.
    batch_size: examples per batch of this pipeline. With `input_context`, pass
      the per-replica size: `input_context.get_per_replica_batch_size(global)`.
    training: augmentation, shuffling and repetition on or off.
    seed: makes order and augmentation reproducible: two datasets built with the
      same seed yield the same batches. None: nondeterministic.
    input_context: from `strategy.distribute_datasets_from_function`.
    shuffle_buffer: examples in the shuffle buffer (training only).

  Returns:
    Dataset of dicts of batched tensors (at least "image" and "label").
  """
  if not callable(preprocess):
    preprocess = preprocess_lib.get_preprocess_fn(preprocess, training=training)
  # Independent seeds for file order, shuffling and augmentation.
  file_seed, shuffle_seed, augmentation_seed = (
      (None,) * 3 if seed is None else (seed, seed + 1, seed + 2))
  ds = source.as_dataset(split, shuffle_files=training, seed=file_seed,
                         input_context=input_context)
  if training:
    ds = ds.shuffle(shuffle_buffer, seed=shuffle_seed,
                    reshuffle_each_iteration=True)
  seeds = tf.data.Dataset.random(seed=augmentation_seed,
                                 rerandomize_each_iteration=True).batch(2)

  def seeded_preprocess(example, example_seed):
    example = preprocess({**example, preprocess_lib.SEED_KEY: example_seed})
    return {k: v for k, v in example.items() if k != preprocess_lib.SEED_KEY}

  ds = tf.data.Dataset.zip(ds, seeds).map(
      seeded_preprocess, num_parallel_calls=tf.data.AUTOTUNE,
      deterministic=not training or seed is not None)
  if getattr(source, "may_contain_corrupt_images", False):
    ds = _skip_and_count_failures(ds, f"{source.name}/{split}")
  if training:
    ds = ds.repeat()
  ds = ds.batch(batch_size, drop_remainder=training,
                num_parallel_calls=tf.data.AUTOTUNE)
  return ds.prefetch(tf.data.AUTOTUNE)
