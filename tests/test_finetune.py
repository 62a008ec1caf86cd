"""The `finetune` probe: the export's encoder.keras and a head, trained end to
end."""
import os

import gin
import keras
import numpy as np
import pytest

from tfrevisit import artifacts
from tfrevisit import evaluate
from tfrevisit import export
from tfrevisit import gin_config
from tfrevisit.data import sources
from tfrevisit.evaluation import features as features_lib
from tfrevisit.evaluation import finetune
from tfrevisit.evaluation import inputs

# One unit per stage: these tests exercise the loop, files and probes, not depth.
pytestmark = pytest.mark.usefixtures("shallow_backbones")

SIZE = 32
# Random crops in training mode: the export's own preprocessing.
PREPROCESS = f"resize_small({SIZE + 4})|crop({SIZE})|value_range(-1, 1)"
NUM_CLASSES = 4


def _tiny_encoder():
  """images -> block1 [B, H/2, W/2, 4], pre_logits [B, 4], logits [B, 3]: a
  decayed conv and BatchNorm, what fine-tuning must train and keep, and a
  pretext head, which it must leave alone."""
  keras.utils.set_random_seed(0)
  images = keras.Input([None, None, 3])
  x = keras.layers.Conv2D(4, 3, strides=2, use_bias=False, name="block1_conv",
                          kernel_regularizer=keras.regularizers.L2(1e-3))(images)
  block1 = keras.layers.ReLU()(keras.layers.BatchNormalization(name="bn")(x))
  pre_logits = keras.layers.GlobalAveragePooling2D()(block1)
  logits = keras.layers.Dense(
      3, name="logits", kernel_regularizer=keras.regularizers.L2(1e-3))(
          pre_logits)
  return keras.Model(images, {"block1": block1, "pre_logits": pre_logits,
                              "logits": logits})


@pytest.fixture(name="export_dir", scope="module")
def _export_dir(tmp_path_factory, shallow_backbones):
  encoder = _tiny_encoder()
  root = export.build_module(encoder, default_output="logits",
                             preprocess_spec=PREPROCESS)
  path = str(tmp_path_factory.mktemp("finetune") / "export")
  export.save_module(root, path, {"preprocess": PREPROCESS}, encoder)
  return path


def _context(export_dir, **kwargs):
  module, _ = features_lib.load_module(export_dir)
  return inputs.ImageProbeContext(
      module=module, export_dir=export_dir,
      source=sources.RandomSource(image_shape=(SIZE + 8, SIZE + 8, 3),
                                  num_examples=24, num_classes=NUM_CLASSES),
      preprocess=PREPROCESS, end_point="pre_logits", train_splits=("train",),
      eval_split="test", eval_batch_size=8, **kwargs)


def test_fine_tuning_trains_the_encoder_its_batch_norm_and_keeps_decay(
    export_dir):
  result = finetune.train_finetune(
      _context(export_dir), NUM_CLASSES, epochs=2, decay_epochs=[1],
      batch_size=8, base_learning_rate=0.5)
  original = keras.saving.load_model(artifacts.keras_encoder_path(export_dir))
  tuned = result.model.encoder
  for name in ("block1_conv/kernel", "bn/gamma", "bn/moving_mean",
               "bn/moving_variance"):
    (before,) = [v for v in original.weights if v.path == name]
    (after,) = [v for v in tuned.weights if v.path == name]
    assert not np.allclose(before, after), name
  # The pretext head past the end point is left out: untouched, undecayed.
  initial = {v.path: np.array(v) for v in original.trainable_weights}
  assert sorted(initial) == sorted(
      [v.path for v in tuned.trainable_weights] + ["logits/bias",
                                                   "logits/kernel"])
  expected_change = np.sqrt(
      sum(np.sum((np.array(v) - initial[v.path])**2)
          for v in tuned.trainable_weights) /
      sum(np.sum(initial[v.path]**2) for v in tuned.trainable_weights))
  np.testing.assert_allclose(result.encoder_relative_change, expected_change,
                             rtol=1e-5)
  # The encoder's decay is in the fitted model's losses: one L2 term.
  (decay,) = result.model.losses
  kernel = np.array(tuned.get_layer("block1_conv").kernel)
  np.testing.assert_allclose(float(decay), 1e-3 * np.sum(kernel**2), rtol=1e-5)
  assert len(result.history["val_top1"]) == 2


def test_classifier_pools_spatial_end_points_and_averages_patches(export_dir):
  encoder = keras.saving.load_model(artifacts.keras_encoder_path(export_dir))
  model = finetune.FineTuneClassifier(encoder, "block1", NUM_CLASSES)
  patches = np.random.default_rng(0).uniform(
      -1, 1, [2, 9, 16, 16, 3]).astype(np.float32)
  logits = model(patches)
  block1 = np.array(encoder(patches.reshape(18, 16, 16, 3))["block1"])
  features = block1.mean(axis=(1, 2)).reshape(2, 9, -1).mean(axis=1)
  kernel, bias = (np.array(w) for w in model.logits.weights)
  np.testing.assert_allclose(logits, features @ kernel + bias, atol=1e-5)


def test_evaluate_finetune_writes_rows_per_label_fraction(export_dir,
                                                          tmp_path):
  rows = evaluate.main([
      "--hub_module", export_dir, "--workdir", str(tmp_path / "eval"),
      "--gin_param", 'source.name = "random"',
      "--gin_param", "source.num_examples = 40",
      "--gin_param", f"source.num_classes = {NUM_CLASSES}",
      "--gin_param", f"source.image_shape = ({SIZE + 8}, {SIZE + 8}, 3)",
      "--gin_param", 'evaluate.probes = ["finetune"]',
      "--gin_param", 'evaluate.end_points = ["pre_logits"]',
      "--gin_param", "evaluate.max_examples = 16",
      "--gin_param", "evaluate.label_fractions = [0.5, 1.0]",
      "--gin_param", "train_finetune.epochs = 2",
      "--gin_param", "train_finetune.decay_epochs = [1]",
      "--gin_param", "train_finetune.batch_size = 4"])
  assert [(r["probe"], r["label_fraction"]) for r in rows] == [
      ("finetune", 0.5), ("finetune", 1.0)]
  for row in rows:
    assert row["epochs"] == 2 and len(row["test_top1_per_epoch"]) == 2
    assert 0 <= row["top1"] <= row["top5"] <= 1
    assert row["num_features"] == 4 and row["encoder_relative_change"] > 0


def test_export_without_keras_file_is_a_clear_error(tmp_path):
  with pytest.raises(FileNotFoundError, match="train_finetune.workdir"):
    finetune.load_encoder(str(tmp_path))


@pytest.mark.parametrize("config", ["finetune.gin", "quickstart/finetune.gin"])
def test_configs_parse(config):
  gin_config.parse_gin([os.path.join(gin_config.CONFIG_DIR, "eval", config)],
                       [])
  assert gin.query_parameter("evaluate.probes") == ["finetune"]
  assert gin.query_parameter("train_finetune.epochs") >= 1


def test_precise_batch_norm_averages_the_batch_statistics():
  keras.utils.set_random_seed(0)
  images = keras.Input([6, 6, 2])
  conv = keras.layers.Conv2D(3, 3, name="conv")(images)
  bn = keras.layers.BatchNormalization(name="bn", momentum=0.99)
  model = keras.Model(images, bn(conv))
  rng = np.random.default_rng(0)
  batches = [rng.normal(loc, 1.0, [5, 6, 6, 2]).astype(np.float32)
             for loc in (0.0, 2.0, -1.0)]
  conv_out = [np.array(keras.Model(images, conv)(b)) for b in batches]
  finetune.precise_batch_norm(model, batches)
  np.testing.assert_allclose(
      bn.moving_mean, np.mean([c.mean(axis=(0, 1, 2)) for c in conv_out], 0),
      rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(
      bn.moving_variance,
      np.mean([c.var(axis=(0, 1, 2)) for c in conv_out], 0), rtol=1e-4)
  assert bn.momentum == 0.99
