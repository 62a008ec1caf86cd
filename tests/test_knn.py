"""Tests for the weighted kNN probe against scikit-learn and brute force."""
import numpy as np
import pytest
from sklearn import neighbors

from tfrevisit.evaluation import features as features_lib
from tfrevisit.evaluation import knn
from tfrevisit.evaluation import probes
from tfrevisit.evaluation.inputs import ProbeInputs

NUM_CLASSES = 6
TEMPERATURE = 0.07


@pytest.fixture(name="data", scope="module")
def _data():
  """Clustered features: class means plus noise, 90 train and 25 test rows."""
  rng = np.random.default_rng(0)
  means = rng.normal(size=(NUM_CLASSES, 8))
  train_y, test_y = rng.integers(0, NUM_CLASSES, 90), rng.integers(0, NUM_CLASSES, 25)
  train_x = means[train_y] + 1.5 * rng.normal(size=(90, 8))
  test_x = means[test_y] + 1.5 * rng.normal(size=(25, 8))
  return (train_x.astype(np.float32), train_y), (test_x.astype(np.float32), test_y)


def _brute_force_votes(train_x, train_y, test_x, k):
  """[M, C] temperature-weighted votes of the k most cosine-similar rows."""
  unit = lambda x: x / np.linalg.norm(x, axis=1, keepdims=True)
  similarities = unit(test_x.astype(np.float64)) @ unit(train_x.astype(np.float64)).T
  nearest = np.argsort(-similarities, axis=1)[:, :k]
  votes = np.zeros([len(test_x), NUM_CLASSES])
  for row, columns in enumerate(nearest):
    for column in columns:
      votes[row, train_y[column]] += np.exp(similarities[row, column] / TEMPERATURE)
  return votes, nearest


def test_chunked_neighbours_match_brute_force(data):
  (train_x, train_y), (test_x, _) = data
  # Train rows as stacked blocks, read in chunks of 7 against test chunks of 4.
  stacked = features_lib.StackedRows([train_x[:40], train_x[40:]])
  similarities, indices = knn.nearest_neighbours(stacked, test_x, 10,
                                                 train_chunk=7, test_chunk=4)
  _, nearest = _brute_force_votes(train_x, train_y, test_x, 10)
  np.testing.assert_array_equal(indices, nearest)
  unit = lambda x: x / np.linalg.norm(x, axis=1, keepdims=True)
  expected = np.take_along_axis(unit(test_x) @ unit(train_x).T, nearest, 1)
  np.testing.assert_allclose(similarities, expected, atol=1e-6)


@pytest.mark.parametrize("k", [1, 5, 20])
def test_knn_matches_scikit_learn(data, k):
  (train_x, train_y), (test_x, test_y) = data
  votes = knn.class_votes(*_neighbours(train_x, train_y, test_x, k),
                          NUM_CLASSES, TEMPERATURE)
  classifier = neighbors.KNeighborsClassifier(
      n_neighbors=k, metric="cosine", algorithm="brute",
      weights=lambda d: np.exp((1 - d) / TEMPERATURE))
  classifier.fit(train_x.astype(np.float64), train_y)
  test_x = test_x.astype(np.float64)
  np.testing.assert_array_equal(votes.argmax(1), classifier.predict(test_x))
  np.testing.assert_allclose(votes / votes.sum(1, keepdims=True),
                             classifier.predict_proba(test_x), atol=1e-5)
  assert knn.top_k_accuracy(votes, test_y, 1) == classifier.score(test_x, test_y)


def _neighbours(train_x, train_y, test_x, k):
  similarities, indices = knn.nearest_neighbours(train_x, test_x, k,
                                                 train_chunk=16, test_chunk=8)
  return similarities, train_y[indices]


def test_registered_probe_reports_each_k(data):
  (train_x, train_y), (test_x, test_y) = data
  splits = {"trainval": (features_lib.StackedRows([train_x]), train_y),
            "test": (test_x, test_y)}
  row = probes.PROBES.get("knn")(ProbeInputs(NUM_CLASSES, features=splits))
  assert row["ks"] == [20, 90]  # 200 clipped to the 90 training rows
  for index, k in enumerate(row["ks"]):
    votes, _ = _brute_force_votes(train_x, train_y, test_x, k)
    ranked = np.argsort(-votes, axis=1, kind="stable")
    assert row["top1_per_k"][index] == np.mean(ranked[:, 0] == test_y)
    assert row["top5_per_k"][index] == np.mean(
        np.any(ranked[:, :5] == test_y[:, None], axis=1))
  assert (row["top1"], row["top5"]) == (row["top1_per_k"][0], row["top5_per_k"][0])
  assert row["top1"] > 0.5  # the clusters are learnable


def test_k_larger_than_the_training_rows_is_an_error(data):
  (train_x, _), (test_x, _) = data
  with pytest.raises(ValueError, match="k must be in"):
    knn.nearest_neighbours(train_x, test_x, 91)
