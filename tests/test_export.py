"""TF-Hub-style SavedModel export: round trips, loaders, atomicity, errors."""
import dataclasses
import json
import os
import shutil

import gin
import keras
import numpy as np
import pytest
import tensorflow as tf
import tensorflow_hub as hub

from tfrevisit import artifacts
from tfrevisit import export
from tfrevisit import gin_config
from tfrevisit import models
from tfrevisit import restore
from tfrevisit import train
from tfrevisit.evaluation import finetune

# One unit per stage: these tests exercise the loop, files and probes, not depth.
pytestmark = pytest.mark.usefixtures("shallow_backbones")

ATOL = 1e-5


def _export_backbone(tmp_path, name, size=32, **kwargs):
  keras.utils.set_random_seed(0)
  encoder = models.backbone(name, filters_factor=1, num_classes=5,
                            input_size=size, **kwargs)
  root = export.build_module(
      encoder, default_output="logits",
      preprocess_spec=f"resize_small({size})|central_crop({size})|value_range(-1, 1)")
  path = str(tmp_path / name)
  export.save_module(root, path, metadata={"architecture": name})
  return encoder, path


def _images(batch_size, size, seed=0):
  return tf.random.stateless_uniform([batch_size, size, size, 3], [seed, 1], -1, 1)


@pytest.mark.parametrize("name,kwargs", [
    ("resnet50_v1", {}), ("resnet50_v2", {"last_relu": False}), ("revnet50", {}),
    ("vgg19", {}), ("resnet50_v1", {"patch_mode": True}),
])
def test_round_trip_every_end_point(tmp_path, name, kwargs):
  encoder, path = _export_backbone(tmp_path, name, **kwargs)
  loaded = tf.saved_model.load(path)
  images = _images(7, 32)
  expected = encoder(images, training=False)
  got = loaded.signatures["representation"](image=images)
  assert set(got) == set(expected)
  for key, value in expected.items():
    np.testing.assert_allclose(got[key], value, atol=ATOL, err_msg=key)
  np.testing.assert_allclose(loaded(images), expected["logits"], atol=ATOL)
  np.testing.assert_allclose(
      loaded.signatures["serving_default"](image=images)["default"],
      expected["logits"], atol=ATOL)
  metadata = json.load(open(os.path.join(path, "assets", artifacts.METADATA_FILE)))
  assert metadata["architecture"] == name


def test_batch_and_spatial_sizes_are_dynamic_for_resnet(tmp_path):
  encoder, path = _export_backbone(tmp_path, "resnet50_v2")
  loaded = tf.saved_model.load(path)
  for batch_size, size in [(1, 32), (7, 32), (2, 48)]:
    images = _images(batch_size, size)
    got = loaded.representation(images)
    expected = encoder(images, training=False)
    assert got["pre_logits"].shape == (batch_size, 512)
    np.testing.assert_allclose(got["block4"], expected["block4"], atol=ATOL)


def test_preprocess_maps_uint8_to_the_model_input(tmp_path):
  _, path = _export_backbone(tmp_path, "resnet50_v2")
  loaded = tf.saved_model.load(path)
  images = tf.cast(tf.random.stateless_uniform([3, 40, 50, 3], [0, 0], 0, 256,
                                               dtype=tf.int32), tf.uint8)
  out = loaded.preprocess(images)
  assert out.shape == (3, 32, 32, 3) and out.dtype == tf.float32
  assert float(tf.reduce_min(out)) >= -1.0 and float(tf.reduce_max(out)) <= 1.0


def test_keras3_tfsm_layer_representation(tmp_path):
  encoder, path = _export_backbone(tmp_path, "revnet50")
  layer = keras.layers.TFSMLayer(path, call_endpoint="representation")
  images = _images(2, 32)
  got = layer(images)
  np.testing.assert_allclose(got["pre_logits"],
                             encoder(images, training=False)["pre_logits"], atol=ATOL)


def test_hub_keras_layer_default_and_representation(tmp_path):
  encoder, path = _export_backbone(tmp_path, "resnet50_v1")
  images = _images(2, 32)
  expected = encoder(images, training=False)

  layer = hub.KerasLayer(path, trainable=True)
  np.testing.assert_allclose(layer(images, training=False), expected["logits"],
                             atol=ATOL)
  assert len(layer.trainable_weights) == len(encoder.trainable_weights)
  num_regularized = sum(v.regularizer is not None for v in encoder.trainable_weights)
  assert num_regularized > 0 and len(layer.losses) == num_regularized
  expected_decay = sum(float(v.regularizer(v)) for v in encoder.trainable_weights
                       if v.regularizer is not None)
  np.testing.assert_allclose(float(tf.add_n(layer.losses)), expected_decay, rtol=1e-5)

  rep = hub.KerasLayer(path, signature="representation",
                       signature_outputs_as_dict=True)
  got = rep(images)
  for key in ("after_root", "block4", "pre_logits"):
    np.testing.assert_allclose(got[key], expected[key], atol=ATOL, err_msg=key)


def test_hub_fine_tuning_changes_the_weights(tmp_path):
  _, path = _export_backbone(tmp_path, "resnet50_v2")
  layer = hub.KerasLayer(path, trainable=True)
  images = _images(4, 32)
  with tf.GradientTape() as tape:
    loss = tf.reduce_mean(layer(images, training=True) ** 2) + tf.add_n(layer.losses)
  grads = tape.gradient(loss, layer.trainable_weights)
  assert all(g is not None for g in grads)
  assert any(float(tf.reduce_max(tf.abs(g))) > 0 for g in grads)


SMALL_RUN = [
    'train.task = "rotation"', "train.batch_size = 4", "train.epochs = 1",
    "train.max_steps = 1", "train.log_every_steps = 1", "train.export = False",
    'source.name = "random"', "source.num_examples = 16",
    "source.image_shape = (32, 32, 3)", 'backbone.name = "resnet50_v2"',
    "backbone.filters_factor = 1", "rotation.image_size = 32",
]


def _train_small_run(tmp_path_factory, name, bindings):
  """Trains a run with these gin bindings; returns its workdir."""
  workdir = str(tmp_path_factory.mktemp(name) / "run")
  gin_config.parse_gin([], bindings)
  train.train_from_gin(workdir)
  gin.clear_config()
  return workdir


@pytest.fixture(name="trained_workdir", scope="module")
def _trained_workdir(tmp_path_factory, shallow_backbones):
  return _train_small_run(tmp_path_factory, "trained", SMALL_RUN)


@pytest.fixture(name="workdir")
def _workdir(trained_workdir, tmp_path):
  """A fresh copy of one small trained workdir (training it takes ~20 s)."""
  workdir = str(tmp_path / "run")
  shutil.copytree(trained_workdir, workdir, symlinks=True)
  return workdir


# A run with the BatchNorm settings bound under gin's old names, as in issue 30:
# their re-export used to rebuild the encoder with the defaults.
NUMERICS_RUN = [binding for binding in SMALL_RUN
                if not binding.startswith("train.export")] + [
    "train.export = True",
    "batch_norm.momentum = 0.9", "batch_norm.epsilon = 1e-5"]


@pytest.fixture(name="numerics_workdir", scope="module")
def _numerics_workdir(tmp_path_factory, shallow_backbones):
  return _train_small_run(tmp_path_factory, "numerics", NUMERICS_RUN)


def test_rebuilds_compute_the_training_export_bit_for_bit(numerics_workdir,
                                                          tmp_path):
  """Re-export, fine-tune restore and evaluation's encoder.keras, each rebuilt
  without gin, against the export written at the end of training."""
  workdir = numerics_workdir
  backbone = artifacts.read_task_record(workdir).backbone
  assert (backbone["batch_norm_momentum"], backbone["batch_norm_epsilon"]) == (
      0.9, 1e-5)
  trained = os.path.join(workdir, "export", "latest")
  images = _images(3, 32)
  representation = lambda path: tf.saved_model.load(path).signatures[
      "representation"](image=images)
  expected = representation(trained)
  reexported = export.main(["--workdir", workdir,
                            "--output", str(tmp_path / "reexport")])
  for key, value in representation(reexported).items():
    np.testing.assert_array_equal(value, expected[key], err_msg=key)

  keras_expected = finetune.load_encoder(trained)(images, training=False)
  for key, value in keras_expected.items():
    np.testing.assert_allclose(value, expected[key], atol=ATOL, err_msg=key)
  for encoder in (finetune.load_encoder(None, workdir=workdir),
                  finetune.load_encoder(reexported)):
    for key, value in encoder(images, training=False).items():
      np.testing.assert_array_equal(value, keras_expected[key], err_msg=key)

  # The release's BatchNorm settings on the same weights differ: the
  # comparisons above can fail.
  record = artifacts.read_task_record(workdir)
  defaults = restore.build_task(dataclasses.replace(record, backbone={
      **backbone, "batch_norm_momentum": 0.99, "batch_norm_epsilon": 1e-3}))
  restore.restore_encoder(defaults, artifacts.latest_checkpoint(workdir))
  assert np.abs(defaults.encoder(images, training=False)["pre_logits"]
                - keras_expected["pre_logits"]).max() > 1e-6


def test_export_from_workdir_and_latest_link(workdir):
  path = export.main(["--workdir", workdir])
  latest = os.path.join(workdir, "export", "latest")
  assert os.path.realpath(latest) == os.path.realpath(path)
  metadata = json.load(open(os.path.join(latest, "assets", artifacts.METADATA_FILE)))
  assert metadata["task"] == "rotation" and metadata["global_step"] == 1
  assert metadata["architecture"] == "resnet50_v2" and metadata["filters_factor"] == 1
  assert "pre_logits" in metadata["end_points"]
  assert "train.batch_size = 4" in metadata["gin_config"]
  loaded = tf.saved_model.load(latest)
  assert loaded(_images(2, 32)).shape == (2, 4)


def test_task_json_rebuilds_the_task_without_gin(workdir):
  record = artifacts.read_task_record(workdir)
  assert record.backbone == models.Backbone("resnet50_v2", 1).to_dict()
  assert record.options == {"image_size": 32}
  task, step = restore.restore_task(workdir)  # gin's config is empty here.
  assert task.backbone == models.Backbone("resnet50_v2", 1)
  assert task.image_size == 32 and step == 1


def test_metadata_records_the_task_and_old_metadata_still_reads(workdir):
  metadata = artifacts.read_metadata(export.main(["--workdir", workdir]))
  assert artifacts.export_record(metadata) == artifacts.read_task_record(workdir)
  assert metadata["layout"] == models.LAYOUT
  old = {k: v for k, v in metadata.items()
         if k not in ("backbone", "num_classes", "task_options", "layout")}
  assert artifacts.export_record(old) == artifacts.TaskRecord(
      "rotation", None, {"name": "resnet50_v2", "filters_factor": 1,
                         "last_relu": True})


def test_export_reads_the_config_gin_of_an_old_workdir(workdir):
  with open(os.path.join(workdir, artifacts.TASK_FILE), "w") as f:
    json.dump({"task": "rotation", "num_classes": 10}, f)
  with pytest.raises(ValueError, match="does not record the backbone"):
    restore.restore_task(workdir)
  metadata = artifacts.read_metadata(export.main(["--workdir", workdir]))
  assert metadata["backbone"]["name"] == "resnet50_v2"
  assert metadata["task_options"] == {"image_size": 32}


def _make_layout_one(workdir, backbone_name):
  """Rewrites task.json as a run of `backbone_name` from before layouts."""
  path = os.path.join(workdir, artifacts.TASK_FILE)
  with open(path) as f:
    info = json.load(f)
  del info["layout"]
  info["backbone"]["name"] = backbone_name
  with open(path, "w") as f:
    json.dump(info, f)


def test_old_workdir_of_a_changed_backbone_is_refused_in_one_line(workdir,
                                                                  capsys):
  assert artifacts.read_task_record(workdir).layout == models.LAYOUT
  _make_layout_one(workdir, "revnet50")
  assert artifacts.read_task_record(workdir).layout == 1
  with pytest.raises(SystemExit, match="^2$"):
    export.main(["--workdir", workdir])
  error = capsys.readouterr().err
  assert error.startswith("error: This revnet50 was trained with backbone "
                          "layout 1") and error.count("\n") == 1
  assert "exports (SavedModel, encoder.keras) still load" in error
  assert not os.path.exists(os.path.join(workdir, "export"))
  with pytest.raises(ValueError, match="layout 1"):
    restore.check_resumable(workdir, models.Backbone("revnet50", 1))


def test_old_workdir_of_an_unchanged_backbone_still_exports(workdir):
  _make_layout_one(workdir, "resnet50_v2")
  restore.check_resumable(workdir, models.Backbone("resnet50_v2", 1))
  metadata = artifacts.read_metadata(export.main(["--workdir", workdir]))
  assert metadata["layout"] == models.LAYOUT


def test_interrupted_export_keeps_the_previous_one(workdir, monkeypatch):
  export.main(["--workdir", workdir])
  first = os.path.realpath(os.path.join(workdir, "export", "latest"))
  task, _ = restore.restore_task(workdir)

  def failing_save(*args, **kwargs):
    raise OSError("disk full (simulated)")

  monkeypatch.setattr(tf.saved_model, "save", failing_save)
  with pytest.raises(OSError, match="simulated"):
    export.export_task(task, workdir, step=2)
  assert os.path.realpath(os.path.join(workdir, "export", "latest")) == first
  assert sorted(os.listdir(os.path.join(workdir, "export"))) == ["1", "latest"]


def test_export_without_checkpoints_is_a_clear_error(tmp_path, capsys):
  with pytest.raises(SystemExit, match="^2$"):
    export.main(["--workdir", str(tmp_path)])
  assert "not a tfrevisit training workdir" in capsys.readouterr().err
  (tmp_path / "checkpoints").mkdir()
  (tmp_path / "config.gin").write_text("")
  (tmp_path / artifacts.TASK_FILE).write_text('{"task": "rotation", "num_classes": 4}')
  with pytest.raises(SystemExit, match="^2$"):
    export.main(["--workdir", str(tmp_path)])
  assert "No checkpoint" in capsys.readouterr().err

