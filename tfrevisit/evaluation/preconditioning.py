"""The preconditioner of the logistic-regression fit, and the features'
second moment it is built from.

Real network features are ill-conditioned (a few directions carry most of the
variance, large means), and the release fed raw features whose scale varies
by orders of magnitude between layers. L-BFGS therefore runs in
preconditioned coordinates q = P^T [W; b], P P^T the objective's Hessian at
W = 0 estimated from a sample of the features (`preconditioner`: its Cholesky
factor when N > D, else its diagonal): its path and stopping test then do not
depend on the features' units, and it needs several times fewer iterations
(docs/benchmarks.md). The optimum is the same: only the path changes.
"""
from typing import Optional

import numpy as np
import tensorflow as tf


# Relative jitters tried in turn by `preconditioner`.
_JITTERS = (1e-6, 1e-4, 1e-2, 1.0)


def feature_second_moment(features: np.ndarray,
                          max_rows: Optional[int] = None,
                          diagonal: bool = False) -> np.ndarray:
  """The uncentred second moment of [x, 1] over evenly spaced rows.

  Args:
    features: [N, D] array (a memory-mapped array works: only the sampled
      rows are read).
    max_rows: rows to sample at most; default max(8192, 2 D), enough for a
      preconditioner.
    diagonal: return only the diagonal (the mean squares of [x, 1]).

  Returns:
    [D + 1, D + 1] float64 mean of [x, 1]^T [x, 1] over the sampled rows, or
    its diagonal [D + 1].
  """
  if max_rows is None:
    max_rows = max(8192, 2 * features.shape[1])
  rows = np.unique(np.linspace(0, len(features) - 1,
                               min(max_rows, len(features))).astype(np.int64))
  sample = np.asarray(features[rows], np.float32)
  sample = np.concatenate([sample, np.ones([len(rows), 1], np.float32)], 1)
  if diagonal:
    return np.mean(np.square(sample, dtype=np.float64), axis=0)
  return (sample.T @ sample).astype(np.float64) / len(rows)


def mean_square(second_moment: np.ndarray) -> float:
  """The features' mean squared value, E[x_j^2] averaged over the D features,
  from a full or diagonal `feature_second_moment` (1 for all-zero features).
  The protocol's relative L2 is in this unit (see `linear_protocol`)."""
  diagonal = (second_moment if second_moment.ndim == 1
              else np.diagonal(second_moment))
  value = float(np.mean(diagonal[:-1]))
  return value if value > 0 else 1.0


def default_preconditioner(features) -> str:
  """"full" when N > D, else "diagonal": with fewer examples than features,
  the O(D^3) factorisation outweighs the O(N D C) evaluations it saves."""
  return "full" if len(features) > features.shape[1] else "diagonal"


def preconditioner(second_moment: np.ndarray, num_classes: int,
                   l2) -> tf.Tensor:
  """The preconditioner P of the objective's Hessian A at W = 0 (per class).

  At W = 0 every class has probability 1 / C, and the Hessian of the mean
  cross-entropy w.r.t. one class's [w; b] is M (1 / C - 1 / C^2): we use
  A = M / C + l2 diag(1, ..., 1, 0), M the second moment of [x, 1].

  Full (M [D + 1, D + 1]): P = L, the Cholesky factor of A, computed in
  Jacobi-scaled form, L = S^-1 chol(S A S + jitter I) with S = diag(A)^-1/2,
  so that the jitter (1e-6, grown 100-fold while the factorisation fails:
  M summed in float32 can have eigenvalues below zero by about 1e-7 of its
  largest) is relative to each feature's own scale. Diagonal (M's diagonal
  [D + 1]): P = diag(A)^1/2, O(D) instead of O(D^3 / 3) per L2 value.

  Either way, multiplying the features by any constant a (or each feature by
  its own) multiplies P's rows by the same factors, so that L-BFGS's
  coordinates q = P^T [W; b] and its gradient P^-1 g do not change: the fit's
  path and its stopping test do not depend on the features' units. P changes
  L-BFGS's path, never the optimum.

  Args:
    second_moment: M, see `feature_second_moment`: [D + 1, D + 1], or its
      diagonal [D + 1].
    num_classes: C.
    l2: the L2 strength, a float or a [G] array of them.

  Returns:
    float64 [D + 1, D + 1] lower-triangular L (full), or [D + 1, 1] (diagonal),
    with a leading [G] axis for [G] `l2`.
  """
  l2 = np.asarray(l2, np.float64)[..., None]
  penalised = np.append(np.ones(len(second_moment) - 1), 0.0)
  diagonal = np.diagonal(second_moment) if second_moment.ndim == 2 else (
      second_moment)
  hessian_diagonal = diagonal / num_classes + l2 * penalised
  # A zero diagonal entry (a dead feature without L2) has no curvature at all.
  hessian_diagonal = np.where(hessian_diagonal > 0, hessian_diagonal, 1.0)
  if not np.all(np.isfinite(hessian_diagonal)):
    raise ValueError("The features' second moment is not finite; check the "
                     "features for NaN or inf.")
  if second_moment.ndim == 1:
    return tf.constant(np.sqrt(hessian_diagonal)[..., None])
  scale = 1.0 / np.sqrt(hessian_diagonal)
  hessian = second_moment / num_classes + l2[..., None] * np.diag(penalised)
  scaled = hessian * scale[..., :, None] * scale[..., None, :]
  for jitter in _JITTERS:
    try:
      factor = tf.linalg.cholesky(tf.constant(
          scaled + jitter * np.eye(len(second_moment)), tf.float64))
    except tf.errors.InvalidArgumentError:  # not positive definite
      continue
    if np.all(np.isfinite(factor.numpy())):
      return factor / scale[..., :, None]
  raise ValueError("The features' second moment is not finite; check the "
                   "features for NaN or inf.")

