"""Converting the original release's TF1 checkpoints: equality with the
release's own end points (tests/data/release), the name mapping, errors."""
import json
import logging
import os

import keras
import numpy as np
import pytest
import tensorflow as tf

from tfrevisit import artifacts
from tfrevisit import convert_release
from tfrevisit import evaluate
from tfrevisit import gin_config

DATA = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data",
                    "release")
CASES = ("resnet50_v1", "resnet50_v2", "revnet50", "vgg19")


def _checkpoint(case):
  return os.path.join(DATA, case, "model.ckpt")


def _expected(case):
  return dict(np.load(os.path.join(DATA, case, "expected.npz")))


def _convert(case, workdir, *flags):
  """The command line on fixture `case` (k=1, 10 classes, 64x64 input)."""
  return convert_release.main([
      "--checkpoint", _checkpoint(case), "--backbone", case,
      "--filters_factor", "1", "--task", "supervised", "--image_size", "64",
      "--workdir", str(workdir), *flags])


@pytest.fixture(name="exports", scope="module")
def _exports(tmp_path_factory):
  """{case: the export converted from its fixture}."""
  root = tmp_path_factory.mktemp("converted")
  return {case: _convert(case, root / case) for case in CASES}


def _assert_matches_release(outputs, expected):
  """Every end point the release exposes, to float32 rounding: relative 1e-5
  of the end point's scale (VGG's fc6 and pre_logits are [B, 1, 1, C] in the
  release, [B, C] here)."""
  assert set(outputs) == set(expected) - {"images"}
  for name, value in outputs.items():
    want = expected[name]
    np.testing.assert_allclose(
        np.reshape(value, want.shape), want, rtol=1e-5,
        atol=1e-5 * np.abs(want).max(), err_msg=name)


@pytest.mark.parametrize("case", CASES)
def test_converted_export_computes_the_release_end_points(exports, case):
  path = exports[case]
  expected = _expected(case)
  images = tf.constant(expected["images"])

  signature = tf.saved_model.load(path).signatures["representation"]
  _assert_matches_release(signature(image=images), expected)
  encoder = keras.saving.load_model(artifacts.keras_encoder_path(path))
  _assert_matches_release(encoder(images, training=False), expected)

  metadata = artifacts.read_metadata(path)
  with open(os.path.join(DATA, case, "variables.txt")) as f:
    num_variables = len(f.read().splitlines())
  assert metadata["converted_from"]["variables_used"] == num_variables
  assert metadata["converted_from"]["variables_left_out"] == []
  assert metadata["converted_from"]["head"] is True
  assert metadata["backbone"]["name"] == case and metadata["num_classes"] == 10
  assert os.path.realpath(os.path.dirname(path) + "/latest") == path


def test_converted_export_evaluates_with_the_quick_start_probe(exports,
                                                               tmp_path):
  rows = evaluate.main([
      "--hub_module", exports["resnet50_v2"], "--workdir", str(tmp_path),
      "--gin", os.path.join(gin_config.CONFIG_DIR, "eval", "quickstart",
                            "linear.gin"),
      "--gin_param", 'source.name = "random"',
      "--gin_param", "source.num_examples = 40",
      "--gin_param", "source.image_shape = (64, 64, 3)",
      "--gin_param", 'evaluate.end_points = ["block4", "pre_logits"]',
      "--gin_param", "select_l2_and_fit.max_iterations = 20"])
  assert [(r["end_point"], r["probe"]) for r in rows] == [
      ("block4", "linear"), ("pre_logits", "linear")]
  assert all(0 <= r["top1"] <= r["top5"] <= 1 for r in rows)


def _rewrite(case, path, edit):
  """Saves fixture `case`'s variables, changed by `edit` ({name: value} ->
  {name: value}), as a TF1-style (name-based) checkpoint at `path`."""
  reader = tf.train.load_checkpoint(_checkpoint(case))
  values = {name: reader.get_tensor(name)
            for name in reader.get_variable_to_shape_map()}
  variables = {name: tf.Variable(value)
               for name, value in edit(values).items()}
  os.makedirs(os.path.dirname(path), exist_ok=True)
  tf.compat.v1.train.Saver(var_list=variables).save(None, str(path))
  return str(path)


def _without(name):
  return lambda values: {k: v for k, v in values.items() if k != name}


def _renamed(old, new):
  return lambda values: {new if k == old else k: v for k, v in values.items()}


def _reshaped(name):
  return lambda values: {
      k: np.zeros(v.shape[:-1] + (v.shape[-1] + 1,), v.dtype) if k == name
      else v for k, v in values.items()}


@pytest.mark.parametrize("edit, message", [
    (_without("module/conv2d_7/kernel"),
     "lacks 'module/conv2d_7/kernel', the release's vgg19's "
     "block3_conv4/kernel [3, 3, 32, 32]"),
    (_without("module/batch_normalization_12/moving_variance"),
     "lacks 'module/batch_normalization_12/moving_variance'"),
    (_renamed("module/conv2d_7/kernel", "module/conv2d_7/weights"),
     "variable 'module/conv2d_7/weights' is not a conv2d or "
     "batch_normalization weight"),
    (_renamed("module/conv2d_7/kernel", "module/conv2d_19/kernel"),
     "'module/conv2d_19/kernel' has no counterpart in the release's vgg19"),
    (_reshaped("module/batch_normalization_3/gamma"),
     "'module/batch_normalization_3/gamma' has shape [17], but the "
     "release's vgg19 needs [16] for block2_conv2_bn/gamma"),
], ids=["removed", "removed_bn", "renamed", "renumbered", "wrong_shape"])
def test_a_broken_checkpoint_is_one_line_naming_the_variable(
    tmp_path, capsys, edit, message):
  path = _rewrite("vgg19", tmp_path / "model.ckpt", edit)
  with pytest.raises(SystemExit, match="^2$"):
    convert_release.main([
        "--checkpoint", path, "--backbone", "vgg19", "--filters_factor", "1",
        "--task", "supervised", "--image_size", "64",
        "--workdir", str(tmp_path / "out")])
  error = capsys.readouterr().err
  assert error.startswith("error: ") and error.count("\n") == 1, error
  assert message in error, error
  assert not (tmp_path / "out").exists()


def test_wrong_width_or_input_size_names_the_first_shape(tmp_path, capsys):
  for flags, first in ((["--filters_factor", "2", "--image_size", "64"],
                        "'module/conv2d/kernel' has shape [3, 3, 3, 8]"),
                       (["--filters_factor", "1", "--image_size", "96"],
                        "'module/conv2d_16/kernel' has shape [2, 2, 64, 512]")):
    with pytest.raises(SystemExit, match="^2$"):
      convert_release.main([
          "--checkpoint", _checkpoint("vgg19"), "--backbone", "vgg19",
          "--task", "supervised", "--workdir", str(tmp_path / "out"), *flags])
    assert first in capsys.readouterr().err


def test_hub_module_variables_and_training_extras_convert(tmp_path, caplog):
  """A TF-Hub module's variables/ (no `module/` prefix) with what training
  checkpoints add (global_step, Momentum slots); task rotation has 4 classes,
  the checkpoint 10: the export keeps the encoder alone."""
  def hub_style(values):
    out = {k[len("module/"):]: v for k, v in values.items()}
    out["global_step"] = np.int64(1234)
    out["conv2d_3/kernel/Momentum"] = np.zeros_like(out["conv2d_3/kernel"])
    return out
  module = tmp_path / "hub_module"
  _rewrite("vgg19", module / "variables" / "variables", hub_style)
  with caplog.at_level(logging.WARNING):
    path = convert_release.main([
        "--checkpoint", str(module), "--backbone", "vgg19",
        "--filters_factor", "1", "--image_size", "64",
        "--workdir", str(tmp_path / "out")])
  assert "without the release's head" in caplog.text
  assert os.path.basename(path) == "1234"
  metadata = artifacts.read_metadata(path)
  assert metadata["task"] == "rotation" and metadata["default_output"] == (
      "pre_logits")
  assert "logits" not in metadata["end_points"]
  assert metadata["converted_from"]["head"] is False
  assert metadata["converted_from"]["variables_left_out"] == [
      "conv2d_3/kernel/Momentum", "conv2d_18/bias", "conv2d_18/kernel",
      "global_step"]
  expected = _expected("vgg19")
  del expected["logits"]
  outputs = tf.saved_model.load(path).signatures["representation"](
      image=tf.constant(expected["images"]))
  _assert_matches_release(outputs, expected)


def test_patch_task_checkpoint_leaves_out_its_head(tmp_path):
  """A jigsaw training checkpoint also holds the task's head, numbered after
  the net: fc (conv2d_19), BN (batch_normalization_18), fc (conv2d_20)."""
  def with_patch_head(values):
    head = {"conv2d_19/kernel": [1, 1, 90, 16], "conv2d_19/bias": [16],
            "batch_normalization_18/gamma": [16],
            "batch_normalization_18/beta": [16],
            "batch_normalization_18/moving_mean": [16],
            "batch_normalization_18/moving_variance": [16],
            "conv2d_20/kernel": [1, 1, 16, 100], "conv2d_20/bias": [100]}
    return {**values, **{"module/" + name: np.ones(shape, np.float32)
                         for name, shape in head.items()}}
  path = _rewrite("vgg19", tmp_path / "model.ckpt", with_patch_head)
  export_path = convert_release.main([
      "--checkpoint", path, "--backbone", "vgg19", "--filters_factor", "1",
      "--task", "jigsaw", "--image_size", "64",
      "--workdir", str(tmp_path / "out")])
  metadata = artifacts.read_metadata(export_path)
  assert metadata["patch_mode"] and metadata["task_options"]["embed_dim"] == 10
  assert metadata["converted_from"]["head"] is True
  assert len(metadata["converted_from"]["variables_left_out"]) == 8
  expected = _expected("vgg19")
  encoder = keras.saving.load_model(artifacts.keras_encoder_path(export_path))
  _assert_matches_release(encoder(expected["images"], training=False),
                          expected)


def test_release_numbering_is_read_as_integers():
  names = ["module/conv2d_10/kernel", "module/conv2d_2/kernel",
           "module/conv2d/kernel", "module/batch_normalization_1/beta",
           "module/batch_normalization/gamma"]
  assert sorted(names, key=convert_release._semantic_order) == [  # pylint: disable=protected-access
      "module/conv2d/kernel", "module/conv2d_2/kernel",
      "module/conv2d_10/kernel", "module/batch_normalization/gamma",
      "module/batch_normalization_1/beta"]
  assert convert_release.release_name(("conv2d", 0), "kernel") == (
      "conv2d/kernel")
  assert convert_release.release_name(
      ("batch_normalization", 12), "gamma", "module/") == (
          "module/batch_normalization_12/gamma")


def test_missing_checkpoint_is_a_clear_error(tmp_path, capsys):
  with pytest.raises(SystemExit, match="^2$"):
    convert_release.main([
        "--checkpoint", str(tmp_path / "nothing"), "--backbone", "vgg19",
        "--filters_factor", "1", "--workdir", str(tmp_path / "out")])
  assert "No TF checkpoint at" in capsys.readouterr().err


def test_metadata_is_json_with_the_source(exports):
  with open(os.path.join(exports["vgg19"], "assets",
                         artifacts.METADATA_FILE)) as f:
    converted = json.load(f)["converted_from"]
  assert converted["checkpoint"] == os.path.abspath(_checkpoint("vgg19"))
  assert converted["format"] == "release TF1 checkpoint"
