"""The export's TF-Hub common image signature: [0, 1] images of any size."""
import keras
import numpy as np
import pytest
import tensorflow as tf
import tensorflow_hub as hub
import tf_keras

import doc_snippets
from tfrevisit import export

# One unit per stage: these tests exercise the loop, files and probes, not depth.
pytestmark = pytest.mark.usefixtures("shallow_backbones")


def _module(spec):
  """The export of a tiny encoder: images -> block1, pre_logits, logits (the
  signature's logic does not depend on the backbone)."""
  keras.utils.set_random_seed(0)
  images = keras.Input([None, None, 3])
  block1 = keras.layers.Conv2D(4, 3, strides=2, name="block1")(images)
  pre_logits = keras.layers.GlobalAveragePooling2D()(block1)
  encoder = keras.Model(images, {
      "block1": block1, "pre_logits": pre_logits,
      "logits": keras.layers.Dense(3)(pre_logits)})
  return export.build_module(encoder, default_output="logits",
                             preprocess_spec=spec)


def _uint8_images(height, width):
  return tf.cast(tf.random.stateless_uniform([2, height, width, 3], [0, 1], 0,
                                             256, tf.int32), tf.uint8)


def _assert_preprocess_then_representation(module, signature, pixels):
  """`signature` on pixels / 255 equals `representation(preprocess(pixels))`,
  per patch for patch models, and its `default` is the mean `pre_logits`."""
  got = signature(image=tf.cast(pixels, tf.float32) / 255.0)
  inputs = module.preprocess(pixels)
  inputs = tf.reshape(inputs, [-1, *inputs.shape[-3:]])  # patches: [2 * 9, ...]
  expected = module.representation(image=inputs)
  assert set(got) == {"default", *expected}
  for name, value in expected.items():
    np.testing.assert_allclose(tf.reshape(got[name], value.shape), value,
                               atol=1e-5, err_msg=name)
  pre_logits = expected["pre_logits"].numpy()
  pre_logits = pre_logits.reshape(2, len(pre_logits) // 2, -1)  # [2, 9 or 1, D]
  np.testing.assert_allclose(got["default"], pre_logits.mean(axis=1), atol=1e-5)


def test_saved_image_signature_takes_any_size_in_0_1(tmp_path):
  spec = "resize_small(32)|central_crop(32)|value_range(-1, 1)"
  path = str(tmp_path / "model")
  export.save_module(_module(spec), path, metadata={"preprocess": spec})
  loaded = tf.saved_model.load(path)
  signature = loaded.signatures["image_feature_vector"]
  assert list(signature.structured_input_signature[1]) == ["image"]
  for size in ((45, 37), (32, 32)):
    _assert_preprocess_then_representation(loaded, signature,
                                           _uint8_images(*size))
  # The tf_keras + hub.KerasLayer use of docs/export.md.
  layer = hub.KerasLayer(path, signature="image_feature_vector",
                         output_key="default")
  model = tf_keras.Sequential([tf_keras.Input([40, 50, 3]), layer])
  images = np.random.default_rng(0).uniform(size=[2, 40, 50, 3])
  np.testing.assert_allclose(model(images), signature(
      image=tf.constant(images, tf.float32))["default"], atol=1e-6)


def test_patch_models_average_the_nine_patches():
  module = _module("crop_patches(3, 0)|standardization")
  _assert_preprocess_then_representation(
      module, module.image_feature_vector, _uint8_images(48, 48))
  outputs = module.image_feature_vector.get_concrete_function().structured_outputs
  assert outputs["default"].shape.as_list() == [None, 4]  # D stays static
  assert outputs["block1"].shape.as_list() == [None, 9, None, None, 4]


def test_doc_load_snippets_run_on_an_export(tmp_path):
  """Every `<!-- load: NAME -->` snippet of README.md and docs/*.md runs on an
  export and gives what its comments say."""
  assert sorted(doc_snippets.snippets("load")) == [
      "image_feature_vector", "savedmodel", "tour"]
  spec = "resize_small(32)|central_crop(32)|value_range(-1, 1)"
  path = str(tmp_path / "model")
  export.save_module(_module(spec), path, metadata={"preprocess": spec})
  pixels = _uint8_images(32, 32)  # Already 32x32: only the value range maps.
  expected_inputs = pixels.numpy() / 127.5 - 1
  tour = doc_snippets.run("load", "tour", {"uint8_images": pixels}, path)
  namespace = doc_snippets.run("load", "savedmodel", {"uint8_images": pixels},
                               path)
  for names in (tour, namespace):
    np.testing.assert_allclose(names["inputs"], expected_inputs, atol=1e-4)
    assert set(names["layers"]) == {"block1", "pre_logits", "logits"}
  np.testing.assert_allclose(namespace["logits"], namespace["layers"]["logits"])
  assert isinstance(namespace["layer"], keras.layers.TFSMLayer)
  # [0, 1] images whose round(image * 255) are the pixels: `default` is the
  # pre_logits of the same preprocessed inputs.
  namespace["images_0_1"] = tf.cast(pixels, tf.float32) / 255.0
  doc_snippets.run("load", "image_feature_vector", namespace, path)
  np.testing.assert_allclose(namespace["features"],
                             namespace["layers"]["pre_logits"], atol=1e-5)
  assert isinstance(namespace["layer"], hub.KerasLayer)
