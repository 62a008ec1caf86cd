"""Tests for tfrevisit.models: end points, reversibility, weight decay, saving."""
import keras
import numpy as np
import pytest
import tensorflow as tf

from tfrevisit import models
from tfrevisit.models import layers

ARCHS = ("resnet50_v1", "resnet50_v2", "revnet50", "vgg19")

# Reference end points from the paper: (height, width, channels / k) for 224x224
# images, or for 64x64 patches in patch mode; vectors are (dims / k,).
_RESNET_224 = {"block1": (56, 56, 64), "block2": (28, 28, 128),
               "block3": (14, 14, 256), "block4": (7, 7, 512),
               "pre_logits": (512,)}
_RESNET_PATCH_64 = {"block1": (32, 32, 64), "block2": (16, 16, 128),
                    "block3": (8, 8, 256), "block4": (8, 8, 512),
                    "pre_logits": (512,)}
# VGG's blocks before their max-pools, as the release's end points.
_VGG_224 = {"block1": (224, 224, 8), "block2": (112, 112, 16),
            "block3": (56, 56, 32), "block4": (28, 28, 64),
            "block5": (14, 14, 64), "fc6": (512,), "pre_logits": (512,)}
# VGG keeps its five 2x2 pools in patch mode, as in the paper's release.
_VGG_PATCH_64 = {"block1": (64, 64, 8), "block2": (32, 32, 16),
                 "block3": (16, 16, 32), "block4": (8, 8, 64),
                 "block5": (4, 4, 64), "fc6": (512,), "pre_logits": (512,)}
_AFTER_ROOT_CHANNELS = {"resnet50_v1": 16, "resnet50_v2": 16, "revnet50": 64}


def _expected_end_points(name, patch_mode):
  if name == "vgg19":
    return _VGG_PATCH_64 if patch_mode else _VGG_224
  reference = _RESNET_PATCH_64 if patch_mode else _RESNET_224
  spatial = reference["block1"][:2]
  return {"after_root": (*spatial, _AFTER_ROOT_CHANNELS[name]), **reference}


def _small_model(name, **kwargs):
  """k=1 model on 32x32 images (VGG's fixed size)."""
  return models.backbone(name, filters_factor=1, input_shape=(32, 32, 3),
                         **kwargs)


def _images(batch=2, size=32, seed=0):
  return np.random.RandomState(seed).randn(batch, size, size, 3).astype(
      np.float32)


_END_POINT_CASES = [(name, k, patch_mode) for name in ARCHS for k in (1, 4)
                    for patch_mode in (False, True)] + [("vgg19", 8, False)]


@pytest.mark.parametrize("name, filters_factor, patch_mode", _END_POINT_CASES)
def test_end_point_names_and_shapes(name, filters_factor, patch_mode):
  size = 64 if patch_mode else 224
  input_shape = (size, size, 3) if name == "vgg19" else (None, None, 3)
  model = models.backbone(name, filters_factor=filters_factor,
                          patch_mode=patch_mode, num_classes=1000,
                          input_shape=input_shape)
  expected = {
      end_point: tuple(d * filters_factor if i == len(shape) - 1 else d
                       for i, d in enumerate(shape))
      for end_point, shape in _expected_end_points(name, patch_mode).items()}
  expected["logits"] = (1000,)

  outputs = model.compute_output_spec(keras.KerasTensor((2, size, size, 3)))

  assert list(model.output) == list(expected)
  assert {k: tuple(v.shape) for k, v in outputs.items()} == {
      k: (2, *v) for k, v in expected.items()}


def _vgg_trainable_parameters(size, k, num_classes):
  """VGG19-BN's trainable parameters by formula: 3x3 conv kernels, BN gamma
  and beta, fc6 over the map left by five floor-halving pools, fc7, head."""
  widths = [w * k for w in (8, 8, 16, 16, 32, 32, 32, 32) + (64,) * 8]
  count, channels = 0, 3
  for width in widths:
    count += 9 * channels * width + 2 * width
    channels = width
  side = size
  for _ in range(5):
    side //= 2
  fc = 512 * k
  count += side * side * channels * fc + 2 * fc  # fc6 and its BN
  count += fc * fc + 2 * fc  # fc7 and its BN
  return count + fc * num_classes + num_classes


@pytest.mark.parametrize("size, fc6_window", [(64, 2), (72, 2), (224, 7)])
def test_vgg_pools_round_down_like_the_release(size, fc6_window):
  """2x2 stride-2 VALID pools: 72 px gives 36, 18, 9, 4, 2 (SAME: 5x5 block4
  ... 3x3 fc6); the release's k=1 VGG19 at 64 px has 714,754 trainable
  parameters with 10 classes."""
  model = models.backbone("vgg19", filters_factor=1, num_classes=10,
                          input_shape=(size, size, 3))
  assert model.get_layer("fc6").kernel.shape[:2] == (fc6_window, fc6_window)
  sides = [model.get_layer(f"block{block}_pool").output.shape[1]
           for block in range(1, 6)]
  expected = [size]
  for _ in range(5):
    expected.append(expected[-1] // 2)
  assert sides == expected[1:]
  trainable = sum(int(np.prod(w.shape)) for w in model.trainable_weights)
  assert trainable == _vgg_trainable_parameters(size, 1, 10)
  if size in (64, 72):
    assert trainable == 714_754


@pytest.mark.parametrize("name", ARCHS)
def test_forward_pass_returns_dict_of_end_points(name):
  model = _small_model(name, num_classes=3)
  outputs = model(_images(), training=False)
  assert set(outputs) == set(model.output)
  assert outputs["logits"].shape == (2, 3)
  assert outputs["pre_logits"].shape == (2, 512)


@pytest.mark.parametrize("training", [False, True])
def test_reversible_unit_reconstructs_its_input(training):
  x = tf.constant(np.random.RandomState(1).randn(2, 8, 8, 32), tf.float32)
  unit = models.ReversibleUnit(weight_decay=1e-4)

  y = unit(x, training=training)

  np.testing.assert_array_equal(y[..., :16], x[..., 16:])  # y2 = x2
  assert np.abs(y[..., 16:] - x[..., :16]).max() > 0.1  # F does something
  np.testing.assert_allclose(unit.inverse(y, training=training), x, atol=1e-5)


def test_reversible_stage_reconstructs_its_input():
  x = tf.constant(np.random.RandomState(2).randn(2, 8, 8, 32), tf.float32)
  stage = models.ReversibleStage(num_units=3, weight_decay=1e-4)
  y = stage(x, training=False)
  np.testing.assert_allclose(stage.inverse(y, training=False), x, atol=1e-5)


@pytest.mark.parametrize("name", ["resnet50_v2", "revnet50"])
def test_last_relu_false_gives_negative_pre_logits(name):
  images = _images(batch=4)
  with_relu = _small_model(name)(images, training=True)["pre_logits"]
  without_relu = _small_model(name, last_relu=False)(
      images, training=True)["pre_logits"]
  assert np.min(with_relu) >= 0
  assert np.min(without_relu) < 0


@pytest.mark.parametrize("name, default_decay", [
    ("resnet50_v1", 1e-4), ("resnet50_v2", 1e-4), ("revnet50", 1e-4),
    ("vgg19", 1e-4)])
def test_weight_decay_one_loss_per_kernel(name, default_decay):
  model = _small_model(name, num_classes=3)
  kernels = [w for w in model.weights if w.path.endswith("/kernel")]
  # RevNet's root conv is the one kernel without decay.
  undecayed = ["root/kernel"] if name == "revnet50" else []
  decayed = [w for w in kernels if w.path not in undecayed]

  assert len(decayed) == len(kernels) - len(undecayed)
  assert len(model.losses) == len(decayed)
  np.testing.assert_allclose(
      sum(float(loss) for loss in model.losses),
      sum(default_decay / 2 * np.sum(np.square(w.numpy())) for w in decayed),
      rtol=1e-5)
  assert not _small_model(name, weight_decay=0.0).losses


@pytest.mark.parametrize("name", ARCHS)
def test_keras_save_load_round_trip(name, tmp_path):
  model = _small_model(name, num_classes=3)
  images = _images()
  path = str(tmp_path / f"{name}.keras")

  model.save(path)
  restored = keras.saving.load_model(path)

  expected = model(images, training=False)
  actual = restored(images, training=False)
  assert set(actual) == set(expected)
  for end_point in expected:
    np.testing.assert_array_equal(actual[end_point], expected[end_point])


@pytest.mark.parametrize("name", ARCHS)
def test_checkpoint_holds_every_weight_and_restores_the_end_points(
    name, tmp_path):
  # tf.train.Checkpoint (training's checkpoints, export, fine-tuning) must
  # see every variable, those of layers nested in custom layers included.
  model = _small_model(name, num_classes=3)
  model(_images(), training=False)
  for weight in model.weights:  # moving statistics too, away from 0 and 1
    weight.assign(np.random.default_rng(0).uniform(
        0.5, 1.5, weight.shape).astype(np.float32))
  path = tf.train.Checkpoint(encoder=model).write(str(tmp_path / "ckpt"))
  saved = [name for name, _ in tf.train.list_variables(path)
           if name.startswith("encoder/")]
  assert len(saved) == len(model.weights)
  restored = _small_model(name, num_classes=3)
  tf.train.Checkpoint(encoder=restored).read(path).assert_consumed()
  expected = model(_images(), training=False)
  actual = restored(_images(), training=False)
  for end_point in expected:
    np.testing.assert_array_equal(actual[end_point], expected[end_point])


_NUMERICS = {"batch_norm_momentum": 0.9, "batch_norm_epsilon": 1e-5,
             "kernel_initializer": "he_normal"}


def _all_layers(model):
  """Every layer, custom layers' sub-layers (RevNet's units) included."""
  return list(model._flatten_layers(include_self=False))  # pylint: disable=protected-access


@pytest.mark.parametrize("name", ARCHS)
def test_every_layer_takes_the_backbones_numerics(name):
  keras.utils.set_random_seed(0)
  model = _small_model(name, num_classes=3, **_NUMERICS)
  batch_norms = [layer for layer in _all_layers(model)
                 if isinstance(layer, keras.layers.BatchNormalization)]
  assert len(batch_norms) >= 10
  assert {(layer.momentum, layer.epsilon) for layer in batch_norms} == {
      (0.9, 1e-5)}
  dense_layers = [layer for layer in _all_layers(model)
                  if isinstance(layer, (keras.layers.Conv2D,
                                        keras.layers.Dense))]
  assert dense_layers and all(
      isinstance(layer.kernel_initializer, keras.initializers.HeNormal)
      for layer in dense_layers)
  # He-normal: variance 2 / fan_in, fan_in including the receptive field;
  # measured on the large kernels (RevNet's root is not a Conv2D layer).
  checked = 0
  for kernel in model.weights:
    if kernel.path.endswith("kernel") and np.prod(kernel.shape) >= 4096:
      *window, fan_in, _ = kernel.shape
      np.testing.assert_allclose(np.var(kernel.numpy()),
                                 2.0 / (np.prod(window) * fan_in), rtol=0.1,
                                 err_msg=kernel.path)
      checked += 1
  assert checked >= 3


def test_revnet_keras_file_keeps_the_numerics(tmp_path):
  model = _small_model("revnet50", num_classes=3, **_NUMERICS)
  path = str(tmp_path / "revnet50.keras")
  model.save(path)
  restored = keras.saving.load_model(path)
  assert {(layer.momentum, layer.epsilon) for layer in _all_layers(restored)
          if isinstance(layer, keras.layers.BatchNormalization)} == {(0.9, 1e-5)}
  images = _images()
  np.testing.assert_array_equal(restored(images, training=False)["pre_logits"],
                                model(images, training=False)["pre_logits"])


def test_revnet_layer_configs_without_numerics_take_the_defaults():
  """Configs in encoder.keras files saved before the layers recorded them."""
  stage = models.ReversibleStage(2, 1e-4, numerics=layers.Numerics(0.9, 1e-5))
  config = stage.get_config()
  assert config["numerics"]["batch_norm_epsilon"] == 1e-5
  del config["numerics"]
  old = models.ReversibleStage.from_config(config)
  old.build((None, 4, 4, 16))
  assert {(layer.momentum, layer.epsilon) for layer in _all_layers(old)
          if isinstance(layer, keras.layers.BatchNormalization)} == {
              (0.99, 1e-3)}


def test_builds_and_runs_in_mirrored_strategy(two_cpu_strategy):
  strategy = two_cpu_strategy
  with strategy.scope():
    model = models.backbone("revnet50", filters_factor=1, num_classes=3)
  assert strategy.num_replicas_in_sync == 2
  assert all(isinstance(w.value, tf.distribute.DistributedValues)
             for w in model.weights)

  logits = strategy.run(lambda x: model(x, training=True)["logits"],
                        args=(tf.constant(_images()),))
  assert [r.shape for r in strategy.experimental_local_results(logits)] == [
      (2, 3), (2, 3)]


@pytest.mark.parametrize("name", ARCHS)
def test_mixed_precision_keeps_logits_float32(name):
  keras.mixed_precision.set_global_policy("mixed_bfloat16")
  try:
    model = _small_model(name, num_classes=3)
  finally:
    keras.mixed_precision.set_global_policy("float32")
  outputs = model(_images(), training=False)
  assert outputs["logits"].dtype == tf.float32
  assert outputs["pre_logits"].dtype == tf.bfloat16
  assert all(w.dtype == "float32" for w in model.weights)


@pytest.mark.parametrize("kwargs, message", [
    (dict(name="resnet101", filters_factor=4), "resnet50_v1, resnet50_v2"),
    (dict(name="resnet50_v1", filters_factor=4, last_relu=False),
     "only for resnet50_v2 and revnet50"),
    (dict(name="vgg19", filters_factor=8, last_relu=False,
          input_shape=(224, 224, 3)), "only for resnet50_v2 and revnet50"),
    (dict(name="resnet50_v2", filters_factor=0), "integer >= 1"),
    (dict(name="revnet50", filters_factor=1.5), "integer >= 1"),
    (dict(name="vgg19", filters_factor=8), "input_shape=\\(224, 224, 3\\)"),
    (dict(name="vgg19", filters_factor=1, input_shape=(16, 16, 3)),
     "at least 32x32 pixels"),
    (dict(name="resnet50_v2", filters_factor=1, memory_efficient=True),
     "no option \\['memory_efficient'\\]"),
])
def test_invalid_arguments_raise_value_error(kwargs, message):
  with pytest.raises(ValueError, match=message):
    models.backbone(**kwargs)


def test_channel_padding_puts_half_the_zeros_before_and_half_after():
  """The release's stage transition: C/2 zeros, x, C/2 zeros; the next unit's
  halves are [zeros, first half] and [second half, zeros]."""
  x = np.arange(1, 5, dtype=np.float32).reshape(1, 1, 1, 4)  # halves [1 2], [3 4]
  padded = layers.ChannelZeroPadding(4)(x).numpy()
  np.testing.assert_array_equal(padded[0, 0, 0], [0, 0, 1, 2, 3, 4, 0, 0])

  x = np.random.RandomState(0).rand(2, 3, 3, 6).astype(np.float32) + 1
  padded = layers.ChannelZeroPadding(6)(x).numpy()
  assert padded.shape == (2, 3, 3, 12)
  assert np.all(padded[..., :3] == 0) and np.all(padded[..., 9:] == 0)
  assert np.all(padded[..., 3:9] == x)  # no zero among x's values (all >= 1)


def test_revnet_stage_input_is_the_padded_pooled_stage_output():
  model = models.backbone("revnet50", filters_factor=1, input_shape=(32, 32, 3))
  probe = keras.Model(model.input, [model.get_layer("block1").output,
                                    model.get_layer("block2_pad").output])
  block1, block2_input = (t.numpy() for t in probe(_images(), training=False))
  pooled = block1.reshape(2, 4, 2, 4, 2, 64).mean(axis=(2, 4))  # 2x2 average
  expected = np.concatenate(
      [np.zeros_like(pooled[..., :32]), pooled, np.zeros_like(pooled[..., 32:])],
      axis=-1)
  np.testing.assert_allclose(block2_input, expected, rtol=1e-6, atol=1e-6)


def test_layout_one_channel_padding_still_pads_each_half():
  """encoder.keras files of layout 1 name `ZeroPadChannels`: it keeps its
  computation, so they load and run as before."""
  x = np.arange(1, 5, dtype=np.float32).reshape(1, 1, 1, 4)
  layer = keras.layers.deserialize(keras.layers.serialize(
      layers.ZeroPadChannels(4, name="block2_pad")))
  assert type(layer) is layers.ZeroPadChannels  # pylint: disable=unidiomatic-typecheck
  np.testing.assert_array_equal(layer(x)[0, 0, 0], [1, 2, 0, 0, 3, 4, 0, 0])


def test_only_vgg_and_revnet_refuse_weights_of_layout_one():
  for name in ("resnet50_v1", "resnet50_v2"):
    models.check_layout(name, 1)
  for name in ARCHS:
    models.check_layout(name, models.LAYOUT)
  for name, change in (("revnet50", "zero channels before and after"),
                       ("vgg19", "VALID")):
    with pytest.raises(ValueError, match=f"layout 1.*{change}.*train it again"):
      models.check_layout(name, 1)
