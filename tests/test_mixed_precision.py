"""Mixed precision end to end: `train()` under mixed_bfloat16 for every task,
mixed_float16's loss scaling, and float32 exports of mixed-precision models."""
import os

import keras
import numpy as np
import pytest
import tensorflow as tf

from tfrevisit import artifacts
from tfrevisit import data
from tfrevisit import export
from tfrevisit import gin_config
from tfrevisit import models
from tfrevisit import pretext
from tfrevisit import train
from tfrevisit.bench import device_check
from tfrevisit.data import sources
from tfrevisit.training import loop
from tfrevisit.training import run as run_lib

# One unit per stage: these tests exercise the loop, files and probes, not depth.
pytestmark = pytest.mark.usefixtures("shallow_backbones")

# Tiny options per task, a few seconds of compute each (tracing and the
# export's SavedModel dominate): the device check's smoke settings, keyed by
# task instead of config stem.
TASK_BINDINGS = {
    {"relpatch": "relative_patch_location"}.get(stem, stem): bindings
    for stem, bindings in device_check.SMOKE_BINDINGS.items()}
MAX_STEPS = 2


def test_every_task_has_tiny_settings():
  assert sorted(TASK_BINDINGS) == sorted(pretext.TASKS.names())


def _source():
  return sources.RandomSource(image_shape=(64, 64, 3), num_examples=16)


def _train(workdir, task, policy, monkeypatch):
  """Runs `train()` for MAX_STEPS; returns (metrics, the task, the optimizer)."""
  built = {}
  get_task, make_optimizer = gin_config.configured_task, run_lib.make_optimizer

  def spy_task(*args, **kwargs):
    built["task"] = get_task(*args, **kwargs)
    return built["task"]

  def spy_optimizer(*args):
    built["optimizer"] = make_optimizer(*args)
    return built["optimizer"]

  monkeypatch.setattr(gin_config, "configured_task", spy_task)
  monkeypatch.setattr(run_lib, "make_optimizer", spy_optimizer)
  gin_config.parse_gin([], [
      f'train.task = "{task}"', "train.batch_size = 4", "train.epochs = 1",
      f"train.max_steps = {MAX_STEPS}", "train.warmup_epochs = 0",
      "train.decay_epochs = ()", "train.log_every_steps = 1",
      f'train.mixed_precision = "{policy}"',
      'backbone.name = "resnet50_v2"', "backbone.filters_factor = 1",
  ] + TASK_BINDINGS[task])
  metrics = train.train(workdir, backbone=gin_config.configured_backbone(),
                        source=_source())
  return metrics, built["task"], built["optimizer"]


def _batch(task):
  dataset = data.make_dataset(_source(), "train", task.train_preprocess, 2,
                              training=True, seed=0)
  return next(iter(dataset))


def _check_float32_export(workdir, task, compute_dtype):
  """The export loads, computes in float32 and matches the mixed encoder."""
  loaded = tf.saved_model.load(os.path.join(workdir, "export", "latest"))
  images = base_images(_batch(task)["image"])
  representation = loaded.signatures["representation"](image=images)
  assert {v.dtype for v in representation.values()} == {tf.float32}
  assert loaded(images).dtype == tf.float32
  keras_encoder = keras.saving.load_model(
      artifacts.keras_encoder_path(os.path.join(workdir, "export", "latest")))
  assert keras_encoder(images)["pre_logits"].dtype == "float32"
  expected = task.encoder(images, training=False)
  assert expected["pre_logits"].dtype == compute_dtype  # It was mixed.
  # Same weights: equal up to the mixed encoder's rounding.
  np.testing.assert_allclose(
      representation["logits"].numpy(), expected["logits"].numpy(),
      rtol=0.1, atol=0.1 * float(np.abs(expected["logits"]).max()))


def base_images(images):
  """A task batch's images as one [N, h, w, 3] batch of views."""
  return pretext.base.flatten_views(images) if images.shape.rank == 5 else images


@pytest.mark.slow  # 25-50 s each on a loaded 2-core CPU.
@pytest.mark.parametrize("task_name", sorted(TASK_BINDINGS))
def test_train_under_mixed_bfloat16(tmp_path, monkeypatch, task_name):
  workdir = str(tmp_path / task_name)
  metrics, task, optimizer = _train(workdir, task_name, "mixed_bfloat16",
                                    monkeypatch)
  assert np.isfinite(metrics["loss"]) and np.isfinite(metrics["regularization"])
  assert int(optimizer.iterations.numpy()) == MAX_STEPS
  assert task.encoder.compute_dtype == "bfloat16"
  # Heads and losses stay float32.
  batch = _batch(task)
  per_image_loss, task_metrics = task.loss(batch, training=False)
  assert per_image_loss.dtype == tf.float32
  assert {m.dtype for m in task_metrics.values()} == {tf.float32}
  assert task.encoder.output["logits"].dtype == "float32"
  if task.head is not None:
    assert task.head.output.dtype == "float32"
  assert all(v.dtype == "float32" for v in task.trainable_variables)
  _check_float32_export(workdir, task, tf.bfloat16)


@pytest.mark.slow  # ~30 s on a loaded 2-core CPU.
def test_train_under_mixed_float16_scales_the_loss(tmp_path, monkeypatch):
  # float16 convolutions run on CPU (Eigen; oneDNN's only with AVX-512).
  workdir = str(tmp_path / "rotation")
  metrics, task, optimizer = _train(workdir, "rotation", "mixed_float16",
                                    monkeypatch)
  assert isinstance(optimizer, keras.optimizers.LossScaleOptimizer)
  assert np.isfinite(metrics["loss"])
  # A step whose scaled gradients overflow float16 is skipped and halves the
  # scale (Keras's initial 2**15 overflows at this init); `iterations` counts
  # the applied steps only.
  skipped = np.log2(optimizer.initial_scale
                    / float(optimizer.dynamic_scale.numpy()))
  assert skipped == int(skipped) >= 0
  assert int(optimizer.iterations.numpy()) + skipped == MAX_STEPS
  # Checkpoints and the export count the steps run, skipped ones included.
  assert tf.train.latest_checkpoint(
      os.path.join(workdir, "checkpoints")).endswith(f"ckpt-{MAX_STEPS}")
  assert artifacts.read_metadata(
      os.path.join(workdir, "export", "latest"))["global_step"] == MAX_STEPS
  assert task.encoder.compute_dtype == "float16"
  _check_float32_export(workdir, task, tf.float16)


def _rotation_task():
  return pretext.get_task("rotation", backbone=models.Backbone("resnet50_v2", 1),
                          num_classes=10, image_size=32)


def _rotation_iterator(seed=0):
  images = tf.random.stateless_uniform([2, 4, 32, 32, 3], [seed, 0], -1, 1)
  labels = tf.tile(tf.range(4)[None], [2, 1])
  return iter(tf.data.Dataset.from_tensors(
      {"image": images, "label": labels}).repeat())


def test_float16_step_skips_overflowing_gradients_and_halves_the_scale():
  keras.mixed_precision.set_global_policy("mixed_float16")
  keras.utils.set_random_seed(0)
  task = _rotation_task()
  # 2**30 times the loss overflows float16 in the backward pass.
  optimizer = keras.optimizers.LossScaleOptimizer(
      keras.optimizers.SGD(0.1), initial_scale=2.0 ** 30)
  optimizer.build(task.trainable_variables)
  step = loop.make_train_step(task, optimizer, tf.distribute.get_strategy(), 2)
  iterator = _rotation_iterator()
  before = [v.numpy() for v in task.trainable_variables]

  step(iterator)
  assert float(optimizer.dynamic_scale) == 2.0 ** 29
  for old, variable in zip(before, task.trainable_variables):
    np.testing.assert_array_equal(old, variable.numpy())

  optimizer.dynamic_scale.assign(2.0 ** 8)  # Fits float16: a real update.
  sums = step(iterator)
  assert np.isfinite(float(sums["loss"]))
  assert float(optimizer.dynamic_scale) == 2.0 ** 8
  changed = [not np.array_equal(old, v.numpy())
             for old, v in zip(before, task.trainable_variables)]
  assert all(changed)


def test_an_overflow_on_one_replica_skips_the_step_on_all(two_cpu_strategy):
  """Keras' LossScaleOptimizer decides from the first replica's gradients
  alone; the second replica's overflow must still skip the step."""
  strategy = two_cpu_strategy
  keras.mixed_precision.set_global_policy("mixed_float16")
  keras.utils.set_random_seed(0)
  with strategy.scope():
    task = _rotation_task()
    optimizer = keras.optimizers.LossScaleOptimizer(
        keras.optimizers.SGD(0.1), initial_scale=2.0 ** 8)
    optimizer.build(task.trainable_variables)
  images = tf.random.stateless_uniform([4, 4, 32, 32, 3], [0, 0], -1, 1)
  # The second replica's half of the batch overflows float16; the first's not.
  images *= tf.constant([1.0, 1.0, 1e5, 1e5])[:, None, None, None, None]
  labels = tf.tile(tf.range(4)[None], [4, 1])
  dataset = strategy.experimental_distribute_dataset(
      tf.data.Dataset.from_tensors({"image": images, "label": labels}).repeat())
  step = loop.make_train_step(task, optimizer, strategy, 4)
  before = [v.numpy() for v in task.trainable_variables]

  step(iter(dataset))
  assert float(optimizer.dynamic_scale.numpy()) == 2.0 ** 7
  assert int(optimizer.iterations.numpy()) == 0
  for old, variable in zip(before, task.trainable_variables):
    for value in strategy.experimental_local_results(variable.value):
      np.testing.assert_array_equal(old, value.numpy())


def test_float32_encoder_copies_a_mixed_encoder():
  keras.mixed_precision.set_global_policy("mixed_bfloat16")
  keras.utils.set_random_seed(0)
  task = _rotation_task()
  copy = export.float32_encoder(task)
  assert keras.mixed_precision.global_policy().name == "mixed_bfloat16"
  assert copy is not task.encoder
  assert {t.dtype for t in copy.output.values()} == {"float32"}
  for mine, theirs in zip(copy.weights, task.encoder.weights):
    np.testing.assert_array_equal(mine.numpy(), theirs.numpy())
  images = tf.random.stateless_uniform([2, 32, 32, 3], [1, 2], -1, 1)
  np.testing.assert_allclose(copy(images)["logits"],
                             task.encoder(images)["logits"], rtol=0.1, atol=0.05)


def test_float32_encoder_keeps_a_float32_encoder():
  task = _rotation_task()
  assert export.float32_encoder(task) is task.encoder
