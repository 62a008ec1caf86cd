"""Tests for RevNet's memory-efficient (reversible) backprop, `memory_efficient`.

Each test trains a model with the switch on and an identical copy with it off
(plain backprop, the reference) and compares.
"""
import gin
import keras
import numpy as np
import pytest
import tensorflow as tf

from tfrevisit import export
from tfrevisit import models
from tfrevisit.models import layers

_NUM_CLASSES = 3
_STEPS = 3


def _revnet50(memory_efficient, seed=0):
  """RevNet50 at k=1 on 32x32 images, BatchNorm parameters and statistics
  randomised (seeded) so that no unit sits at ReLU's kink at 0 or dies."""
  keras.utils.set_random_seed(seed)
  model = models.backbone("revnet50", filters_factor=1, num_classes=_NUM_CLASSES,
                          input_shape=(64, 64, 3),
                          memory_efficient=memory_efficient)
  _randomise_batch_norms(model, np.random.RandomState(seed))
  return model


def _randomise_batch_norms(model, rng):
  for weight in model.weights:
    name = weight.path.rsplit("/", 1)[-1]
    if name in ("gamma", "moving_variance"):
      weight.assign(rng.uniform(0.5, 1.5, weight.shape))
    elif name in ("beta", "moving_mean"):
      weight.assign(rng.uniform(-0.5, 0.5, weight.shape))


def _mini_revnet(memory_efficient, seed=0):
  """Two 2-unit stages with RevNet's pooling and zero channel padding between:
  images [B, 16, 16, 3] -> {"logits": [B, 3] float32, "block2": [B, 8, 8, 64]}."""
  keras.utils.set_random_seed(seed)
  images = keras.Input((16, 16, 3))
  x = layers.conv2d(32, 3, 1, None, "root_conv")(images)
  x = models.ReversibleStage(2, 1e-4, memory_efficient, name="block1")(x)
  x = keras.layers.AveragePooling2D(2)(x)
  x = layers.ZeroPadChannels(32)(x)
  block2 = models.ReversibleStage(2, 1e-4, memory_efficient, name="block2")(x)
  x = layers.batch_norm_relu(block2, "postnorm")
  x = keras.layers.GlobalAveragePooling2D()(x)
  logits = keras.layers.Dense(_NUM_CLASSES, dtype="float32")(x)
  model = keras.Model(images, {"logits": logits, "block2": block2})
  _randomise_batch_norms(model, np.random.RandomState(seed))
  return model


def _batches(batch_size, size, seed=0):
  rng = np.random.RandomState(seed)
  for _ in range(_STEPS):
    yield (rng.randn(batch_size, size, size, 3).astype(np.float32),
           rng.randint(0, _NUM_CLASSES, batch_size))


def _loss(model, images, labels):
  """Cross-entropy, weight decay and a term on an inner end point (block2), so
  that a stage output receives gradient from two consumers."""
  outputs = model(images, training=True)
  cross_entropy = tf.reduce_mean(
      tf.nn.sparse_softmax_cross_entropy_with_logits(labels, outputs["logits"]))
  inner = tf.reduce_mean(tf.square(tf.cast(outputs["block2"], tf.float32)))
  return cross_entropy + 0.1 * inner + tf.add_n(model.losses), outputs


def _sgd_step_fn(model):
  """A tf.function SGD step: (images, labels) -> (loss, grads, after_root)."""
  optimizer = keras.optimizers.SGD(0.01, momentum=0.9)
  optimizer.build(model.trainable_variables)

  @tf.function
  def step(images, labels):
    with tf.GradientTape() as tape:
      loss, outputs = _loss(model, images, labels)
    grads = tape.gradient(loss, model.trainable_variables)
    optimizer.apply_gradients(zip(grads, model.trainable_variables))
    return loss, grads, outputs["after_root"]

  return step


@pytest.fixture(name="sgd_runs", scope="module")
def _sgd_runs_fixture():
  return _sgd_runs()


def _sgd_runs():
  """Three SGD steps of RevNet50 with the switch on and off, same initial weights.

  Returns {memory_efficient: dict(losses, grads (per step, per variable),
  moving_initial, moving_after_step1 ({path: value}), after_root of step 1)}.
  """
  runs = {}
  for memory_efficient in (True, False):
    model = _revnet50(memory_efficient)
    step = _sgd_step_fn(model)
    moving = lambda: {w.path: w.numpy() for w in model.non_trainable_weights}
    run = {"losses": [], "grads": [], "moving_initial": moving()}
    for images, labels in _batches(4, 64):
      loss, grads, after_root = step(images, labels)
      run["losses"].append(float(loss))
      run["grads"].append([g.numpy() for g in grads])
      if len(run["losses"]) == 1:
        run["moving_after_step1"] = moving()
        run["after_root"] = after_root.numpy()
    run["paths"] = [w.path for w in model.trainable_variables]
    runs[memory_efficient] = run
  return runs


def _assert_grads_close(actual, expected, paths, rtol):
  """Per variable: |actual - expected| <= rtol * max |expected|, and not all 0."""
  for path, got, want in zip(paths, actual, expected):
    np.testing.assert_allclose(got, want, rtol=0,
                               atol=rtol * np.abs(want).max(), err_msg=path)
  assert all(np.abs(want).max() > 0 for want in expected)


def test_gradients_of_every_variable_agree(sgd_runs):
  on, off = sgd_runs[True], sgd_runs[False]
  assert on["paths"] == off["paths"]
  for step in range(_STEPS):
    _assert_grads_close(on["grads"][step], off["grads"][step], off["paths"],
                        rtol=1e-4)


def test_three_sgd_steps_give_the_same_losses(sgd_runs):
  losses = sgd_runs[True]["losses"]
  np.testing.assert_allclose(losses, sgd_runs[False]["losses"], rtol=1e-6)
  assert len(set(losses)) == _STEPS  # the steps did change something


def test_moving_statistics_are_updated_once_per_step(sgd_runs):
  on, off = sgd_runs[True], sgd_runs[False]
  for path, value in off["moving_after_step1"].items():
    np.testing.assert_allclose(on["moving_after_step1"][path], value,
                               rtol=1e-5, atol=1e-6, err_msg=path)
  # The first BatchNorm of block1 sees the second half of after_root: its
  # statistics after one step follow from one momentum update.
  x2 = off["after_root"][..., off["after_root"].shape[-1] // 2:]
  momentum = layers.BATCH_NORM_MOMENTUM
  for statistic, batch_value in (("moving_mean", x2.mean(axis=(0, 1, 2))),
                                 ("moving_variance", x2.var(axis=(0, 1, 2)))):
    path = f"block1/unit1/bn1/{statistic}"
    np.testing.assert_allclose(
        on["moving_after_step1"][path],
        momentum * on["moving_initial"][path] + (1 - momentum) * batch_value,
        rtol=1e-4, err_msg=path)


def test_switch_is_on_by_default_and_set_by_gin():
  def stages(model):
    return [layer for layer in model.layers
            if isinstance(layer, models.ReversibleStage)]

  default = models.backbone("revnet50", filters_factor=1)
  assert len(stages(default)) == 4
  assert all(stage.memory_efficient for stage in stages(default))
  with gin.unlock_config():
    gin.parse_config("backbone.memory_efficient = False")
  try:
    configured = models.backbone("revnet50", filters_factor=1)
  finally:
    gin.clear_config()
  assert not any(stage.memory_efficient for stage in stages(configured))
  assert ([(w.path, w.shape) for w in default.weights]
          == [(w.path, w.shape) for w in configured.weights])


@pytest.mark.parametrize("memory_efficient", [True, False])
def test_keras_save_load_keeps_the_switch(memory_efficient, tmp_path):
  model = _mini_revnet(memory_efficient)
  path = str(tmp_path / "model.keras")
  model.save(path)
  restored = keras.saving.load_model(path)
  images = next(_batches(2, 16))[0]

  assert restored.get_layer("block1").memory_efficient == memory_efficient
  np.testing.assert_array_equal(restored(images, training=False)["logits"],
                                model(images, training=False)["logits"])


def test_exported_savedmodel_trains_like_plain_backprop(tmp_path):
  model, reference = _mini_revnet(True), _mini_revnet(False)
  path = str(tmp_path / "export")
  export.save_module(export.build_module(
      model, default_output="logits", preprocess_spec="value_range(-1, 1)",
      metadata={}), path)
  loaded = tf.saved_model.load(path)
  images, labels = next(_batches(4, 16))

  def grads(call, variables):
    with tf.GradientTape() as tape:
      loss = tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(
          labels, call(images)))
    return [g.numpy() for g in tape.gradient(loss, variables)]

  _assert_grads_close(
      grads(lambda x: loaded(x, training=True), loaded.trainable_variables),
      grads(lambda x: reference(x, training=True)["logits"],
            reference.trainable_variables),
      [w.path for w in reference.trainable_variables], rtol=1e-4)


def test_mirrored_strategy_step_matches_plain_backprop():
  strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
  images, labels = next(_batches(8, 16))
  weights = {}
  for memory_efficient in (True, False):
    with strategy.scope():
      model = _mini_revnet(memory_efficient)
      step = _sgd_step_fn(model)
    dataset = strategy.experimental_distribute_dataset(
        tf.data.Dataset.from_tensor_slices((images, labels)).batch(8))
    initial = [w.numpy() for w in model.weights]
    tf.function(lambda batch: strategy.run(step, args=batch))(
        next(iter(dataset)))
    weights[memory_efficient] = [
        w.numpy() - start for w, start in zip(model.weights, initial)]

  assert strategy.num_replicas_in_sync == 2
  _assert_grads_close(weights[True], weights[False],
                      [w.path for w in model.weights], rtol=1e-4)


def test_mixed_bfloat16_matches_plain_backprop_to_bfloat16_precision():
  grads, losses = {}, {}
  keras.mixed_precision.set_global_policy("mixed_bfloat16")
  try:
    for memory_efficient in (True, False):
      model = _mini_revnet(memory_efficient)
      images, labels = next(_batches(4, 16))
      with tf.GradientTape() as tape:
        loss, _ = _loss(model, images, labels)
      grads[memory_efficient] = [
          g.numpy() for g in tape.gradient(loss, model.trainable_variables)]
      losses[memory_efficient] = float(loss)
  finally:
    keras.mixed_precision.set_global_policy("float32")

  assert losses[True] == losses[False]  # same forward pass
  on, off = (np.concatenate([g.ravel() for g in grads[key]])
             for key in (True, False))
  assert np.all(np.isfinite(on))
  # Reconstruction x1 = y1 - F(y2) in bfloat16 loses up to 2^-8 of |y1|.
  assert np.linalg.norm(on - off) <= 0.05 * np.linalg.norm(off)
