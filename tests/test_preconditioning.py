"""Tests for the preconditioner and the features' second moment (NumPy)."""
import numpy as np
import pytest

from tfrevisit.evaluation import logistic_regression
from tfrevisit.evaluation import preconditioning
from linear_test_data import gaussian_splits
from linear_test_data import GRID
from linear_test_data import problem, splits  # pylint: disable=unused-import


def test_preconditioning_changes_the_path_not_the_optimum(problem):
  features, labels = problem
  # Ill-conditioned like network features: large means, decaying scales.
  features = (features + 3.0) * np.geomspace(1.0, 0.01, features.shape[1])
  fits = [logistic_regression.fit_logistic_regression(
      features, labels, 4, 1e-3, tolerance=1e-7, precondition=precondition)
          for precondition in ("none", "full")]
  assert all(fit.converged for fit in fits)
  assert fits[1].iterations < fits[0].iterations / 3
  np.testing.assert_allclose(fits[1].loss, fits[0].loss, rtol=1e-7)
  np.testing.assert_allclose(fits[1].weights, fits[0].weights, atol=1e-3)


def test_an_indefinite_second_moment_still_preconditions_to_the_optimum(problem):
  features, labels = problem
  # A second moment summed in float32 can have slightly negative eigenvalues:
  # here -0.1, enough to make M / C + l2 I indefinite at l2 = 1e-2.
  values, vectors = np.linalg.eigh(
      preconditioning.feature_second_moment(features))
  values[0] = -0.1
  moment = (vectors * values) @ vectors.T
  hessian = moment / 4 + 1e-2 * np.diag([1.0] * features.shape[1] + [0.0])
  with pytest.raises(np.linalg.LinAlgError):
    np.linalg.cholesky(hessian + 1e-6 * np.trace(hessian) / len(hessian)
                       * np.eye(len(hessian)))
  assert np.all(
      np.isfinite(preconditioning.preconditioner(moment, 4, 1e-2).numpy()))
  fits = [
      logistic_regression.fit_logistic_regression(features, labels, 4, 1e-2,
                                                  tolerance=1e-7,
                                                  second_moment=moment,
                                                  precondition=precondition)
      for precondition in ("none", "full")
  ]
  assert all(fit.converged for fit in fits)
  np.testing.assert_allclose(fits[1].loss, fits[0].loss, rtol=1e-7)


def test_preconditioning_is_diagonal_by_default_with_fewer_examples_than_features():
  (features, labels), = gaussian_splits((30,), 50, 3, seed=3)
  default = logistic_regression.fit_logistic_regression(features, labels, 3,
                                                        1e-2)
  diagonal = logistic_regression.fit_logistic_regression(
      features, labels, 3, 1e-2, precondition="diagonal")
  full = logistic_regression.fit_logistic_regression(features, labels, 3, 1e-2,
                                                     precondition="full")
  assert default.evaluations == diagonal.evaluations
  np.testing.assert_array_equal(default.weights, diagonal.weights)
  assert full.evaluations != diagonal.evaluations


def test_second_moment_and_preconditioner_against_numpy(problem):
  features, _ = problem
  augmented = np.concatenate([features, np.ones([len(features), 1])], 1)
  np.testing.assert_allclose(
      preconditioning.feature_second_moment(features),
      augmented.T @ augmented / len(features), rtol=1e-5, atol=1e-6)
  # Sampled: rows 0, 499, 999, 1499 of 1500.
  sampled = preconditioning.feature_second_moment(features, max_rows=4)
  rows = augmented[[0, 499, 999, 1499]]
  np.testing.assert_allclose(sampled, rows.T @ rows / 4, rtol=1e-5, atol=1e-6)
  factor = preconditioning.preconditioner(sampled, 4, l2=0.5).numpy()
  expected = sampled / 4 + np.diag([0.5] * features.shape[1] + [0.0])
  np.testing.assert_allclose(factor @ factor.T, expected, rtol=1e-5)
  assert np.all(np.triu(factor, 1) == 0)


def test_batched_preconditioner_stacks_the_single_ones(problem):
  moment = preconditioning.feature_second_moment(problem[0])
  stacked = preconditioning.preconditioner(moment, 4, np.array(GRID)).numpy()
  for l2, factor in zip(GRID, stacked):
    np.testing.assert_allclose(
        factor,
        preconditioning.preconditioner(moment, 4, l2).numpy(), rtol=1e-12)
