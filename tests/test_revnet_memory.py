"""Tests for RevNet's memory-efficient (reversible) backprop, `memory_efficient`.

Each test trains a model with the switch on and an identical copy with it off
(plain backprop, the reference) and compares.
"""
import os
import re
import subprocess
import sys

import gin
import keras
import numpy as np
import pytest
import tensorflow as tf

from tfrevisit import export
from tfrevisit import gin_config
from tfrevisit import models
from tfrevisit.models import layers

_NUM_CLASSES = 3
_STEPS = 3
_NEAR_ZERO = 1e-5  # |ReLU input| this close to 0 may round to its other side


def _revnet50(memory_efficient, seed=0,
              kernel_initializer=layers.KERNEL_INITIALIZER):
  """RevNet50 at k=1 for 64x64 images, by default at the default
  initialisation, with its BatchNorms randomised (seeded)."""
  keras.utils.set_random_seed(seed)
  model = models.backbone("revnet50", filters_factor=1, num_classes=_NUM_CLASSES,
                          input_shape=(64, 64, 3),
                          kernel_initializer=kernel_initializer,
                          memory_efficient=memory_efficient)
  _randomise_batch_norms(model, np.random.RandomState(seed))
  return model


def _randomise_batch_norms(model, rng):
  """Random scales, and moving statistics far from any batch's: a backward pass
  that recomputed F with inference-mode BatchNorm would give other gradients.

  The offsets stay 0: random ones make the zero-padded units (see
  `ReversibleStage._backward`) so ill-conditioned that a relative weight change
  of 1e-7 moves the gradients by percents, with or without the switch.
  """
  for weight in model.weights:
    name = weight.path.rsplit("/", 1)[-1]
    if name in ("gamma", "moving_variance"):
      weight.assign(rng.uniform(0.5, 1.5, weight.shape))
    elif name == "moving_mean":
      weight.assign(rng.uniform(-1, 1, weight.shape))


def _mini_revnet(memory_efficient, seed=0):
  """RevNet's root in 3 chunks (so that the batches of 4 and 8 used here do
  not divide into them), then two 3-unit stages (the fewest units for which
  the backward pass uses a reconstructed input) with RevNet's pooling and zero
  channel padding between: images [B, 32, 32, 3] ->
  {"logits": [B, 3] float32, "block2": [B, 8, 8, 64]}."""
  keras.utils.set_random_seed(seed)
  images = keras.Input((32, 32, 3))
  x = models.RevNetRoot(32, 1, memory_efficient, num_chunks=3,
                        name="root")(images)
  x = models.ReversibleStage(3, 1e-4, memory_efficient, name="block1")(x)
  x = keras.layers.AveragePooling2D(2)(x)
  x = layers.ZeroPadChannels(32)(x)
  block2 = models.ReversibleStage(3, 1e-4, memory_efficient, name="block2")(x)
  x = layers.batch_norm_relu(block2, "postnorm")
  x = keras.layers.GlobalAveragePooling2D()(x)
  logits = keras.layers.Dense(_NUM_CLASSES, dtype="float32")(x)
  model = keras.Model(images, {"logits": logits, "block2": block2})
  _randomise_batch_norms(model, np.random.RandomState(seed))
  return model


def _batches(batch_size, size, seed=0):
  """_STEPS random (images [batch_size, size, size, 3], labels) pairs."""
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


def _sgd_step_fn(model, optimizer):
  """A tf.function SGD step: (images, labels) -> (loss, grads, end points)."""
  optimizer.build(model.trainable_variables)

  @tf.function
  def step(images, labels):
    with tf.GradientTape() as tape:
      loss, outputs = _loss(model, images, labels)
    grads = tape.gradient(loss, model.trainable_variables)
    optimizer.apply_gradients(zip(grads, model.trainable_variables))
    return loss, grads, outputs

  return step


@pytest.fixture(name="runs", scope="module")
def _runs_fixture():
  return _runs()


def _runs():
  """RevNet50 with the switch on (True) and off (False), same initial weights.

  Each first takes _STEPS steps at learning rate 0 (gradients on random
  batches, all at the initial weights), then _STEPS SGD steps at 1e-3, each
  of which both models start from the plain model's weights and optimizer
  state: separate trajectories of this tiny-batch model diverge within three
  steps (a ReLU input crossing 0 moves a gradient by percents, see
  `test_gradients_differ_only_through_relu_inputs_at_rounding_of_zero`), even
  between two plain runs whose graphs round differently (measured with the
  earlier one-sided channel padding: third losses 1.09 and 1.27).

  Returns:
    {memory_efficient: dict(paths: of the trainable variables, grads:
    [batch][variable], losses and step_grads: [SGD step] (gradients per
    variable),
    moving_initial and moving_after_one_step: {path: value} of the moving
    statistics, after_root: that end point in the first step)}.
  """
  runs, steps, optimizers = {}, {}, {}
  for memory_efficient in (True, False):
    model = _revnet50(memory_efficient)
    optimizers[memory_efficient] = keras.optimizers.SGD(0.0, momentum=0.9)
    step = steps[memory_efficient] = _sgd_step_fn(
        model, optimizers[memory_efficient])
    moving = lambda: {w.path: w.numpy() for w in model.non_trainable_weights}
    run = runs[memory_efficient] = {
        "model": model, "paths": [w.path for w in model.trainable_variables],
        "moving_initial": moving(), "grads": [], "losses": [], "step_grads": [],
        "near_zero": [], "step_near_zero": []}
    for images, labels in _batches(4, 64):
      run["near_zero"].append(_units_with_a_relu_input_near_zero(
          model, images, _NEAR_ZERO))
      _, grads, outputs = step(images, labels)
      run["grads"].append([g.numpy() for g in grads])
      if "after_root" not in run:
        run["moving_after_one_step"] = moving()
        run["after_root"] = outputs["after_root"].numpy()
  state = lambda key: (runs[key]["model"].weights + optimizers[key].variables)
  for images, labels in _batches(4, 64, seed=1):
    for mine, plain in zip(state(True), state(False)):
      mine.assign(plain)
    runs[True]["step_near_zero"].append(_units_with_a_relu_input_near_zero(
        runs[True]["model"], images, _NEAR_ZERO))
    for memory_efficient, run in runs.items():
      optimizers[memory_efficient].learning_rate = 1e-3
      loss, grads, _ = steps[memory_efficient](images, labels)
      run["losses"].append(float(loss))
      run["step_grads"].append([g.numpy() for g in grads])
  return runs


def _assert_grads_close(actual, expected, paths, rtol):
  """Per variable: |actual - expected| <= rtol * max |expected| elementwise."""
  for path, got, want in zip(paths, actual, expected):
    np.testing.assert_allclose(got, want, rtol=0,
                               atol=rtol * np.abs(want).max(), err_msg=path)
  # Only F of a stage's first unit after zero channel padding has none: it sees
  # x2 = 0, and with BatchNorm offsets 0 (their init) F(0) = 0 at ReLU kinks.
  zero = [path for path, want in zip(paths, expected) if not np.any(want)]
  assert all(re.match(r"block[2-4]/unit1/", path) for path in zero), zero
  assert len(zero) < len(paths) / 2


def _assert_grads_agree_but_near_kinks(actual, expected, paths, near_zero):
  """Per variable, max |actual - expected| < 1e-4 x max |expected|, but in the
  units up to the last of `near_zero` (units with a ReLU input within
  rounding of 0; gradient flows from there to them), where < 0.2: see
  `test_gradients_differ_only_through_relu_inputs_at_rounding_of_zero`.
  Returns whether a variable needed that exception."""
  units = list(dict.fromkeys(_unit(path) for path in paths))  # network order
  last = max((units.index(unit) for unit in near_zero), default=-1)
  excepted = False
  for path, a, b in zip(paths, actual, expected):
    error = float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-30))
    excepted |= error >= 1e-4
    assert error < (0.2 if units.index(_unit(path)) <= last else 1e-4), (
        path, error)
  return excepted


def _assert_rarely_near_kinks(on, off, grads, near_zero):
  """Every batch's gradients agree (`_assert_grads_agree_but_near_kinks`),
  and at most one of them needs the exception: a batch with a ReLU input
  within rounding of 0 was 2 in 60 on one CPU (the test below) and 1 in 15
  on another; which batches, depends on the CPU's rounding."""
  excepted = [_assert_grads_agree_but_near_kinks(a, b, off["paths"], units)
              for a, b, units in zip(on[grads], off[grads], near_zero)]
  assert len(excepted) == _STEPS and sum(excepted) <= 1, excepted


def test_gradients_of_every_variable_agree(runs):
  on, off = runs[True], runs[False]
  assert on["paths"] == off["paths"]
  _assert_rarely_near_kinks(on, off, "grads", on["near_zero"])


def test_sgd_steps_from_the_same_weights_agree(runs):
  on, off = runs[True], runs[False]
  np.testing.assert_allclose(on["losses"], off["losses"], rtol=1e-5)
  assert len(set(off["losses"])) == _STEPS
  _assert_rarely_near_kinks(on, off, "step_grads", on["step_near_zero"])


def _units_with_a_relu_input_near_zero(model, images, tolerance):
  """Units ("block3/unit2") whose reversible backward pass recomputes F on a
  reconstructed input (all but each stage's first and last) and whose F has,
  in the training-mode forward pass of `images`, a ReLU input within
  `tolerance` of 0."""
  units = []
  with keras.StatelessScope():  # No moving-statistics updates.
    for stage_index in range(1, 5):
      stage = model.get_layer(f"block{stage_index}")
      x = keras.Model(model.input, stage.input)(images, training=True)
      for index, unit in enumerate(stage.units):
        relu_inputs, h = [], keras.ops.split(x, 2, axis=-1)[1]
        for layer in unit.residual_layers:
          if isinstance(layer, keras.layers.ReLU):
            relu_inputs.append(np.abs(h.numpy()).min())
          h = layer(h, training=True) if isinstance(
              layer, keras.layers.BatchNormalization) else layer(h)
        if 0 < index < len(stage.units) - 1 and min(relu_inputs) < tolerance:
          units.append(f"block{stage_index}/unit{index + 1}")
        x = unit(x, training=True)
  return units


def test_gradients_differ_only_through_relu_inputs_at_rounding_of_zero():
  """The condition of the rare mismatches, pinned.

  The backward pass recomputes F on inputs reconstructed to float32 rounding
  (about 1e-7 of their scale; x1 = y1 - F(y2) cannot be exact: the forward
  pass rounded y1 = x1 + F(y2)). Where a ReLU input of F lies within that of
  0, the recomputation can fall on the other side of the kink, and the
  gradients through that one position change: here by up to 8% of a
  BatchNorm offset's largest gradient (64 px batches of 4: a block3 channel
  has 64 positions). Measured with this test's model at the default init: 2
  of 60 seeded batches (these two), and 1 of 40 at He init.
  """
  built = {me: _revnet50(me) for me in (True, False)}
  gradients = {me: _gradients_fn(model) for me, model in built.items()}
  paths = [w.path for w in built[False].trainable_variables]
  for seed in (111, 131):
    rng = np.random.RandomState(seed)
    images = rng.randn(4, 64, 64, 3).astype(np.float32)
    labels = rng.randint(0, _NUM_CLASSES, 4)
    # Here the mismatches were in block3/unit2 and block2/unit3; which unit
    # has a ReLU input this close to 0 may differ with the CPU's rounding.
    near_zero = _units_with_a_relu_input_near_zero(built[True], images,
                                                   _NEAR_ZERO)
    assert near_zero
    on, off = (gradients[me](images, labels) for me in (True, False))
    # Only the near-zero ReLU's unit and what lies before it in the network
    # (its gradient flows there) may differ; the rest agree to 1e-4.
    _assert_grads_agree_but_near_kinks(on, off, paths, near_zero)


def _unit(path):
  """The unit ("block3/unit2") or layer ("root") of a variable path."""
  parts = path.split("/")
  return "/".join(parts[:2]) if parts[0].startswith("block") else parts[0]


def _gradients_fn(model):
  """A tf.function (images, labels) -> the gradients of `_loss`."""
  @tf.function
  def gradients(images, labels):
    with tf.GradientTape() as tape:
      loss, _ = _loss(model, images, labels)
    return tape.gradient(loss, model.trainable_variables)
  return lambda *args: [g.numpy() for g in gradients(*args)]


def test_moving_statistics_are_updated_once_per_step(runs):
  on, off = runs[True], runs[False]
  for path, value in off["moving_after_one_step"].items():
    np.testing.assert_allclose(on["moving_after_one_step"][path], value,
                               rtol=1e-5, atol=1e-6, err_msg=path)
  # The first BatchNorm of block1 normalises the second half of after_root:
  # one momentum update from the initial statistics.
  x2 = on["after_root"][..., on["after_root"].shape[-1] // 2:]
  momentum = layers.BATCH_NORM_MOMENTUM
  for statistic, batch_value in (("moving_mean", x2.mean(axis=(0, 1, 2))),
                                 ("moving_variance",
                                  x2.var(axis=(0, 1, 2), ddof=1))):
    path = f"block1/unit1/bn1/{statistic}"
    np.testing.assert_allclose(
        on["moving_after_one_step"][path],
        momentum * on["moving_initial"][path] + (1 - momentum) * batch_value,
        rtol=1e-4, err_msg=path)


def test_switch_is_on_by_default_and_set_by_gin():
  def stages(model):
    return [layer for layer in model.layers
            if isinstance(layer, models.ReversibleStage)]

  default = models.backbone("revnet50", filters_factor=1)
  assert len(stages(default)) == 4
  assert all(stage.memory_efficient for stage in stages(default))
  assert default.get_layer("root").memory_efficient
  with gin.unlock_config():
    gin.parse_config("backbone.memory_efficient = False")
  try:
    configured = gin_config.configured_backbone(
        name="revnet50", filters_factor=1).build()
  finally:
    gin.clear_config()
  assert not any(stage.memory_efficient for stage in stages(configured))
  assert not configured.get_layer("root").memory_efficient
  assert ([(w.path, w.shape) for w in default.weights]
          == [(w.path, w.shape) for w in configured.weights])


@pytest.mark.parametrize("memory_efficient", [True, False])
def test_keras_save_load_keeps_the_switch(memory_efficient, tmp_path):
  model = _mini_revnet(memory_efficient)
  path = str(tmp_path / "model.keras")
  model.save(path)
  restored = keras.saving.load_model(path)
  images = next(_batches(2, 32))[0]

  assert restored.get_layer("block1").memory_efficient == memory_efficient
  assert restored.get_layer("root").memory_efficient == memory_efficient
  assert restored.get_layer("root").num_chunks == 3
  np.testing.assert_array_equal(restored(images, training=False)["logits"],
                                model(images, training=False)["logits"])


def test_exported_savedmodel_trains_like_plain_backprop(tmp_path):
  model, reference = _mini_revnet(True), _mini_revnet(False)
  path = str(tmp_path / "export")
  export.save_module(export.build_module(
      model, default_output="logits", preprocess_spec="value_range(-1, 1)"),
      path, metadata={})
  loaded = tf.saved_model.load(path)
  images, labels = next(_batches(4, 32))

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


@pytest.mark.parametrize("global_batch_size", [8, 4])
def test_mirrored_strategy_step_matches_plain_backprop(two_cpu_strategy,
                                                       global_batch_size):
  """Per-replica batches of 4 or 2 images whose size the graph does not know:
  2 is fewer than the root's 3 chunks, so one chunk is empty."""
  strategy = two_cpu_strategy
  images, labels = next(_batches(global_batch_size, 32))
  weights = {}
  for memory_efficient in (True, False):
    with strategy.scope():
      model = _mini_revnet(memory_efficient)
      optimizer = keras.optimizers.SGD(0.1, momentum=0.9)
      optimizer.build(model.trainable_variables)

    @tf.function(input_signature=[tf.TensorSpec((None, 32, 32, 3)),
                                  tf.TensorSpec((None,), tf.int64)])
    def grads(images, labels, model=model):
      with tf.GradientTape() as tape:
        loss, _ = _loss(model, images, labels)
      return tape.gradient(loss, model.trainable_variables)

    def replica_step(images, labels, model=model, optimizer=optimizer,
                     grads=grads):
      optimizer.apply_gradients(
          zip(grads(images, labels), model.trainable_variables))

    dataset = strategy.experimental_distribute_dataset(
        tf.data.Dataset.from_tensor_slices((images, labels)).batch(
            global_batch_size))
    initial = [w.numpy() for w in model.weights]
    tf.function(lambda batch: strategy.run(replica_step, args=batch))(
        next(iter(dataset)))
    weights[memory_efficient] = [
        w.numpy() - start for w, start in zip(model.weights, initial)]

  assert strategy.num_replicas_in_sync == 2
  _assert_grads_close(weights[True], weights[False],
                      [w.path for w in model.weights], rtol=1e-4)


def test_mixed_bfloat16_is_as_accurate_as_plain_backprop():
  """In bfloat16 the reconstruction x1 = y1 - F(y2) loses up to 2^-8 of |y1|;
  the gradient must stay as close to the float32 one as plain backprop's."""
  images, labels = next(_batches(4, 32))
  grads, losses = {}, {}
  for policy, memory_efficient in (("float32", False),
                                   ("mixed_bfloat16", False),
                                   ("mixed_bfloat16", True)):
    keras.mixed_precision.set_global_policy(policy)
    try:
      model = _mini_revnet(memory_efficient)
    finally:
      keras.mixed_precision.set_global_policy("float32")
    with tf.GradientTape() as tape:
      loss, _ = _loss(model, images, labels)
    grads[policy, memory_efficient] = np.concatenate(
        [g.numpy().ravel() for g in tape.gradient(loss, model.trainable_variables)])
    losses[policy, memory_efficient] = float(loss)

  exact = grads["float32", False]
  error = {key: np.linalg.norm(value - exact) / np.linalg.norm(exact)
           for key, value in grads.items()}
  assert losses["mixed_bfloat16", True] == losses["mixed_bfloat16", False]
  assert np.all(np.isfinite(grads["mixed_bfloat16", True]))
  # bfloat16 is coarse here: measured 0.45 (0.22 with the 3x3 stride-1 conv
  # that stood for the root before the root had a memory-efficient mode).
  assert 0 < error["mixed_bfloat16", False] < 0.75
  assert error["mixed_bfloat16", True] <= 1.5 * error["mixed_bfloat16", False]


def _conv_and_max_pool(images, kernel, stride):
  """RevNet's root in tf.nn ops: 7x7 conv with TF-slim fixed padding (3 on
  each side, then VALID), then zero padding by 1 and a 3x3 stride-2 VALID
  max-pool."""
  padded = tf.pad(images, [[0, 0], [3, 3], [3, 3], [0, 0]])
  conv = tf.nn.conv2d(padded, kernel, stride, "VALID")
  return tf.nn.max_pool2d(tf.pad(conv, [[0, 0], [1, 1], [1, 1], [0, 0]]),
                          3, 2, "VALID")


def _keras_root(images, kernel, stride):
  """The root as RevNet50 built it from Keras layers before `RevNetRoot`."""
  inputs = keras.Input(images.shape[1:])
  x = layers.conv2d_fixed_padding(inputs, kernel.shape[-1], 7, stride, None,
                                  "root_conv")
  model = keras.Model(inputs, layers.root_max_pool(x))
  model.get_layer("root_conv").kernel.assign(kernel)
  return model(images)


@pytest.mark.parametrize("mode", ["eager", "static_batch", "unknown_batch"])
@pytest.mark.parametrize("batch_size, num_chunks", [(5, 4), (6, 3), (2, 4)])
@pytest.mark.parametrize("stride", [1, 2])
def test_root_matches_conv_and_max_pool(stride, batch_size, num_chunks, mode):
  """Outputs and gradients of the chunked root against tf.nn ops on the whole
  batch; batches not divisible by, or smaller than, the number of chunks;
  eagerly, or in a tf.function whose batch size is static or unknown (then a
  batch of 2 in 4 chunks has empty chunks)."""
  rng = np.random.RandomState(stride + batch_size)
  images = tf.constant(rng.randn(batch_size, 15, 18, 3), tf.float32)
  root = models.RevNetRoot(8, stride, memory_efficient=True,
                           num_chunks=num_chunks)
  root.build(images.shape)
  kernel = tf.Variable(root.kernel.numpy())
  output_shape = tuple(_conv_and_max_pool(images, kernel, stride).shape)
  assert root.compute_output_shape(images.shape) == output_shape
  output_grad = tf.constant(rng.randn(*output_shape), tf.float32)

  def output_and_grads(call, variable):
    def run(images):
      with tf.GradientTape() as tape:
        tape.watch(images)
        output = call(images)
        loss = tf.reduce_sum(output * output_grad)
      return (output, *tape.gradient(loss, [images, variable]))

    if mode != "eager":
      batch_dim = batch_size if mode == "static_batch" else None
      run = tf.function(
          run, input_signature=[tf.TensorSpec((batch_dim, 15, 18, 3))])
    return [t.numpy() for t in run(images)]

  actual = output_and_grads(lambda x: root(x, training=True), root.kernel)
  expected = output_and_grads(
      lambda x: _conv_and_max_pool(x, kernel, stride), kernel)

  plain = models.RevNetRoot(8, stride, memory_efficient=False)
  plain.build(images.shape)
  plain.kernel.assign(kernel)
  for reference in (_keras_root(images, kernel, stride),
                    plain(images, training=True)):
    np.testing.assert_allclose(reference, expected[0], rtol=0,
                               atol=1e-5 * np.abs(expected[0]).max())
  for name, got, want in zip(("output", "images grad", "kernel grad"), actual,
                             expected):
    np.testing.assert_allclose(got, want, rtol=0,
                               atol=1e-5 * np.abs(want).max(), err_msg=name)


# oneDNN on (the default, whose AVX-512 kernels broke empty chunks) in the
# default suite; off in the slow one. ~50 s each: a subprocess that traces.
@pytest.mark.parametrize("onednn", [pytest.param("0", marks=pytest.mark.slow),
                                    "1"])
def test_kernel_dependent_paths_with_onednn_on_and_off(onednn):
  """Empty root chunks depend on the CPU's conv kernels (oneDNN's return the
  wrong channel count on some CPUs), so run those cases with oneDNN on and off
  in a fresh process instead of trusting this machine's default."""
  env = {**os.environ, "TF_ENABLE_ONEDNN_OPTS": onednn}
  result = subprocess.run(
      [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", __file__,
       "-k", "unknown_batch or mirrored_strategy_step"],
      env=env, capture_output=True, text=True, timeout=600, check=False)
  assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
  assert re.search(r"\b8 passed\b", result.stdout), result.stdout[-3000:]
