"""`make_dataset`: source -> preprocessed, batched `tf.data.Dataset`."""
import logging
import random
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


def _count_stream_failures(ds: tf.data.Dataset, description: str,
                           start: int) -> tf.data.Dataset:
  """Drops (position, example) pairs whose reading or preprocessing failed.

  Each gap in the positions of the kept examples is logged when the example
  after it arrives (a `scan` in the graph; Python runs once per gap).
  """

  def log_gap(first, stop, total):
    log.warning("%s: skipped %d unreadable or failing images (stream "
                "positions %d to %d); %d since this pipeline started.",
                description, stop - first, first, stop - 1, total)
    return total

  def count(state, element):
    expected, total = state
    position, _ = element
    gap = position - expected
    total = tf.cond(
        gap > 0, lambda: tf.numpy_function(
            log_gap, [expected, position, total + gap], tf.int64,
            stateful=True),
        lambda: total)
    return (position + 1, tf.reshape(total, [])), element

  initial = (tf.constant(start, tf.int64), tf.constant(0, tf.int64))
  return ds.ignore_errors().scan(initial, count)


_AUGMENTATION_SALT = 3


def make_dataset(source: sources.Source, split: str,
                 preprocess: Union[preprocess_lib.Spec, Callable[[dict], dict]],
                 batch_size: int, training: bool, seed: Optional[int] = None,
                 input_context: Optional[tf.distribute.InputContext] = None,
                 shuffle_buffer: int = 10_000,
                 start_batch: int = 0) -> tf.data.Dataset:
  """Batched, preprocessed examples of `split`.

  Training: this pipeline's shard as an endless stream (`training_stream`),
  shuffled anew each epoch, preprocessed in parallel, batched with epochs
  running into each other. Its n-th batch is a pure function of (seed, n, the
  shard): the example order of epoch e comes from (seed, e) and the
  augmentation of the example at stream position k from (seed, pipeline, k),
  so a resumed run that passes `start_batch` gets the batches an
  uninterrupted run would have got. Eval: one pass in order, last batch kept.

  Examples of sources with loose files (`source.may_contain_corrupt_images`)
  that fail to read, decode or preprocess are skipped, and the count is logged
  (eval: per pass; training: per gap). A skipped image shifts the later
  batches of that pipeline by one example, so a run resumed after one is
  offset by the number skipped before its checkpoint.

  Args:
    source: the data source; it shards by `input_context`.
    split: `train`, `val`, `trainval` or `test`.
    preprocess: a spec (`"op1|op2(args)"` or a list of them) or a function on
      example dicts.
    batch_size: examples per batch of this pipeline. With `input_context`, pass
      the per-replica size: `input_context.get_per_replica_batch_size(global)`.
    training: augmentation, shuffling and repetition on or off.
    seed: makes order and augmentation reproducible: two datasets built with the
      same seed yield the same batches. None: a random seed (training) and
      nondeterministic parallelism.
    input_context: from `strategy.distribute_datasets_from_function`.
    shuffle_buffer: examples in the shuffle buffer (training, sources without
      random access).
    start_batch: training: batches of this pipeline to skip, i.e. that a run
      being resumed had consumed. Sources with random access
      (`IndexedSource`) skip for free; others read the skipped part of the
      current epoch (without decoding).

  Returns:
    Dataset of dicts of batched tensors (at least "image" and "label").
  """
  if not callable(preprocess):
    preprocess = preprocess_lib.get_preprocess_fn(preprocess, training=training)
  corrupt = getattr(source, "may_contain_corrupt_images", False)
  description = f"{source.name}/{split}"
  augmentation_seed = lambda seed, pipeline_id: sources.stream_seed(
      seed, _AUGMENTATION_SALT, pipeline_id)

  def seeded_preprocess(base_seed, position, example):
    example_seed = tf.random.experimental.stateless_fold_in(base_seed, position)
    example = preprocess({**example, preprocess_lib.SEED_KEY: example_seed})
    return {k: v for k, v in example.items() if k != preprocess_lib.SEED_KEY}

  if not training:
    base_seed = augmentation_seed(seed or 0, 0)
    ds = source.as_dataset(split, input_context=input_context).enumerate()
    ds = ds.map(lambda i, example: seeded_preprocess(base_seed, i, example),
                num_parallel_calls=tf.data.AUTOTUNE)
    if corrupt:
      ds = _skip_and_count_failures(ds, description)
    ds = ds.batch(batch_size, num_parallel_calls=tf.data.AUTOTUNE)
    return ds.prefetch(tf.data.AUTOTUNE)

  deterministic = seed is not None
  if seed is None:
    seed = random.SystemRandom().randrange(2**31)
  start = start_batch * batch_size
  ds = sources.training_stream(source, split, seed=seed, start=start,
                               input_context=input_context,
                               shuffle_buffer=shuffle_buffer)
  base_seed = augmentation_seed(
      seed, input_context.input_pipeline_id if input_context else 0)
  ds = ds.map(lambda position, example: (
      position, seeded_preprocess(base_seed, position, example)),
              num_parallel_calls=tf.data.AUTOTUNE, deterministic=deterministic)
  if corrupt:
    ds = _count_stream_failures(ds, description, start)
  ds = ds.map(lambda _, example: example)
  ds = ds.batch(batch_size, drop_remainder=True,
                num_parallel_calls=tf.data.AUTOTUNE)
  return ds.prefetch(tf.data.AUTOTUNE)
