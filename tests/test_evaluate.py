"""Feature extraction and the evaluate command line on a tiny export."""
import json
import os

import gin
import keras
import numpy as np
import pytest
import tensorflow as tf

from tfrevisit import data
from tfrevisit import evaluate
from tfrevisit import gin_config
from tfrevisit import export
from tfrevisit import models
from tfrevisit.data import sources
from tfrevisit.evaluation import features as features_lib
from tfrevisit.evaluation import logistic_regression
from tfrevisit.evaluation import inputs
from tfrevisit.evaluation import linear_on_images

# One unit per stage: these tests exercise the loop, files and probes, not depth.
pytestmark = pytest.mark.usefixtures("shallow_backbones")

SIZE = 32
PREPROCESS = f"resize_small({SIZE})|central_crop({SIZE})|value_range(-1, 1)"
PATCH_PREPROCESS = "crop_patches(3, 0)|standardization"


def _tiny_export(path, patch_mode=False, preprocess=PREPROCESS):
  keras.utils.set_random_seed(0)
  encoder = models.backbone("resnet50_v2", filters_factor=1, num_classes=4,
                            patch_mode=patch_mode)
  root = export.build_module(encoder, default_output="logits",
                             preprocess_spec=preprocess)
  export.save_module(root, str(path), metadata={"preprocess": preprocess})
  return encoder, str(path)


@pytest.fixture(name="tiny_export", scope="module")
def _tiny_export_fixture(tmp_path_factory, shallow_backbones):
  return _tiny_export(tmp_path_factory.mktemp("export") / "model")


def _assert_close(actual, expected, rtol=1e-5):
  """Equal up to float32 noise relative to the layer's scale (batch sizes differ)."""
  expected = np.asarray(expected)
  np.testing.assert_allclose(actual, expected, atol=rtol * np.abs(expected).max())


def _source(num_examples=40):
  return sources.RandomSource(image_shape=(SIZE, SIZE, 3), num_examples=num_examples)


def test_features_match_the_encoder_pooled_by_hand(tiny_export, tmp_path):
  encoder, path = tiny_export
  module, metadata = features_lib.load_module(path)
  assert metadata["preprocess"] == PREPROCESS
  source = _source(num_examples=10)
  features, labels = features_lib.cached_features(
      module, source, "test", PREPROCESS, str(tmp_path), batch_size=4,
      shard_size=8)
  images = np.stack([ex["image"] for ex in source.as_dataset("test").as_numpy_iterator()])
  expected = encoder(images.astype(np.float32) / 127.5 - 1, training=False)
  assert labels.shape == (10,)
  # block1 at 32x32, k=1: 8x8x64 = 4096 values, under 9000: flattened as is.
  _assert_close(features["block1"], np.reshape(expected["block1"], [10, -1]))
  _assert_close(features["pre_logits"], expected["pre_logits"])
  # after_root 8x8x16 = 1024 values; with target 100: kernel ceil(sqrt(10.24)) = 4.
  pooled, _ = features_lib.cached_features(
      module, source, "test", PREPROCESS, str(tmp_path / "pooled"), batch_size=4,
      target=100)
  by_hand = np.reshape(expected["after_root"], [10, 2, 4, 2, 4, 16]).max(axis=(2, 4))
  _assert_close(pooled["after_root"], by_hand.reshape(10, -1))


def test_patch_model_features_average_the_nine_patches(tmp_path):
  encoder, path = _tiny_export(tmp_path / "patches", patch_mode=True,
                               preprocess=PATCH_PREPROCESS)
  module, _ = features_lib.load_module(path)
  source = sources.RandomSource(image_shape=(48, 48, 3), num_examples=3)
  features, _ = features_lib.cached_features(
      module, source, "test", PATCH_PREPROCESS, str(tmp_path / "cache"), batch_size=3)
  images = np.stack([ex["image"] for ex in source.as_dataset("test").as_numpy_iterator()])
  patches = images.reshape(3, 3, 16, 3, 16, 3).transpose(0, 1, 3, 2, 4, 5)
  patches = patches.reshape(27, 16, 16, 3).astype(np.float32)
  mean = patches.mean(axis=(1, 2, 3), keepdims=True)
  std = np.maximum(patches.std(axis=(1, 2, 3), keepdims=True), 1 / np.sqrt(16 * 16 * 3))
  per_patch = encoder((patches - mean) / std, training=False)["pre_logits"]
  _assert_close(features["pre_logits"], np.reshape(per_patch, [3, 9, -1]).mean(axis=1))


def _stacked_blocks(tmp_path, sizes=(5, 1, 7, 3), dim=4):
  """Blocks of the given row counts, the third one memory-mapped."""
  rng = np.random.default_rng(0)
  blocks = [rng.normal(size=(size, dim)).astype(np.float32) for size in sizes]
  np.save(tmp_path / "block.npy", blocks[2])
  blocks[2] = np.load(tmp_path / "block.npy", mmap_mode="r")
  return blocks


def test_stacked_rows_read_like_their_concatenation(tmp_path):
  blocks = _stacked_blocks(tmp_path)
  rows = features_lib.StackedRows(blocks)
  expected = np.concatenate(blocks)
  assert rows.shape == expected.shape == (16, 4) and len(rows) == 16
  for index in (slice(None), slice(3, 14), slice(5, 6), slice(6, 6),
                slice(-4, None), slice(1, 15, 3), np.array([15, 0, 6, 5, 6])):
    np.testing.assert_array_equal(rows[index], expected[index], str(index))
  np.testing.assert_array_equal(np.asarray(rows), expected)
  mean, std = expected.mean(0), expected.std(0)
  standardized = rows.standardized(mean, std)
  np.testing.assert_allclose(standardized[2:9], (expected[2:9] - mean) / std,
                             rtol=1e-6)
  stacked = standardized.stack(features_lib.StackedRows(blocks[:2]))
  np.testing.assert_allclose(
      np.asarray(stacked),
      (np.concatenate([expected, *blocks[:2]]) - mean) / std, rtol=1e-6)


def test_column_mean_std_reads_in_chunks(tmp_path):
  rows = features_lib.StackedRows(_stacked_blocks(tmp_path))
  mean, std = features_lib.column_mean_std(rows, chunk_rows=3)
  np.testing.assert_allclose(mean, np.asarray(rows).mean(0), rtol=1e-6)
  np.testing.assert_allclose(std, np.asarray(rows).std(0), rtol=1e-5)


def test_chunked_linear_fit_on_stacked_rows_matches_in_memory(tmp_path):
  blocks = [block * 3 + 1 for block in _stacked_blocks(tmp_path, (40, 25, 35))]
  labels = np.random.default_rng(1).integers(0, 3, 100)
  rows = features_lib.StackedRows(blocks)
  mean, std = features_lib.column_mean_std(rows)
  in_memory = logistic_regression.fit_logistic_regression(
      (np.concatenate(blocks) - mean) / std, labels, 3, 1e-2, tolerance=1e-7)
  chunked = logistic_regression.fit_logistic_regression(
      rows.standardized(mean, std), labels, 3, 1e-2, tolerance=1e-7,
      chunk_size=30)
  np.testing.assert_allclose(chunked.weights, in_memory.weights, atol=1e-4)
  np.testing.assert_allclose(chunked.loss, in_memory.loss, rtol=1e-7)


def test_interrupted_extraction_resumes_after_the_last_shard(tiny_export, tmp_path,
                                                             monkeypatch):
  _, path = tiny_export
  module, _ = features_lib.load_module(path)
  source = _source()
  expected, expected_labels = features_lib.cached_features(
      module, source, "train", PREPROCESS, str(tmp_path / "full"), batch_size=4,
      shard_size=8)

  written = []
  original = features_lib._write_shard  # pylint: disable=protected-access

  def crash_after_two(directory, index, features, labels):
    if len(written) == 2:
      raise KeyboardInterrupt
    written.append(index)
    original(directory, index, features, labels)

  monkeypatch.setattr(features_lib, "_write_shard", crash_after_two)
  cache = str(tmp_path / "resumed")
  with pytest.raises(KeyboardInterrupt):
    features_lib.cached_features(module, source, "train", PREPROCESS, cache,
                                 batch_size=4, shard_size=8)
  assert written == [0, 1]
  written.clear()
  monkeypatch.setattr(features_lib, "_write_shard", lambda *a: (written.append(a[1]), original(*a)))
  features, labels = features_lib.cached_features(
      module, source, "train", PREPROCESS, cache, batch_size=4, shard_size=8)
  assert written == [2, 3, 4]  # 40 examples = 5 shards of 8
  assert all(isinstance(block, np.memmap) and len(block) == 8
             for block in features["pre_logits"].blocks)
  np.testing.assert_array_equal(labels, expected_labels)
  for name, value in expected.items():
    np.testing.assert_allclose(features[name], value, atol=1e-6, err_msg=name)


def test_max_examples_keeps_the_first_examples(tiny_export, tmp_path):
  _, path = tiny_export
  module, _ = features_lib.load_module(path)
  args = (module, _source(), "train", PREPROCESS)
  every, every_labels = features_lib.cached_features(
      *args, str(tmp_path / "all"), batch_size=4, shard_size=8)
  first, first_labels = features_lib.cached_features(
      *args, str(tmp_path / "first"), batch_size=4, shard_size=8,
      max_examples=10)  # 3 batches of 4 are extracted, 10 rows kept
  np.testing.assert_array_equal(first_labels, every_labels[:10])
  for name, value in every.items():
    assert first[name].shape == (10, value.shape[1])
    _assert_close(np.asarray(first[name]), value[:10])


def test_a_cache_cut_short_mid_batch_is_reused_whole(tiny_export, tmp_path,
                                                     monkeypatch):
  _, path = tiny_export
  module, _ = features_lib.load_module(path)
  args = (module, _source(), "train", PREPROCESS, str(tmp_path))
  kwargs = dict(batch_size=4, shard_size=8, max_examples=10)
  features_lib.cached_features(*args, **kwargs)  # shards of 8 and 2 rows
  written = []
  monkeypatch.setattr(features_lib, "_write_shard", lambda *a: written.append(a[1]))
  again, labels = features_lib.cached_features(*args, **kwargs)
  assert not written
  assert len(labels) == 10 and again["pre_logits"].shape[0] == 10


def test_cache_refuses_other_settings(tiny_export, tmp_path):
  _, path = tiny_export
  module, _ = features_lib.load_module(path)
  args = (module, _source(8), "test", PREPROCESS, str(tmp_path))
  features_lib.cached_features(*args, batch_size=4)
  with pytest.raises(ValueError, match="other settings"):
    features_lib.cached_features(*args, batch_size=4, pooling_mode="avg")


def test_evaluate_end_to_end_writes_a_row_per_end_point(tiny_export, tmp_path):
  _, path = tiny_export
  workdir = str(tmp_path / "eval")
  rows = evaluate.main([
      "--hub_module", path, "--workdir", workdir,
      "--gin_param", 'source.name = "random"',
      "--gin_param", "source.num_examples = 40",
      "--gin_param", "source.image_shape = (32, 32, 3)",
      "--gin_param", 'evaluate.probes = ["linear", "mlp"]',
      "--gin_param", "evaluate.label_fractions = [1.0, 0.25]",
      "--gin_param", "evaluate.label_subset_seeds = [0, 1]",
      "--gin_param", "select_l2_and_fit.l2_grid = [1e-2, 1e-3]",
      "--gin_param", "select_l2_and_fit.max_iterations = 20",
      "--gin_param", "train_mlp.epochs = 2",
      "--gin_param", "train_mlp.decay_epochs = [1]"])
  end_points = {"after_root", "block1", "block2", "block3", "block4", "pre_logits",
                "logits"}
  # Per end point and probe: all labels once, 25% in two label subsets.
  assert len(rows) == len(end_points) * 2 * 3
  saved = json.load(open(os.path.join(workdir, "results.json")))
  assert {r["end_point"] for r in saved} == end_points
  assert {(r["probe"], r["label_fraction"], r.get("subset_seed")) for r in saved} == {
      (p, f, s) for p in ("linear", "mlp")
      for f, s in ((1.0, None), (0.25, 0), (0.25, 1))}
  for row in saved:
    assert 0 <= row["top1"] <= row["top5"] <= 1
    assert (row["protocol"], row["reported_split"]) == ("table2", "test")
    if row["probe"] == "linear":
      assert {"iterations", "evaluations", "converged", "stopped_early",
              "hit_max_iterations", "l2_at_edge", "l2_grid"} <= set(row)
  header = open(os.path.join(workdir, "results.csv")).readline()
  assert header.startswith("end_point,probe,label_fraction")


def _linear_params(l2_grid="[1e-2, 1e-3]"):
  return ["--gin_param", 'source.name = "random"',
          "--gin_param", "source.num_examples = 40",
          "--gin_param", "source.image_shape = (32, 32, 3)",
          "--gin_param", 'evaluate.end_points = ["block4", "pre_logits", "logits"]',
          "--gin_param", "evaluate.label_fractions = [1.0, 0.25]",
          "--gin_param", "evaluate.label_subset_seeds = [0, 1]",
          "--gin_param", f"select_l2_and_fit.l2_grid = {l2_grid}",
          "--gin_param", "select_l2_and_fit.max_iterations = 20"]


def test_an_interrupted_evaluation_resumes_after_its_last_row(
    tiny_export, tmp_path, monkeypatch):
  _, path = tiny_export
  probe_row, calls = evaluate._probe_row, []

  def counted(*args, fail_after=None):
    calls.append(args[0])
    if fail_after is not None and len(calls) > fail_after:
      raise KeyboardInterrupt  # the runner killed mid-evaluation
    return probe_row(*args)

  def run(workdir, l2_grid="[1e-2, 1e-3]", fail_after=None):
    calls.clear()
    gin.clear_config()
    monkeypatch.setattr(evaluate, "_probe_row",
                        lambda *a: counted(*a, fail_after=fail_after))
    return evaluate.main(["--hub_module", path, "--workdir", workdir]
                         + _linear_params(l2_grid))

  straight = run(str(tmp_path / "straight"))
  rows_per_run = 3 * 3  # 3 end points x (all labels, 2 subsets of 25%)
  assert len(calls) == rows_per_run
  workdir = str(tmp_path / "interrupted")
  with pytest.raises(KeyboardInterrupt):
    run(workdir, fail_after=4)
  assert len(json.load(open(os.path.join(workdir, "results.json")))) == 4
  resumed = run(workdir)
  assert len(calls) == rows_per_run - 4
  key = lambda r: (r["end_point"], r["label_fraction"], r.get("subset_seed"))
  assert [key(r) for r in resumed] == [key(r) for r in straight]
  for a, b in zip(resumed, straight):
    assert a["top1"] == pytest.approx(b["top1"], abs=1e-6), key(a)
  # Other settings rerun every row.
  run(workdir, l2_grid="[1e-1, 1e-2]")
  assert len(calls) == rows_per_run


def test_fit_warnings_name_the_end_point_of_each_problem():
  rows = [
      {"end_point": "block1", "probe": "linear", "label_fraction": 1.0,
       "stopped_early": True, "iterations": 1, "l2_at_edge": False},
      {"end_point": "pre_logits", "probe": "linear", "label_fraction": 0.1,
       "hit_max_iterations": True, "iterations": 150, "l2_at_edge": True,
       "l2": 1e-10, "l2_grid": [1e-2, 1e-10]},
      {"end_point": "logits", "probe": "mlp", "label_fraction": 1.0},
      {"model": "random_init", "end_point": "block2", "probe": "linear",
       "label_fraction": 1.0, "stopped_early": True}]
  lines = evaluate.fit_warnings(rows)
  assert len(lines) == 4
  assert lines[3].startswith("WARNING: random_init block2 (linear probe")
  assert lines[0].startswith("WARNING: block1 (linear probe, 1 of the labels)")
  assert "fewer than 3 iterations" in lines[0]
  assert "pre_logits (linear probe, 0.1 of the labels)" in lines[1]
  assert "max_iterations (150)" in lines[1]
  assert "edge of the grid 0.01..1e-10" in lines[2]


def test_table1_protocol_reports_val_and_never_reads_test(tiny_export,
                                                          tmp_path):
  _, path = tiny_export
  workdir = str(tmp_path / "eval")
  rows = evaluate.main([
      "--hub_module", path, "--workdir", workdir,
      "--gin_param", 'source.name = "random"',
      "--gin_param", "source.num_examples = 60",
      "--gin_param", "source.image_shape = (32, 32, 3)",
      "--gin_param", 'evaluate.protocol = "table1"',
      "--gin_param", 'evaluate.end_points = ["pre_logits"]',
      "--gin_param", "select_l2_and_fit.l2_grid = [1e-2, 1e-3]",
      "--gin_param", "select_l2_and_fit.max_iterations = 20"])
  assert [(r["protocol"], r["reported_split"]) for r in rows] == [
      ("table1", "val")]
  assert sorted(os.listdir(os.path.join(workdir, "features"))) == [
      "train", "val"]


def test_evaluate_streams_chunks_of_the_feature_cache(tiny_export, tmp_path):
  _, path = tiny_export
  rows = evaluate.main([
      "--hub_module", path, "--workdir", str(tmp_path / "eval"),
      "--gin_param", 'source.name = "random"',
      "--gin_param", "source.num_examples = 40",
      "--gin_param", "source.image_shape = (32, 32, 3)",
      "--gin_param", 'evaluate.end_points = ["pre_logits"]',
      "--gin_param", "select_l2_and_fit.l2_grid = [1e-2]",
      "--gin_param", "select_l2_and_fit.max_iterations = 20",
      "--gin_param", "select_l2_and_fit.chunk_size = 16"])
  assert [(row["end_point"], row["probe"]) for row in rows] == [
      ("pre_logits", "linear")]
  assert 0 <= rows[0]["top1"] <= rows[0]["top5"] <= 1


def test_wrong_hub_module_path_is_a_clear_error(tmp_path):
  with pytest.raises(FileNotFoundError, match="not a SavedModel directory"):
    features_lib.load_module(str(tmp_path / "missing"))


def test_export_without_representation_is_a_clear_error(tmp_path):
  module = tf.Module()
  module.f = tf.function(lambda x: x * 2,
                         input_signature=[tf.TensorSpec([None], tf.float32)])
  tf.saved_model.save(module, str(tmp_path / "plain"),
                      signatures={"serving_default": module.f})
  with pytest.raises(ValueError, match="no 'representation' signature"):
    features_lib.load_module(str(tmp_path / "plain"))


def test_unknown_probe_fails_before_any_work(tiny_export, tmp_path):
  _, path = tiny_export
  gin.parse_config(['source.name = "random"'])
  with pytest.raises(ValueError, match="valid choices"):
    evaluate.evaluate(path, str(tmp_path), gin_config.configured_source(),
                      probes=["svm"])
  assert not os.path.exists(tmp_path / "features")


# A random 32 crop of the image resized to 40: the release's augmentation, small.
CROP_PREPROCESS = "resize_small(40)|crop(32)|value_range(-1, 1)"


def _recording_featurizer(monkeypatch, seen):
  """Makes the on-the-fly probe record every batch of images it featurizes."""
  original = linear_on_images._featurizer  # pylint: disable=protected-access

  def featurizer(context):
    featurize = original(context)

    def record(images):
      tf.py_function(lambda x: seen.append(x.numpy()) or 0, [images], tf.int32)
      return featurize(images)
    return record
  monkeypatch.setattr(linear_on_images, "_featurizer", featurizer)


def test_linear_sgd_images_sees_new_crops_every_epoch(tiny_export,
                                                      monkeypatch):
  _, path = tiny_export
  module, _ = features_lib.load_module(path)
  frozen = [v.numpy() for v in module.variables]
  source = sources.RandomSource(image_shape=(SIZE, SIZE, 3), num_examples=16,
                                num_classes=4)
  seen = []
  _recording_featurizer(monkeypatch, seen)
  context = inputs.ImageProbeContext(
      module=module, source=source, preprocess=CROP_PREPROCESS,
      end_point="block4", train_splits=("train",), eval_split="test",
      eval_batch_size=6)
  result = linear_on_images.train_linear_sgd_on_images(
      context, 4, epochs=2, decay_epochs=[1], batch_size=8)
  assert len(result.history["val_top1"]) == 2
  # 0.1 x 8 / 256, decayed once; only the linear layer is trained.
  assert float(result.model.optimizer.learning_rate) == pytest.approx(3.125e-4)
  assert [v.name for v in result.model.trainable_variables] == ["kernel", "bias"]
  for before, after in zip(frozen, module.variables):
    np.testing.assert_array_equal(before, after.numpy())
  # Training batches hold 8 images (2 steps an epoch), evaluation ones 6, 6, 4.
  train = [b for b in seen if len(b) == 8]
  evaluation = np.concatenate([b for b in seen if len(b) != 8][1:])
  assert len(train) == 4 and len(evaluation) == 2 * 16
  first, second = np.concatenate(train[:2]), np.concatenate(train[2:])
  repeated = sum(any(np.array_equal(x, y) for y in first) for x in second)
  assert repeated <= 3, "the second epoch must see other crops"
  # Evaluation: the same central crops every epoch.
  eval_fn = data.get_preprocess_fn(CROP_PREPROCESS, training=False)
  central = np.stack([eval_fn(ex)["image"].numpy()
                      for ex in source.as_dataset("test")])
  np.testing.assert_array_equal(evaluation[:16], central)
  np.testing.assert_array_equal(evaluation[16:], central)


def test_split_examples_concatenate_truncate_and_subset():
  source = _source(num_examples=10)
  labels = lambda split: [ex["label"] for ex in
                          source.as_dataset(split).as_numpy_iterator()]
  examples = inputs.SplitExamples(source, ("train", "val"),
                                  max_examples=4, index=np.array([1, 5]))
  assert examples.num_examples() == 2
  kept = [ex["label"] for ex in examples.as_dataset().as_numpy_iterator()]
  assert kept == [labels("train")[1], labels("val")[1]]
  every = inputs.SplitExamples(source, ("train", "val"))
  assert every.num_examples() == 20
  assert sorted(ex["label"] for ex in every.as_dataset(
      shuffle_files=True, seed=0).as_numpy_iterator()) == sorted(
          labels("train") + labels("val"))


def test_evaluate_linear_sgd_images_end_to_end(tiny_export, tmp_path):
  _, path = tiny_export
  workdir = str(tmp_path / "eval")
  rows = evaluate.main([
      "--hub_module", path, "--workdir", workdir,
      "--gin_param", 'source.name = "random"',
      "--gin_param", "source.num_examples = 40",
      "--gin_param", "source.num_classes = 4",
      "--gin_param", "source.image_shape = (32, 32, 3)",
      "--gin_param", f'evaluate.preprocess = "{CROP_PREPROCESS}"',
      "--gin_param", 'evaluate.probes = ["linear_sgd_images"]',
      "--gin_param", 'evaluate.end_points = ["pre_logits"]',
      "--gin_param", "evaluate.max_examples = 12",
      "--gin_param", "evaluate.label_fractions = [0.5]",
      "--gin_param", "train_linear_sgd_on_images.epochs = 2",
      "--gin_param", "train_linear_sgd_on_images.decay_epochs = [1]",
      "--gin_param", "train_linear_sgd_on_images.batch_size = 4"])
  (row,) = rows
  assert (row["probe"], row["label_fraction"]) == ("linear_sgd_images", 0.5)
  assert row["epochs"] == 2 and len(row["test_top1_per_epoch"]) == 2
  assert 0 <= row["top1"] <= row["top5"] <= 1
  assert row["num_features"] == 512  # pre_logits at k=1
  assert (row["protocol"], row["reported_split"]) == ("table2", "test")
  # Only probes on images: no feature cache.
  assert not os.path.exists(os.path.join(workdir, "features"))
