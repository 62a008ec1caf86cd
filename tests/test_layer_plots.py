"""The evaluate command's --plots pictures and TensorBoard scalars, end to end
with the quick-start kNN and few-shot configs on a tiny SavedModel."""
import glob
import os

import numpy as np
import pytest
import tensorflow as tf

from tfrevisit import artifacts
from tfrevisit import evaluate
from tfrevisit.evaluation import layer_plots
from tfrevisit.evaluation import result_files

PREPROCESS = "resize_small(8)|central_crop(8)|value_range(-1, 1)"


def _projection_export(path):
  """A SavedModel whose `representation` is two fixed random projections of
  the [B, 8, 8, 3] image (cheap to build, unlike an encoder export)."""
  rng = np.random.default_rng(0)
  module = tf.Module()
  module.weights = [tf.constant(rng.normal(size=(192, d)), tf.float32)
                    for d in (32, 16)]

  @tf.function(input_signature=[tf.TensorSpec([None, 8, 8, 3], tf.float32,
                                              name="image")])
  def representation(image):
    flat = tf.reshape(image, [-1, 192])
    return {"block4": tf.reshape(tf.nn.relu(flat @ module.weights[0]),
                                 [-1, 2, 2, 8]),
            "pre_logits": flat @ module.weights[1]}

  tf.saved_model.save(module, path,
                      signatures={"representation": representation})
  artifacts.write_metadata(path, {"preprocess": PREPROCESS, "global_step": 7})
  return path


@pytest.fixture(name="evaluated", scope="module")
def _evaluated(tmp_path_factory):
  """(rows, workdir) of a kNN + few-shot evaluation with --plots."""
  path = _projection_export(str(tmp_path_factory.mktemp("export") / "model"))
  workdir = str(tmp_path_factory.mktemp("eval"))
  rows = evaluate.main([
      "--hub_module", path, "--workdir", workdir, "--plots",
      "--gin", "configs/eval/quickstart/knn.gin",
      "--gin", "configs/eval/quickstart/fewshot.gin",
      "--gin_param", 'source.name = "random"',
      "--gin_param", "source.num_examples = 40",
      "--gin_param", "source.num_classes = 4",
      "--gin_param", "source.image_shape = (8, 8, 3)",
      "--gin_param", 'evaluate.probes = ["knn", "fewshot"]',
      "--gin_param", "evaluate.label_fractions = [1.0, 0.5]",
      "--gin_param", "fewshot_probe.shots = [1, 3]",
      "--gin_param", "fewshot_probe.num_draws = 2",
      "--gin_param", "write_plots.tsne_points = 30"])
  return rows, workdir


def test_rows_of_both_probes(evaluated):
  rows, _ = evaluated
  assert [(r["probe"], r["end_point"], r["label_fraction"]) for r in rows] == [
      (p, e, f) for e in ("block4", "pre_logits") for f in (1.0, 0.5)
      for p in ("knn", "fewshot")]
  for row in rows:
    assert 0 <= row["top1"] <= row["top5"] <= 1
  knn_row = rows[0]
  assert knn_row["ks"] == [20, 80]  # trainval: 40 train + 40 val rows


def test_plots_are_written_and_non_empty(evaluated):
  _, workdir = evaluated
  paths = sorted(glob.glob(os.path.join(workdir, "plots", "*.png")))
  assert [os.path.basename(p) for p in paths] == [
      "accuracy_fewshot.png", "accuracy_knn.png", "tsne_pre_logits.png"]
  for path in paths:
    image = tf.io.decode_png(tf.io.read_file(path)).numpy()
    assert image.shape[0] > 100 and image.shape[1] > 100
    assert image.std() > 10  # not a blank canvas


def _scalars(logdir):
  found = {}
  for path in glob.glob(os.path.join(logdir, "events.out.tfevents.*")):
    for event in tf.compat.v1.train.summary_iterator(path):
      for value in event.summary.value:
        found[value.tag] = (event.step, float(tf.make_ndarray(value.tensor)))
  return found


def test_results_go_to_tensorboard_at_the_export_step(evaluated):
  rows, workdir = evaluated
  scalars = _scalars(os.path.join(workdir, "tb"))
  knn_row, fewshot_half = rows[0], rows[3]
  assert scalars["knn/block4/top1"] == (7, pytest.approx(knn_row["top1"]))
  assert scalars["knn/block4/top1_k80"] == (
      7, pytest.approx(knn_row["top1_per_k"][1]))
  assert scalars["fewshot@0.5/block4/top1_shot3"] == (
      7, pytest.approx(fewshot_half["top1_per_shot"][1]))
  assert len(scalars) == 8 * 4  # 8 rows x (top1, top5, two per k or shot)


def test_network_order_puts_unknown_names_last():
  assert layer_plots.network_order([
      "logits", "x", "block10", "block2", "after_root", "pre_logits", "block2"
  ]) == ["after_root", "block2", "pre_logits", "logits", "x", "block10"]


def test_tensorboard_tags_name_the_model(tmp_path):
  row = {"model": "rot", "probe": "linear", "end_point": "block4",
         "label_fraction": 1.0, "top1": 0.5}
  logdir = str(tmp_path / "tb")
  result_files.write_tensorboard([row], logdir)
  assert _scalars(logdir) == {"rot/linear/block4/top1": (0, 0.5)}
