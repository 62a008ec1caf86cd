"""Tests for the L-BFGS linear probe against NumPy, SciPy, tfp, scikit-learn."""
import gzip
import os

import numpy as np
import pytest
import scipy.optimize
import scipy.special
from sklearn import linear_model
import tensorflow as tf
import tensorflow_probability as tfp
import threadpoolctl

from tfrevisit.evaluation import linear

FASHION_MNIST = "/usr/share/datasets/fashion-mnist"


def gaussian_splits(sizes, dim, num_classes, seed, mean_scale=1.0):
  """Splits of overlapping Gaussian classes sharing the class means.

  Returns:
    One (features [N, D] float32, labels [N]) pair per size.
  """
  rng = np.random.default_rng(seed)
  means = mean_scale * rng.normal(size=(num_classes, dim))

  def split(size):
    labels = rng.integers(0, num_classes, size)
    features = means[labels] + 2.0 * rng.normal(size=(size, dim))
    return features.astype(np.float32), labels
  return [split(size) for size in sizes]


def numpy_objective_gradient(weights, bias, features, labels, l2):
  """Gradient of mean cross-entropy + l2/2 ||W||^2, in float64."""
  features = features.astype(np.float64)
  logits = features @ weights + bias
  probs = np.exp(logits - logits.max(1, keepdims=True))
  probs /= probs.sum(1, keepdims=True)
  residual = probs - np.eye(weights.shape[1])[labels]
  return (features.T @ residual / len(labels) + l2 * weights,
          residual.mean(0))


def read_idx(path):
  """An IDX file (the MNIST format): big-endian dims, then uint8 data."""
  with gzip.open(path) as f:
    data = f.read()
  num_dims = data[3]
  dims = np.frombuffer(data, ">u4", num_dims, offset=4)
  return np.frombuffer(data, np.uint8, offset=4 + 4 * num_dims).reshape(dims)


def fashion_mnist(split):
  prefix = {"train": "train", "test": "t10k"}[split]
  images = read_idx(os.path.join(FASHION_MNIST,
                                 f"{prefix}-images-idx3-ubyte.gz"))
  labels = read_idx(os.path.join(FASHION_MNIST,
                                 f"{prefix}-labels-idx1-ubyte.gz"))
  return images.reshape(len(images), -1).astype(np.float32) / 255, labels


@pytest.fixture(scope="module")
def splits():
  return gaussian_splits((1500, 3000), 20, 4, seed=0)


@pytest.fixture(scope="module")
def problem(splits):
  return splits[0]


def test_matches_scikit_learn(splits):
  (features, labels), (test_features, test_labels) = splits
  l2 = 1e-2
  ours = linear.fit_logistic_regression(features, labels, 4, l2,
                                        tolerance=1e-6)
  with threadpoolctl.threadpool_limits(1):
    theirs = linear_model.LogisticRegression(
        C=1 / (l2 * len(labels)), tol=1e-8, max_iter=1000).fit(
            features.astype(np.float64), labels)
  assert ours.converged
  ours_top1 = linear.top_k_accuracy(ours.predict(test_features), test_labels, 1)
  theirs_top1 = theirs.score(test_features, test_labels)
  assert abs(ours_top1 - theirs_top1) < 0.005
  np.testing.assert_allclose(ours.weights, theirs.coef_.T, atol=1e-4)
  np.testing.assert_allclose(ours.bias, theirs.intercept_, atol=1e-4)


@pytest.mark.parametrize("precondition", ["none", "diagonal", "full"])
def test_solution_is_a_stationary_point(problem, precondition):
  features, labels = problem
  l2, tolerance = 1e-3, 1e-5
  fit = linear.fit_logistic_regression(features, labels, 4, l2,
                                       tolerance=tolerance,
                                       precondition=precondition)
  weight_gradient, bias_gradient = numpy_objective_gradient(
      fit.weights, fit.bias, features, labels, l2)
  gradient = np.concatenate([weight_gradient, bias_gradient[None]])
  # L-BFGS stops on P^-1 g, where P P^T = M / C + l2 (bias unpenalised),
  # M the second moment of [x, 1] (all 1500 rows are sampled), or its
  # diagonal.
  augmented = np.concatenate([features, np.ones([len(features), 1])], 1)
  hessian = (augmented.T @ augmented / len(features) / 4
             + np.diag([l2] * features.shape[1] + [0.0]))
  if precondition == "full":
    gradient = np.linalg.solve(np.linalg.cholesky(hessian), gradient)
  elif precondition == "diagonal":
    gradient = gradient / np.sqrt(np.diag(hessian))[:, None]
  assert fit.converged
  assert np.abs(gradient).max() < tolerance


def test_preconditioning_changes_the_path_not_the_optimum(problem):
  features, labels = problem
  # Ill-conditioned like network features: large means, decaying scales.
  features = (features + 3.0) * np.geomspace(1.0, 0.01, features.shape[1])
  fits = [linear.fit_logistic_regression(features, labels, 4, 1e-3,
                                         tolerance=1e-7,
                                         precondition=precondition)
          for precondition in ("none", "full")]
  assert all(fit.converged for fit in fits)
  assert fits[1].iterations < fits[0].iterations / 3
  np.testing.assert_allclose(fits[1].loss, fits[0].loss, rtol=1e-7)
  np.testing.assert_allclose(fits[1].weights, fits[0].weights, atol=1e-3)


def test_an_indefinite_second_moment_still_preconditions_to_the_optimum(problem):
  features, labels = problem
  # A second moment summed in float32 can have slightly negative eigenvalues:
  # here -0.1, enough to make M / C + l2 I indefinite at l2 = 1e-2.
  values, vectors = np.linalg.eigh(linear.feature_second_moment(features))
  values[0] = -0.1
  moment = (vectors * values) @ vectors.T
  hessian = moment / 4 + 1e-2 * np.diag([1.0] * features.shape[1] + [0.0])
  with pytest.raises(np.linalg.LinAlgError):
    np.linalg.cholesky(hessian + 1e-6 * np.trace(hessian) / len(hessian)
                       * np.eye(len(hessian)))
  assert np.all(np.isfinite(linear.preconditioner(moment, 4, 1e-2).numpy()))
  fits = [linear.fit_logistic_regression(features, labels, 4, 1e-2,
                                         tolerance=1e-7, second_moment=moment,
                                         precondition=precondition)
          for precondition in ("none", "full")]
  assert all(fit.converged for fit in fits)
  np.testing.assert_allclose(fits[1].loss, fits[0].loss, rtol=1e-7)


def test_preconditioning_is_diagonal_by_default_with_fewer_examples_than_features():
  (features, labels), = gaussian_splits((30,), 50, 3, seed=3)
  default = linear.fit_logistic_regression(features, labels, 3, 1e-2)
  diagonal = linear.fit_logistic_regression(features, labels, 3, 1e-2,
                                            precondition="diagonal")
  full = linear.fit_logistic_regression(features, labels, 3, 1e-2,
                                        precondition="full")
  assert default.evaluations == diagonal.evaluations
  np.testing.assert_array_equal(default.weights, diagonal.weights)
  assert full.evaluations != diagonal.evaluations


def test_second_moment_and_preconditioner_against_numpy(problem):
  features, _ = problem
  augmented = np.concatenate([features, np.ones([len(features), 1])], 1)
  np.testing.assert_allclose(
      linear.feature_second_moment(features),
      augmented.T @ augmented / len(features), rtol=1e-5, atol=1e-6)
  # Sampled: rows 0, 499, 999, 1499 of 1500.
  sampled = linear.feature_second_moment(features, max_rows=4)
  rows = augmented[[0, 499, 999, 1499]]
  np.testing.assert_allclose(sampled, rows.T @ rows / 4, rtol=1e-5, atol=1e-6)
  factor = linear.preconditioner(sampled, 4, l2=0.5).numpy()
  expected = sampled / 4 + np.diag([0.5] * features.shape[1] + [0.0])
  np.testing.assert_allclose(factor @ factor.T, expected, rtol=1e-5)
  assert np.all(np.triu(factor, 1) == 0)


def test_chunked_memory_mapped_matches_in_memory(problem, tmp_path):
  features, labels = problem
  mapped = np.memmap(tmp_path / "features.f32", np.float32, "w+",
                     shape=features.shape)
  mapped[:] = features
  mapped.flush()
  mapped = np.memmap(tmp_path / "features.f32", np.float32, "r",
                     shape=features.shape)
  whole = linear.fit_logistic_regression(features, labels, 4, 1e-2,
                                         tolerance=1e-6)
  chunked = linear.fit_logistic_regression(mapped, labels, 4, 1e-2,
                                           tolerance=1e-6, chunk_size=400)
  assert chunked.converged
  np.testing.assert_allclose(chunked.weights, whole.weights, atol=1e-4)
  np.testing.assert_allclose(chunked.bias, whole.bias, atol=1e-4)
  np.testing.assert_allclose(chunked.loss, whole.loss, rtol=1e-7)


def test_warm_start_from_solution_stops_at_once(problem):
  features, labels = problem
  first = linear.fit_logistic_regression(features, labels, 4, 1e-2)
  again = linear.fit_logistic_regression(features, labels, 4, 1e-2,
                                         initial=first)
  assert again.iterations <= 1
  np.testing.assert_allclose(again.weights, first.weights, atol=1e-5)


def test_predict_is_affine(problem):
  features, labels = problem
  fit = linear.fit_logistic_regression(features, labels, 4, 1e-2)
  np.testing.assert_allclose(
      fit.predict(features[:5]),
      features[:5].astype(np.float64) @ fit.weights + fit.bias, rtol=1e-5)


def test_top_k_accuracy_against_sorting():
  rng = np.random.default_rng(1)
  logits = rng.normal(size=(200, 7))
  labels = rng.integers(0, 7, 200)
  ranks = (logits > logits[np.arange(200), labels][:, None]).sum(1)
  for k in (1, 3, 5):
    assert linear.top_k_accuracy(logits, labels, k) == np.mean(ranks < k)
  assert linear.top_k_accuracy(logits[:, :3], labels % 3, 5) == 1.0


def test_select_l2_picks_best_validation_value():
  # Few examples in many dimensions: weak L2 overfits, strong L2 underfits.
  train, val, test = gaussian_splits((200, 1000, 1000), 100, 3, seed=2,
                                     mean_scale=0.2)
  trainval = tuple(np.concatenate(pair) for pair in zip(train, val))
  grid = (1e-3, 1.0, 100.0)
  # The grid is relative to the train features' mean square.
  unit = np.mean(np.square(train[0], dtype=np.float64))
  val_top1 = [
      linear.top_k_accuracy(
          linear.fit_logistic_regression(*train, 3, l2 * unit).predict(val[0]),
          val[1], 1) for l2 in grid]
  assert np.argmax(val_top1) == 1 and val_top1[1] > max(val_top1[::2]) + 0.02
  row = linear.select_l2_and_fit(train, val, trainval, test, 3, l2_grid=grid)
  assert row["l2"] == 1.0 and row["l2_grid"] == [100.0, 1.0, 1e-3]
  assert row["l2_absolute"] == pytest.approx(unit, rel=1e-6)
  assert row["val_top1"] == pytest.approx(val_top1[1], abs=0.01)
  final = linear.fit_logistic_regression(*trainval, 3, unit)
  assert row["top1"] == pytest.approx(
      np.mean(final.predict(test[0]).argmax(1) == test[1]), abs=0.01)
  assert row["top5"] == 1.0
  assert row["converged"] and row["iterations"] > 0 and row["wall_time_s"] > 0


def test_bad_labels_and_shapes_raise(problem):
  features, labels = problem
  with pytest.raises(ValueError, match="num_classes"):
    linear.fit_logistic_regression(features, labels, 3, 1e-2)
  with pytest.raises(ValueError, match="Flatten or pool"):
    linear.fit_logistic_regression(features[:, :, None], labels, 4, 1e-2)


def test_fashion_mnist_subset_matches_scikit_learn():
  train_features, train_labels = fashion_mnist("train")
  test_features, test_labels = fashion_mnist("test")
  train_features, train_labels = train_features[:3000], train_labels[:3000]
  l2 = 1e-2
  ours = linear.fit_logistic_regression(train_features, train_labels, 10, l2)
  # Multi-threaded BLAS stalls badly on a busy 2-core machine.
  with threadpoolctl.threadpool_limits(1):
    theirs = linear_model.LogisticRegression(
        C=1 / (l2 * len(train_labels)), max_iter=1000).fit(
            train_features.astype(np.float64), train_labels)
  ours_top1 = linear.top_k_accuracy(ours.predict(test_features), test_labels, 1)
  assert ours_top1 > 0.78
  assert abs(ours_top1 - theirs.score(test_features, test_labels)) < 0.005


@pytest.mark.slow
def test_fashion_mnist_linear_probe_reaches_known_accuracy():
  """Logistic regression on raw pixels: about 84% (Fashion-MNIST benchmarks)."""
  train_features, train_labels = fashion_mnist("train")
  test_features, test_labels = fashion_mnist("test")
  fit = linear.fit_logistic_regression(train_features, train_labels, 10, 1e-4)
  top1 = linear.top_k_accuracy(fit.predict(test_features), test_labels, 1)
  assert 0.835 < top1 < 0.86


def scipy_fit(features, labels, num_classes, l2):
  """Independent reference: SciPy's L-BFGS-B on the float64 objective.

  Returns:
    (weights [D, C], bias [C], objective value).
  """
  features = features.astype(np.float64)
  dim = features.shape[1]
  one_hot = np.eye(num_classes)[labels]

  def objective(flat):
    weights = flat[:dim * num_classes].reshape(dim, num_classes)
    bias = flat[dim * num_classes:]
    logits = features @ weights + bias
    log_normaliser = scipy.special.logsumexp(logits, axis=1)
    value = (np.mean(log_normaliser - np.sum(logits * one_hot, 1))
             + 0.5 * l2 * np.sum(np.square(weights)))
    residual = np.exp(logits - log_normaliser[:, None]) - one_hot
    gradient = np.concatenate([
        (features.T @ residual / len(labels) + l2 * weights).ravel(),
        residual.mean(0)])
    return value, gradient

  result = scipy.optimize.minimize(
      objective, np.zeros((dim + 1) * num_classes), jac=True,
      method="L-BFGS-B",
      options=dict(maxiter=10_000, gtol=1e-10, ftol=1e-15))
  return (result.x[:dim * num_classes].reshape(dim, num_classes),
          result.x[dim * num_classes:], result.fun)


GRID = (1.0, 1e-1, 1e-2, 1e-3)


@pytest.fixture(scope="module")
def grid_problem():
  (features, labels), = gaussian_splits((600,), 8, 3, seed=4)
  # Ill-conditioned: large means, decaying scales.
  return (features + 2.0) * np.geomspace(1.0, 0.05, 8), labels


@pytest.mark.parametrize("precondition", ["none", "diagonal", "full"])
def test_grid_fit_matches_separate_fits_and_scipy(grid_problem, precondition):
  features, labels = grid_problem
  grid = linear.fit_logistic_regression_grid(
      features, labels, 3, GRID, tolerance=1e-6, precondition=precondition)
  for l2, fit in zip(GRID, grid):
    separate = linear.fit_logistic_regression(
        features, labels, 3, l2, tolerance=1e-6, precondition=precondition)
    weights, bias, value = scipy_fit(features, labels, 3, l2)
    assert fit.converged
    np.testing.assert_allclose(fit.loss, value, rtol=1e-7)
    np.testing.assert_allclose(fit.weights, weights, atol=2e-4)
    np.testing.assert_allclose(fit.bias, bias, atol=2e-4)
    np.testing.assert_allclose(fit.weights, separate.weights, atol=2e-4)
    np.testing.assert_allclose(fit.loss, separate.loss, rtol=1e-7)


def test_grid_problems_stop_independently(grid_problem):
  features, labels = grid_problem
  solved = linear.fit_logistic_regression(features, labels, 3, 1e-2,
                                          tolerance=1e-6)
  # The first problem starts at its optimum, the second far from its own.
  grid = linear.fit_logistic_regression_grid(
      features, labels, 3, [1e-2, 1e-3], tolerance=1e-6,
      initial=[solved, solved])
  _, _, value = scipy_fit(features, labels, 3, 1e-3)
  np.testing.assert_array_equal(grid[0].weights, solved.weights)
  np.testing.assert_array_equal(grid[0].bias, solved.bias)
  assert grid[1].converged and grid[1].iterations > 1
  np.testing.assert_allclose(grid[1].loss, value, rtol=1e-7)


def test_batched_preconditioner_stacks_the_single_ones(problem):
  moment = linear.feature_second_moment(problem[0])
  stacked = linear.preconditioner(moment, 4, np.array(GRID)).numpy()
  for l2, factor in zip(GRID, stacked):
    np.testing.assert_allclose(
        factor, linear.preconditioner(moment, 4, l2).numpy(), rtol=1e-12)


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


def test_own_lbfgs_reaches_tfp_lbfgs_optimum(grid_problem):
  features, labels = grid_problem
  l2 = 1e-2
  features64 = tf.constant(features, tf.float64)
  one_hot = tf.one_hot(labels, 3, dtype=tf.float64)

  def value_and_gradients(flat):
    return tfp.math.value_and_gradient(
        lambda flat: tf.reduce_mean(tf.nn.softmax_cross_entropy_with_logits(
            one_hot, features64 @ tf.reshape(flat[:24], [8, 3]) + flat[24:]))
        + 0.5 * l2 * tf.reduce_sum(tf.square(flat[:24])), flat)

  theirs = tfp.optimizer.lbfgs_minimize(
      value_and_gradients, tf.zeros([27], tf.float64), tolerance=1e-10,
      max_iterations=2000)
  ours = linear.fit_logistic_regression(features, labels, 3, l2,
                                        tolerance=1e-6)
  assert theirs.converged and ours.converged
  np.testing.assert_allclose(ours.loss, theirs.objective_value, rtol=1e-7)
  np.testing.assert_allclose(ours.weights,
                             theirs.position[:24].numpy().reshape(8, 3),
                             atol=2e-4)
  np.testing.assert_allclose(ours.bias, theirs.position[24:], atol=2e-4)


def relu_splits(sizes, dim, num_classes, seed):
  """Splits of post-ReLU-like features: nonnegative, uneven scales, means."""
  rng = np.random.default_rng(seed)
  means = 0.35 * rng.normal(size=(num_classes, dim))
  scales = np.geomspace(3.0, 0.1, dim)

  def split(size):
    labels = rng.integers(0, num_classes, size)
    features = np.maximum(means[labels] + rng.normal(size=(size, dim)), 0)
    return (features * scales).astype(np.float32), labels
  return [split(size) for size in sizes]


@pytest.fixture(scope="module")
def protocol_splits():
  train, val, test = relu_splits((3000, 1000, 2000), 48, 10, seed=6)
  trainval = tuple(np.concatenate(pair) for pair in zip(train, val))
  return train, val, trainval, test


def scaled(split, scale):
  return split[0] * np.float32(scale), split[1]


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


def test_fit_on_tiny_features_is_the_scaled_fit(protocol_splits):
  (features, labels), scale, l2 = protocol_splits[0], 1e-6, 1e-3
  unit = linear.fit_logistic_regression(features, labels, 10, l2)
  tiny = linear.fit_logistic_regression(features * np.float32(scale), labels,
                                        10, l2 * scale ** 2)
  assert tiny.converged and tiny.iterations > 3
  assert tiny.iterations == pytest.approx(unit.iterations, abs=2)
  np.testing.assert_allclose(tiny.weights * scale, unit.weights, atol=2e-4)
  np.testing.assert_allclose(tiny.bias, unit.bias, atol=2e-4)
  np.testing.assert_allclose(tiny.loss, unit.loss, rtol=1e-6)


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


def test_tfp_lbfgs_reaches_the_same_optimum_as_ours(protocol_splits):
  (features, labels), test = protocol_splits[0], protocol_splits[3]
  grid = [1e-2, 1e-4]
  ours, theirs = (
      linear.fit_logistic_regression_grid(features, labels, 10, grid,
                                          tolerance=1e-5, optimizer=optimizer)
      for optimizer in ("ours", "tfp"))
  for mine, tfps in zip(ours, theirs):
    assert mine.converged and tfps.converged
    assert abs(mine.loss - tfps.loss) <= 1e-5 * tfps.loss
    same = np.mean(mine.predict(test[0]).argmax(1)
                   == tfps.predict(test[0]).argmax(1))
    assert same >= 0.999
  # tfp's Hager-Zhang line search needs more evaluations per iteration.
  assert theirs[1].evaluations > ours[1].evaluations


def test_unknown_optimizer_and_preconditioner_raise(problem):
  features, labels = problem
  with pytest.raises(ValueError, match="valid choices: ours, tfp"):
    linear.fit_logistic_regression(features, labels, 4, 1e-2,
                                   optimizer="scipy")
  with pytest.raises(ValueError, match="precondition must be one of"):
    linear.fit_logistic_regression(features, labels, 4, 1e-2,
                                   precondition=True)


def test_raw_and_standardised_features_reach_the_same_predictions(
    protocol_splits):
  (features, labels), test = protocol_splits[0], protocol_splits[3]
  # Large means and uneven scales (raw), or zero mean and unit variance.
  raw = (features + 5.0, test[0] + 5.0)
  mean, std = raw[0].mean(0), raw[0].std(0)
  standardised = tuple((x - mean) / std for x in raw)
  fits = [linear.fit_logistic_regression(x, labels, 10, 1e-7, tolerance=1e-5)
          for x, _ in (raw, standardised)]
  assert all(fit.converged for fit in fits)
  predictions = [fit.predict(x).argmax(1)
                 for fit, x in zip(fits, (raw[1], standardised[1]))]
  assert np.mean(predictions[0] == predictions[1]) >= 0.99
  assert max(f.iterations for f in fits) <= 1.5 * min(f.iterations
                                                       for f in fits)
