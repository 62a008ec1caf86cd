"""The consumer scripts in export/ on a tiny export and a tiny image folder."""
import os
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf

from tfrevisit import export
from tfrevisit import models

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(__file__)), "export"))
import extract_features  # pylint: disable=g-import-not-at-top,wrong-import-position
import keras_probe  # pylint: disable=g-import-not-at-top,wrong-import-position

# One unit per stage: these tests exercise the loop, files and probes, not depth.
pytestmark = pytest.mark.usefixtures("shallow_backbones")

SIZE = 32


@pytest.fixture(name="tiny_export", scope="module")
def _tiny_export(tmp_path_factory, shallow_backbones):
  keras.utils.set_random_seed(0)
  encoder = models.backbone("resnet50_v2", filters_factor=1, num_classes=4)
  path = str(tmp_path_factory.mktemp("export") / "model")
  spec = f"resize_small({SIZE})|central_crop({SIZE})|value_range(-1, 1)"
  export.save_module(export.build_module(encoder, default_output="logits",
                                         preprocess_spec=spec), path, metadata={})
  return encoder, path


@pytest.fixture(name="image_dir", scope="module")
def _image_dir(tmp_path_factory):
  """Two classes of 40x48 PNGs: dark and bright."""
  root = tmp_path_factory.mktemp("images")
  rng = np.random.default_rng(0)
  for label, (low, high) in enumerate([(0, 100), (150, 256)]):
    os.makedirs(root / f"class{label}")
    for i in range(6):
      image = rng.integers(low, high, (40, 48, 3), dtype=np.uint8)
      tf.io.write_file(str(root / f"class{label}" / f"{i}.png"), tf.io.encode_png(image))
  (root / "class0" / "notes.txt").write_text("not an image")
  return str(root)


def test_extract_features_writes_the_chosen_end_points(tiny_export, image_dir, tmp_path):
  encoder, path = tiny_export
  output = str(tmp_path / "features.npz")
  extract_features.main(["--saved_model", path, "--image_dir", image_dir,
                         "--end_points", "block4,pre_logits", "--output", output,
                         "--batch_size", "5"])
  saved = np.load(output)
  assert sorted(saved.files) == ["block4", "labels", "pre_logits"]
  np.testing.assert_array_equal(saved["labels"], [0] * 6 + [1] * 6)
  # Recompute the first image by hand: resize_small(32) of 40x48 -> 32x38
  # (area, back to uint8), central 32x32 crop, [-1, 1].
  image = tf.io.decode_png(tf.io.read_file(os.path.join(image_dir, "class0", "0.png")))
  resized = tf.image.resize(tf.cast(image, tf.float32), (32, 38), method="area")
  resized = tf.clip_by_value(tf.round(resized), 0, 255)
  cropped = tf.image.crop_to_bounding_box(resized, 0, 3, 32, 32)
  expected = encoder(cropped[None] / 127.5 - 1, training=False)
  np.testing.assert_allclose(saved["pre_logits"][0], expected["pre_logits"][0],
                             atol=1e-3 * float(tf.reduce_max(expected["pre_logits"])))
  assert saved["block4"].shape == (12, 512)  # spatial map averaged


def test_extract_features_rejects_unknown_end_points(tiny_export, image_dir, tmp_path):
  _, path = tiny_export
  with pytest.raises(ValueError, match="Unknown end point 'block9'"):
    extract_features.main(["--saved_model", path, "--image_dir", image_dir,
                           "--end_points", "block9", "--output", str(tmp_path / "f.npz")])


def test_keras_probe_fits_on_a_frozen_tfsm_layer(tiny_export, image_dir):
  _, path = tiny_export
  history = keras_probe.main(["--saved_model", path, "--image_dir", image_dir,
                              "--val_dir", image_dir, "--probe", "mlp",
                              "--epochs", "3", "--batch_size", "4"])
  assert len(history["loss"]) == 3 and len(history["val_accuracy"]) == 3
  assert all(np.isfinite(history["loss"]))
