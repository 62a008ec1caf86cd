"""Data and references shared by the tests of the linear evaluation
(test_logistic_regression, test_preconditioning, test_linear).
"""
import gzip
import os

import numpy as np
import pytest
import scipy.optimize
import scipy.special

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


def scaled(split, scale):
  return split[0] * np.float32(scale), split[1]


@pytest.fixture(scope="module")
def splits():
  return gaussian_splits((1500, 3000), 20, 4, seed=0)


@pytest.fixture(scope="module")
def problem(splits):
  return splits[0]


@pytest.fixture(scope="module")
def grid_problem():
  (features, labels), = gaussian_splits((600,), 8, 3, seed=4)
  # Ill-conditioned: large means, decaying scales.
  return (features + 2.0) * np.geomspace(1.0, 0.05, 8), labels


@pytest.fixture(scope="module")
def protocol_splits():
  train, val, test = relu_splits((3000, 1000, 2000), 48, 10, seed=6)
  trainval = tuple(np.concatenate(pair) for pair in zip(train, val))
  return train, val, trainval, test
