"""Tests for the logistic-regression fit against NumPy, SciPy, tfp and
scikit-learn."""
import numpy as np
import pytest
from sklearn import linear_model
import tensorflow as tf
import tensorflow_probability as tfp
import threadpoolctl

from tfrevisit.evaluation import logistic_regression
from linear_test_data import numpy_objective_gradient
from linear_test_data import fashion_mnist
from linear_test_data import scipy_fit
from linear_test_data import GRID
from linear_test_data import splits  # pylint: disable=unused-import
from linear_test_data import problem  # pylint: disable=unused-import
from linear_test_data import grid_problem  # pylint: disable=unused-import
from linear_test_data import protocol_splits  # pylint: disable=unused-import


def test_matches_scikit_learn(splits):
  (features, labels), (test_features, test_labels) = splits
  l2 = 1e-2
  ours = logistic_regression.fit_logistic_regression(features, labels, 4, l2,
                                                     tolerance=1e-6)
  with threadpoolctl.threadpool_limits(1):
    theirs = linear_model.LogisticRegression(
        C=1 / (l2 * len(labels)), tol=1e-8, max_iter=1000).fit(
            features.astype(np.float64), labels)
  assert ours.converged
  ours_top1 = logistic_regression.top_k_accuracy(ours.predict(test_features),
                                                 test_labels, 1)
  theirs_top1 = theirs.score(test_features, test_labels)
  assert abs(ours_top1 - theirs_top1) < 0.005
  np.testing.assert_allclose(ours.weights, theirs.coef_.T, atol=1e-4)
  np.testing.assert_allclose(ours.bias, theirs.intercept_, atol=1e-4)


@pytest.mark.parametrize("precondition", ["none", "diagonal", "full"])
def test_solution_is_a_stationary_point(problem, precondition):
  features, labels = problem
  l2, tolerance = 1e-3, 1e-5
  fit = logistic_regression.fit_logistic_regression(features, labels, 4, l2,
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


def test_chunked_memory_mapped_matches_in_memory(problem, tmp_path):
  features, labels = problem
  mapped = np.memmap(tmp_path / "features.f32", np.float32, "w+",
                     shape=features.shape)
  mapped[:] = features
  mapped.flush()
  mapped = np.memmap(tmp_path / "features.f32", np.float32, "r",
                     shape=features.shape)
  whole = logistic_regression.fit_logistic_regression(features, labels, 4, 1e-2,
                                                      tolerance=1e-6)
  chunked = logistic_regression.fit_logistic_regression(mapped, labels, 4, 1e-2,
                                                        tolerance=1e-6,
                                                        chunk_size=400)
  assert chunked.converged
  np.testing.assert_allclose(chunked.weights, whole.weights, atol=1e-4)
  np.testing.assert_allclose(chunked.bias, whole.bias, atol=1e-4)
  np.testing.assert_allclose(chunked.loss, whole.loss, rtol=1e-7)


def test_warm_start_from_solution_stops_at_once(problem):
  features, labels = problem
  first = logistic_regression.fit_logistic_regression(features, labels, 4, 1e-2)
  again = logistic_regression.fit_logistic_regression(features, labels, 4, 1e-2,
                                                      initial=first)
  assert again.iterations <= 1
  np.testing.assert_allclose(again.weights, first.weights, atol=1e-5)


def test_predict_is_affine(problem):
  features, labels = problem
  fit = logistic_regression.fit_logistic_regression(features, labels, 4, 1e-2)
  np.testing.assert_allclose(
      fit.predict(features[:5]),
      features[:5].astype(np.float64) @ fit.weights + fit.bias, rtol=1e-5)


def test_top_k_accuracy_against_sorting():
  rng = np.random.default_rng(1)
  logits = rng.normal(size=(200, 7))
  labels = rng.integers(0, 7, 200)
  ranks = (logits > logits[np.arange(200), labels][:, None]).sum(1)
  for k in (1, 3, 5):
    assert logistic_regression.top_k_accuracy(logits, labels,
                                              k) == np.mean(ranks < k)
  assert logistic_regression.top_k_accuracy(logits[:, :3], labels % 3, 5) == 1.0


def test_bad_labels_and_shapes_raise(problem):
  features, labels = problem
  with pytest.raises(ValueError, match="num_classes"):
    logistic_regression.fit_logistic_regression(features, labels, 3, 1e-2)
  with pytest.raises(ValueError, match="Flatten or pool"):
    logistic_regression.fit_logistic_regression(features[:, :, None], labels, 4,
                                                1e-2)


def test_fashion_mnist_subset_matches_scikit_learn():
  train_features, train_labels = fashion_mnist("train")
  test_features, test_labels = fashion_mnist("test")
  train_features, train_labels = train_features[:3000], train_labels[:3000]
  l2 = 1e-2
  ours = logistic_regression.fit_logistic_regression(train_features,
                                                     train_labels, 10, l2)
  # Multi-threaded BLAS stalls badly on a busy 2-core machine.
  with threadpoolctl.threadpool_limits(1):
    theirs = linear_model.LogisticRegression(
        C=1 / (l2 * len(train_labels)), max_iter=1000).fit(
            train_features.astype(np.float64), train_labels)
  ours_top1 = logistic_regression.top_k_accuracy(ours.predict(test_features),
                                                 test_labels, 1)
  assert ours_top1 > 0.78
  assert abs(ours_top1 - theirs.score(test_features, test_labels)) < 0.005


@pytest.mark.slow
def test_fashion_mnist_linear_probe_reaches_known_accuracy():
  """Logistic regression on raw pixels: about 84% (Fashion-MNIST benchmarks)."""
  train_features, train_labels = fashion_mnist("train")
  test_features, test_labels = fashion_mnist("test")
  fit = logistic_regression.fit_logistic_regression(train_features,
                                                    train_labels, 10, 1e-4)
  top1 = logistic_regression.top_k_accuracy(fit.predict(test_features),
                                            test_labels, 1)
  assert 0.835 < top1 < 0.86


@pytest.mark.parametrize("precondition", ["none", "diagonal", "full"])
def test_grid_fit_matches_separate_fits_and_scipy(grid_problem, precondition):
  features, labels = grid_problem
  grid = logistic_regression.fit_logistic_regression_grid(
      features, labels, 3, GRID, tolerance=1e-6, precondition=precondition)
  for l2, fit in zip(GRID, grid):
    separate = logistic_regression.fit_logistic_regression(
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
  solved = logistic_regression.fit_logistic_regression(features, labels, 3,
                                                       1e-2, tolerance=1e-6)
  # The first problem starts at its optimum, the second far from its own.
  grid = logistic_regression.fit_logistic_regression_grid(
      features, labels, 3, [1e-2, 1e-3], tolerance=1e-6,
      initial=[solved, solved])
  _, _, value = scipy_fit(features, labels, 3, 1e-3)
  np.testing.assert_array_equal(grid[0].weights, solved.weights)
  np.testing.assert_array_equal(grid[0].bias, solved.bias)
  assert grid[1].converged and grid[1].iterations > 1
  np.testing.assert_allclose(grid[1].loss, value, rtol=1e-7)


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
  ours = logistic_regression.fit_logistic_regression(features, labels, 3, l2,
                                                     tolerance=1e-6)
  assert theirs.converged and ours.converged
  np.testing.assert_allclose(ours.loss, theirs.objective_value, rtol=1e-7)
  np.testing.assert_allclose(ours.weights,
                             theirs.position[:24].numpy().reshape(8, 3),
                             atol=2e-4)
  np.testing.assert_allclose(ours.bias, theirs.position[24:], atol=2e-4)


def test_fit_on_tiny_features_is_the_scaled_fit(protocol_splits):
  (features, labels), scale, l2 = protocol_splits[0], 1e-6, 1e-3
  unit = logistic_regression.fit_logistic_regression(features, labels, 10, l2)
  tiny = logistic_regression.fit_logistic_regression(
      features * np.float32(scale), labels, 10, l2 * scale**2)
  assert tiny.converged and tiny.iterations > 3
  assert tiny.iterations == pytest.approx(unit.iterations, abs=2)
  np.testing.assert_allclose(tiny.weights * scale, unit.weights, atol=2e-4)
  np.testing.assert_allclose(tiny.bias, unit.bias, atol=2e-4)
  np.testing.assert_allclose(tiny.loss, unit.loss, rtol=1e-6)


def test_tfp_lbfgs_reaches_the_same_optimum_as_ours(protocol_splits):
  (features, labels), test = protocol_splits[0], protocol_splits[3]
  grid = [1e-2, 1e-4]
  ours, theirs = (logistic_regression.fit_logistic_regression_grid(
      features, labels, 10, grid, tolerance=1e-5, optimizer=optimizer)
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
    logistic_regression.fit_logistic_regression(features, labels, 4, 1e-2,
                                                optimizer="scipy")
  with pytest.raises(ValueError, match="precondition must be one of"):
    logistic_regression.fit_logistic_regression(features, labels, 4, 1e-2,
                                                precondition=True)


def test_raw_and_standardised_features_reach_the_same_predictions(
    protocol_splits):
  (features, labels), test = protocol_splits[0], protocol_splits[3]
  # Large means and uneven scales (raw), or zero mean and unit variance.
  raw = (features + 5.0, test[0] + 5.0)
  mean, std = raw[0].mean(0), raw[0].std(0)
  standardised = tuple((x - mean) / std for x in raw)
  fits = [
      logistic_regression.fit_logistic_regression(x, labels, 10, 1e-7,
                                                  tolerance=1e-5)
      for x, _ in (raw, standardised)
  ]
  assert all(fit.converged for fit in fits)
  predictions = [fit.predict(x).argmax(1)
                 for fit, x in zip(fits, (raw[1], standardised[1]))]
  assert np.mean(predictions[0] == predictions[1]) >= 0.99
  assert max(f.iterations for f in fits) <= 1.5 * min(f.iterations
                                                       for f in fits)
