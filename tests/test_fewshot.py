"""Tests for the few-shot ridge-regression probe against a NumPy closed form."""
import numpy as np
import pytest

from tfrevisit.evaluation import features as features_lib
from tfrevisit.evaluation import fewshot
from tfrevisit.evaluation import probes
from tfrevisit.evaluation.inputs import ProbeInputs

NUM_CLASSES = 6
DIM = 8


@pytest.fixture(name="data", scope="module")
def _data():
  """Clustered features: 20 training rows per class, 40 test rows."""
  rng = np.random.default_rng(0)
  means = 3 * rng.normal(size=(NUM_CLASSES, DIM))
  train_y = np.repeat(np.arange(NUM_CLASSES), 20)
  test_y = rng.integers(0, NUM_CLASSES, 40)
  train_x = means[train_y] + 2 * rng.normal(size=(len(train_y), DIM)) + 5
  test_x = means[test_y] + 2 * rng.normal(size=(40, DIM)) + 5
  return (train_x.astype(np.float32), train_y), (test_x.astype(np.float32), test_y)


def _reference_scores(train_x, train_y, test_x, l2_reg):
  """Ridge as least squares on [X; sqrt(l2) I] w = [Y; 0], X standardised with
  the training rows' statistics plus a bias column of 100."""
  train_x, test_x = train_x.astype(np.float64), test_x.astype(np.float64)
  mean, std = train_x.mean(0), train_x.std(0) + 1e-5
  design = lambda x: np.hstack([(x - mean) / std, np.full([len(x), 1], 100.0)])
  x = design(train_x)
  y = np.where(train_y[:, None] == np.arange(NUM_CLASSES), 1.0, -1.0)
  w = np.linalg.lstsq(np.vstack([x, np.sqrt(l2_reg) * np.eye(DIM + 1)]),
                      np.vstack([y, np.zeros([DIM + 1, NUM_CLASSES])]),
                      rcond=None)[0]
  return design(test_x) @ w


@pytest.mark.parametrize("shots", [1, 5])  # N < D + 1 (dual), N >= D + 1 (primal)
def test_ridge_classifier_matches_least_squares(data, shots):
  (train_x, train_y), (test_x, _) = data
  index = np.concatenate([np.flatnonzero(train_y == c)[:shots]
                          for c in range(NUM_CLASSES)])
  classifier = fewshot.fit_ridge_classifier(train_x[index], train_y[index],
                                            NUM_CLASSES, l2_reg=0.5)
  np.testing.assert_allclose(
      test_x @ classifier.weights + classifier.bias,
      _reference_scores(train_x[index], train_y[index], test_x, 0.5),
      rtol=1e-7, atol=1e-7)


def test_draws_are_balanced_and_seeded():
  labels = np.repeat(np.arange(3), [4, 6, 5])
  first = fewshot.draw_shots(labels, 4, 3, np.random.default_rng([0, 4, 1]))
  again = fewshot.draw_shots(labels, 4, 3, np.random.default_rng([0, 4, 1]))
  np.testing.assert_array_equal(first, again)
  assert np.bincount(labels[first]).tolist() == [4, 4, 4]
  assert len(np.unique(first)) == 12
  with pytest.raises(ValueError, match="fewer than 5 shots"):
    fewshot.draw_shots(labels, 5, 3, np.random.default_rng(0))


def test_registered_probe_reports_mean_and_std_over_draws(data):
  (train_x, train_y), (test_x, test_y) = data
  splits = {"trainval": (features_lib.StackedRows([train_x]), train_y),
            "test": (features_lib.StackedRows([test_x[:15], test_x[15:]]), test_y)}
  assert probes.PROBES.get("fewshot") is fewshot.fewshot_probe
  row = fewshot.fewshot_probe(ProbeInputs(NUM_CLASSES, features=splits),
                              shots=(2, 10), num_draws=3, l2_reg=4.0,
                              chunk_size=7)
  assert row["shots"] == [2, 10]
  for position, shots in enumerate((2, 10)):
    top1, top5 = [], []
    for draw in range(3):
      index = fewshot.draw_shots(train_y, shots, NUM_CLASSES,
                                 np.random.default_rng([0, shots, draw]))
      scores = _reference_scores(train_x[index], train_y[index], test_x, 4.0)
      ranked = np.argsort(-scores, axis=1)
      top1.append(np.mean(ranked[:, 0] == test_y))
      top5.append(np.mean(np.any(ranked[:, :5] == test_y[:, None], axis=1)))
    assert row["top1_per_shot"][position] == pytest.approx(np.mean(top1))
    assert row["top1_std_per_shot"][position] == pytest.approx(np.std(top1))
    assert row["top5_per_shot"][position] == pytest.approx(np.mean(top5))
  assert (row["top1"], row["top1_std"]) == (row["top1_per_shot"][0],
                                           row["top1_std_per_shot"][0])
  assert row["top1_per_shot"][1] > 0.5  # ten shots: far above chance (1/6)
