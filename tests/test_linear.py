"""Tests for the paper's linear protocol: the L2 grid chosen on val."""
import numpy as np
import pytest

from tfrevisit.evaluation import logistic_regression
from tfrevisit.evaluation import linear
from linear_test_data import gaussian_splits
from linear_test_data import relu_splits
from linear_test_data import scaled
from linear_test_data import protocol_splits  # pylint: disable=unused-import


def test_select_l2_picks_best_validation_value():
  # Few examples in many dimensions: weak L2 overfits, strong L2 underfits.
  train, val, test = gaussian_splits((200, 1000, 1000), 100, 3, seed=2,
                                     mean_scale=0.2)
  trainval = tuple(np.concatenate(pair) for pair in zip(train, val))
  grid = (1e-3, 1.0, 100.0)
  # The grid is relative to the train features' mean square.
  unit = np.mean(np.square(train[0], dtype=np.float64))
  val_top1 = [
      logistic_regression.top_k_accuracy(
          logistic_regression.fit_logistic_regression(
              *train, 3, l2 * unit).predict(val[0]), val[1], 1) for l2 in grid
  ]
  assert np.argmax(val_top1) == 1 and val_top1[1] > max(val_top1[::2]) + 0.02
  row = linear.select_l2_and_fit(train, val, trainval, test, 3, l2_grid=grid)
  assert row["l2"] == 1.0 and row["l2_grid"] == [100.0, 1.0, 1e-3]
  assert row["l2_absolute"] == pytest.approx(unit, rel=1e-6)
  assert row["val_top1"] == pytest.approx(val_top1[1], abs=0.01)
  final = logistic_regression.fit_logistic_regression(*trainval, 3, unit)
  assert row["top1"] == pytest.approx(
      np.mean(final.predict(test[0]).argmax(1) == test[1]), abs=0.01)
  assert row["top5"] == 1.0
  assert row["converged"] and row["iterations"] > 0 and row["wall_time_s"] > 0


def test_protocol_batched_and_sequential_sweeps_agree():
  train, val = gaussian_splits((400, 400), 30, 3, seed=5, mean_scale=0.3)
  trainval = tuple(np.concatenate(pair) for pair in zip(train, val))
  results = [
      linear.linear_protocol(train, val, trainval, 3, (1e-3, 1.0, 1e-1, 1e-2),
                             grid_batch_size=batch, tolerance=1e-7)
      for batch in (None, 1, 3)]
  for result in results:
    assert result.l2_grid == (1.0, 1e-1, 1e-2, 1e-3)
    assert result.best == results[0].best
    assert result.val_top1 == results[0].val_top1
    np.testing.assert_allclose(result.final.loss, results[0].final.loss,
                               rtol=1e-7)
    for fit, reference in zip(result.grid_fits, results[0].grid_fits):
      np.testing.assert_allclose(fit.loss, reference.loss, rtol=1e-7)
  # Each batch after the first is warm-started: its fits' paths include the
  # iterations of the fit they started from.
  sequential = results[1].grid_fits
  for previous, fit in zip(sequential, sequential[1:]):
    assert fit.path_iterations == previous.path_iterations + fit.iterations


def test_protocol_gives_the_same_answer_at_any_feature_scale(protocol_splits):
  rows = {scale: linear.select_l2_and_fit(
      *(scaled(split, scale) for split in protocol_splits), 10)
          for scale in (1e2, 1.0, 1e-2, 1e-4, 1e-6)}
  reference = rows[1.0]
  assert reference["top1"] > 0.5  # well above chance (0.1)
  for scale, row in rows.items():
    assert row["l2"] == reference["l2"], scale
    assert abs(row["top1"] - reference["top1"]) <= 0.005, scale
    assert row["converged"] and not row["stopped_early"], scale
    # The absolute L2 scales as the features' mean square, a^2.
    assert row["l2_absolute"] == pytest.approx(
        reference["l2_absolute"] * scale ** 2, rel=1e-4)


def test_grid_with_its_best_value_at_an_edge_extends(protocol_splits):
  train, val, trainval, test = protocol_splits
  # Too strong for these low-dimensional features: the grid grows by decades
  # towards weaker L2 until val stops improving.
  row = linear.select_l2_and_fit(train, val, trainval, test, 10,
                                 l2_grid=[1e-2, 1e-3])
  grid = row["l2_grid"]
  assert grid == [10.0 ** -k for k in range(2, len(grid) + 2)]
  assert len(grid) >= 4 and row["l2"] <= 1e-4 and not row["l2_at_edge"]
  # Capped at one extra decade: the choice stays at the edge, and says so.
  capped = linear.select_l2_and_fit(train, val, trainval, test, 10,
                                    l2_grid=[1e-2, 1e-3], max_extra_decades=1)
  assert capped["l2_grid"] == [1e-2, 1e-3, 1e-4]
  assert capped["l2"] == 1e-4 and capped["l2_at_edge"]
  assert any("edge" in problem for problem in linear.fit_problems(capped))
  # A single value is a fixed L2, not a selection: never extended.
  fixed = linear.select_l2_and_fit(train, val, trainval, test, 10,
                                   l2_grid=[1e-2])
  assert fixed["l2_grid"] == [1e-2] and not fixed["l2_at_edge"]


def test_grid_extends_towards_stronger_l2():
  # Few examples in many dimensions: weak L2 overfits.
  train, val, test = gaussian_splits((200, 1000, 1000), 100, 3, seed=2,
                                     mean_scale=0.2)
  trainval = tuple(np.concatenate(pair) for pair in zip(train, val))
  row = linear.select_l2_and_fit(train, val, trainval, test, 3,
                                 l2_grid=[1e-1, 1e-2])
  assert row["l2_grid"][0] >= 1.0 and row["l2_grid"][-2:] == [1e-1, 1e-2]
  assert row["l2"] in (1.0, 1e-1) and not row["l2_at_edge"]


def test_a_fit_without_signal_stops_early_and_says_so():
  # Identical rows with balanced labels: W = 0 is the optimum, and the
  # gradient there is exactly zero.
  features = np.ones([40, 5], np.float32)
  labels = np.arange(40) % 4
  split = (features, labels)
  row = linear.select_l2_and_fit(split, split, split, split, 4,
                                 l2_grid=[1e-3], max_iterations=50)
  assert row["stopped_early"] and row["iterations"] == 0
  assert not row["hit_max_iterations"]
  assert any("fewer than 3 iterations" in problem
             for problem in linear.fit_problems(row))
  capped = linear.select_l2_and_fit(*relu_splits((300, 100, 100, 100), 48, 10,
                                                 seed=7), 10,
                                    l2_grid=[1e-6], max_iterations=2)
  assert capped["hit_max_iterations"] and not capped["converged"]
  assert any("max_iterations" in problem
             for problem in linear.fit_problems(capped))
  assert linear.fit_problems({"top1": 0.5}) == []
