"""Tests of `make_dataset`: batching, repetition, sharding, determinism."""
import numpy as np
import pytest
import tensorflow as tf

from tfrevisit import data
from tfrevisit.data import preprocess

_AUGMENT = "crop(12)|flip_lr|to_gray(p=0.5)|value_range(0, 1)"


def _source(num_examples=10):
  return data.get_source("random", image_shape=(16, 16, 3), num_classes=5,
                         num_examples=num_examples)


def _batches(ds, count=None):
  return list((ds.take(count) if count else ds).as_numpy_iterator())


def test_same_seed_same_batches_other_seed_other_batches():
  def first_batches(seed):
    return _batches(data.make_dataset(_source(), "train", _AUGMENT, 4,
                                      training=True, seed=seed), 4)
  a, b, c = first_batches(7), first_batches(7), first_batches(8)
  for batch_a, batch_b in zip(a, b):
    np.testing.assert_array_equal(batch_a["image"], batch_b["image"])
    np.testing.assert_array_equal(batch_a["label"], batch_b["label"])
  assert any((x["image"] != y["image"]).any() for x, y in zip(a, c))


def test_training_shuffles_repeats_and_reaugments_each_pass():
  source = _source(8)
  batches = _batches(data.make_dataset(source, "train", _AUGMENT, 8,
                                       training=True, seed=0), 2)
  labels = [np.sort(b["label"]) for b in batches]
  np.testing.assert_array_equal(labels[0], labels[1])  # Each pass: all 8.
  assert (batches[0]["image"] != batches[1]["image"]).any()
  in_order = next(source.as_dataset("train").batch(8).as_numpy_iterator())
  np.testing.assert_array_equal(np.sort(in_order["label"]), labels[0])


def test_training_drops_remainder_eval_keeps_it_in_order():
  source = _source(10)
  train = _batches(data.make_dataset(source, "train", "decode", 4,
                                     training=True, seed=0), 5)
  assert [len(b["label"]) for b in train] == [4] * 5
  assert data.make_dataset(source, "train", "decode", 4,
                           training=True).element_spec["image"].shape[0] == 4
  evaluation = _batches(data.make_dataset(source, "test", "decode", 4,
                                          training=False))
  assert [len(b["label"]) for b in evaluation] == [4, 4, 2]
  expected = next(source.as_dataset("test").batch(10).as_numpy_iterator())
  np.testing.assert_array_equal(
      np.concatenate([b["image"] for b in evaluation]), expected["image"])
  np.testing.assert_array_equal(
      np.concatenate([b["label"] for b in evaluation]), expected["label"])


def test_eval_is_deterministic_without_seed():
  runs = [_batches(data.make_dataset(_source(), "val", _AUGMENT, 5,
                                     training=False)) for _ in range(2)]
  for a, b in zip(*runs):
    np.testing.assert_array_equal(a["image"], b["image"])


def test_input_context_shards_once():
  source = _source(12)
  seen = []
  for pipeline_id in range(2):
    context = tf.distribute.InputContext(num_input_pipelines=2,
                                         input_pipeline_id=pipeline_id,
                                         num_replicas_in_sync=2)
    batches = _batches(data.make_dataset(
        source, "test", "decode", context.get_per_replica_batch_size(4),
        training=False, input_context=context))
    assert [len(b["label"]) for b in batches] == [2, 2, 2]
    seen += [x.tobytes() for b in batches for x in b["image"]]
  everything = next(source.as_dataset("test").batch(12).as_numpy_iterator())
  assert sorted(seen) == sorted(x.tobytes() for x in everything["image"])


def test_callable_preprocess_gets_a_seed_that_is_removed():
  def preprocess_fn(example):
    assert preprocess.SEED_KEY in example
    return {**example, "image": tf.reduce_sum(tf.cast(example["image"],
                                                      tf.int32))}
  batch = _batches(data.make_dataset(_source(), "train", preprocess_fn, 3,
                                     training=False), 1)[0]
  assert set(batch) == {"image", "label"} and batch["image"].shape == (3,)


def test_spec_list_works_like_string():
  kwargs = dict(batch_size=4, training=True, seed=3)
  from_string = _batches(data.make_dataset(_source(), "train", _AUGMENT,
                                           **kwargs), 1)[0]
  from_list = _batches(data.make_dataset(_source(), "train",
                                         _AUGMENT.split("|"), **kwargs), 1)[0]
  np.testing.assert_array_equal(from_string["image"], from_list["image"])


def test_bad_spec_fails_when_building():
  with pytest.raises(ValueError, match="valid choices"):
    data.make_dataset(_source(), "train", "decode|nope", 4, training=True)


def test_distribute_datasets_from_function_gives_per_replica_batches(two_cpu_strategy):
  strategy = two_cpu_strategy
  dist = strategy.distribute_datasets_from_function(
      lambda context: data.make_dataset(
          _source(), "train", "crop(8)|rotate",
          context.get_per_replica_batch_size(6), training=True, seed=0,
          input_context=context))
  batch = next(iter(dist))
  images = strategy.experimental_local_results(batch["image"])
  labels = strategy.experimental_local_results(batch["label"])
  assert [x.shape for x in images] == [(3, 4, 8, 8, 3)] * 2
  np.testing.assert_array_equal(labels[0].numpy(), [[0, 1, 2, 3]] * 3)
