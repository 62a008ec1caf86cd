"""Fine-tuning an export: Keras 3 `.keras`, Keras 3 `TFSMLayer`, tf_keras +
`hub.KerasLayer`; and the docs' snippets that show each (docs/export.md)."""
import os

import gin
import keras
import numpy as np
import pytest
import tensorflow as tf
import tensorflow_hub as hub
import tf_keras

import doc_snippets
from tfrevisit import artifacts
from tfrevisit import export
from tfrevisit import gin_config
from tfrevisit import models
from tfrevisit import train

# One unit per stage: these tests exercise the loop, files and probes, not depth.
pytestmark = pytest.mark.usefixtures("shallow_backbones")

SIZE = 32
NUM_CLASSES = 3
SMALL_RUN = [
    'train.task = "rotation"', "train.batch_size = 4", "train.epochs = 1",
    "train.max_steps = 1", "train.log_every_steps = 1",
    'source.name = "random"', "source.num_examples = 16",
    f"source.image_shape = ({SIZE}, {SIZE}, 3)", 'backbone.name = "resnet50_v2"',
    "backbone.filters_factor = 1", f"rotation.image_size = {SIZE}",
]


@pytest.fixture(name="export_dir", scope="module")
def _export_dir(tmp_path_factory, shallow_backbones):
  """A rotation ResNet50 v2 (k=1) trained one step and exported by `train`."""
  workdir = str(tmp_path_factory.mktemp("keras_export") / "run")
  gin.clear_config()
  gin_config.parse_gin([], SMALL_RUN)
  train.train_from_gin(workdir)
  gin.clear_config()
  return os.path.join(workdir, "export", "latest")


@pytest.fixture(name="tiny_export_dir", scope="module")
def _tiny_export_dir(tmp_path_factory, shallow_backbones):
  """The export of a tiny encoder with what fine-tuning must carry: decayed
  conv kernels and BatchNorm (images -> block1, block2, pre_logits, logits)."""
  keras.utils.set_random_seed(0)
  images = keras.Input([None, None, 3])
  x = images
  end_points = {}
  for name in ("block1", "block2"):
    x = keras.layers.Conv2D(4, 3, strides=2, use_bias=False, name=name,
                            kernel_regularizer=keras.regularizers.L2(1e-2))(x)
    x = keras.layers.ReLU()(keras.layers.BatchNormalization()(x))
    end_points[name] = x
  end_points["pre_logits"] = keras.layers.GlobalAveragePooling2D()(x)
  end_points["logits"] = keras.layers.Dense(4)(end_points["pre_logits"])
  encoder = keras.Model(images, end_points)
  root = export.build_module(encoder, default_output="logits",
                             preprocess_spec="value_range(-1, 1)")
  path = str(tmp_path_factory.mktemp("tiny_export") / "model")
  export.save_module(root, path, {}, encoder)
  return path


def _data(batch_size=8, seed=0):
  """Preprocessed-like images [B, 32, 32, 3] in [-1, 1] and labels [B]."""
  rng = np.random.default_rng(seed)
  images = rng.uniform(-1, 1, [batch_size, SIZE, SIZE, 3]).astype(np.float32)
  return images, rng.integers(0, NUM_CLASSES, batch_size)


def _decay(export_dir):
  saved = tf.saved_model.load(export_dir)
  return float(saved.regularization_loss())


def _representation(export_dir, images):
  saved = tf.saved_model.load(export_dir)  # Alive while its function runs.
  return saved.representation(images)


@pytest.mark.slow
def test_export_writes_the_keras_file_with_the_same_outputs(export_dir):
  path = artifacts.keras_encoder_path(export_dir)
  encoder = keras.saving.load_model(path)
  images, _ = _data()
  expected = _representation(export_dir, images)
  got = encoder(images, training=False)
  assert set(got) == set(expected)
  for name, value in expected.items():
    np.testing.assert_allclose(got[name], value, atol=1e-5, err_msg=name)
  # Weight decay: one L2 term per decayed kernel, summing to the export's.
  num_decayed = sum(v.regularizer is not None for v in encoder.trainable_weights)
  assert num_decayed > 0 and len(encoder.losses) == num_decayed
  np.testing.assert_allclose(float(tf.add_n(encoder.losses)),
                             _decay(export_dir), rtol=1e-5)


@pytest.mark.slow
def test_hub_layer_in_a_keras3_model_fails(export_dir):
  # What docs/export.md warns about: hub.KerasLayer is a tf_keras layer.
  layer = hub.KerasLayer(export_dir, trainable=True)
  with pytest.raises((ValueError, TypeError)):
    keras.Sequential([keras.Input([SIZE, SIZE, 3]), layer])


@pytest.mark.slow
@pytest.mark.parametrize("name", ["revnet50", "vgg19"])
def test_keras_file_of_revnet_and_vgg_trains_like_the_original(tmp_path, name):
  keras.utils.set_random_seed(0)
  encoder = models.backbone(name, filters_factor=1, num_classes=NUM_CLASSES,
                            input_size=SIZE)
  root = export.build_module(encoder, default_output="logits",
                             preprocess_spec="value_range(-1, 1)")
  path = str(tmp_path / name)
  export.save_module(root, path, {}, encoder)
  loaded = keras.saving.load_model(artifacts.keras_encoder_path(path))
  assert len(loaded.losses) == len(encoder.losses) > 0
  images, _ = _data(4)

  def grads(model):
    with tf.GradientTape() as tape:
      loss = tf.reduce_sum(model(images, training=True)["logits"] ** 2)
    return tape.gradient(loss, model.trainable_weights)

  # RevNet's reversible backprop (a custom gradient) survives the round trip.
  for expected, got in zip(grads(encoder), grads(loaded)):
    np.testing.assert_allclose(got, expected, rtol=1e-3, atol=1e-4)


def _run_snippet(name, export_dir):
  images, labels = _data()
  return doc_snippets.run("finetune", name, {"images": images, "labels": labels},
                          export_dir)


def test_doc_snippets_are_the_three_loaders():
  """Every `<!-- finetune: NAME -->` snippet of README.md and docs/*.md is one
  of the three that the tests below run."""
  assert sorted(doc_snippets.snippets("finetune")) == [
      "hub_tf_keras", "keras_file", "tfsm_layer"]


_SNIPPETS = [("keras_file", "encoder"), ("tfsm_layer", "layer"),
             ("hub_tf_keras", "layer")]


@pytest.mark.parametrize("name,layer_key", _SNIPPETS)
def test_doc_snippet_fine_tunes_a_tiny_export(tiny_export_dir, name,
                                              layer_key):
  _assert_snippet_fine_tunes(tiny_export_dir, name, layer_key)


@pytest.mark.slow
@pytest.mark.parametrize("name,layer_key", _SNIPPETS)
def test_doc_snippet_fine_tunes_a_trained_export(export_dir, name,
                                                 layer_key):
  _assert_snippet_fine_tunes(export_dir, name, layer_key)


def _assert_snippet_fine_tunes(export_dir, name, layer_key):
  """The loader's docs snippet fits on `images`, `labels`: every conv kernel
  and every BN moving statistic (training mode) must move away from the
  export's, and the weight decay be in `model.losses`."""
  before = _snapshot_of_export(export_dir)
  namespace = _run_snippet(name, export_dir)
  model, layer = namespace["model"], namespace[layer_key]
  kernels = [v for v in layer.trainable_weights if len(v.shape) == 4]
  statistics = [v for v in layer.non_trainable_weights if "moving" in v.name]
  assert len(kernels) == before["num_kernels"] > 0
  assert len(statistics) == before["num_statistics"] > 0
  assert _unmatched(kernels, before["values"]) == len(kernels)
  assert _unmatched(statistics, before["values"]) == len(statistics)
  # The decay at the fine-tuned weights, near the export's (a few steps). An
  # eager training-mode call first: `add_loss` losses are per call.
  model(namespace["images"][:2], training=True)
  assert before["decay"] > 0
  np.testing.assert_allclose(float(tf.add_n(model.losses)), before["decay"],
                             rtol=0.2)


def _snapshot_of_export(export_dir):
  saved = tf.saved_model.load(export_dir)
  return {"values": [np.array(v) for v in saved.variables],
          "num_kernels": sum(len(v.shape) == 4 for v in saved.trainable_variables),
          "num_statistics": sum("moving" in v.name for v in saved.variables),
          "decay": float(saved.regularization_loss())}


def _unmatched(variables, reference):
  """How many of `variables` equal none of the `reference` arrays."""
  return sum(not any(np.array_equal(np.array(v), r) for r in reference)
             for v in variables)
