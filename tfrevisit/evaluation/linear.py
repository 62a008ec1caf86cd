"""Multinomial logistic regression trained full-batch with L-BFGS.

This is the paper's linear evaluation protocol: the L2 strength is chosen on
`train` -> `val`, the model is retrained on `trainval` and top-1 / top-5
accuracy is reported on `test`. The objective is

  mean_i cross_entropy(x_i W + b, y_i) + l2 / 2 * ||W||^2   (b not penalised),

i.e. scikit-learn's `LogisticRegression` with `C = 1 / (l2 * num_examples)`.

L-BFGS runs in preconditioned coordinates q = L^T [W; b], where L L^T is the
objective's Hessian at W = 0 estimated from a sample of the features,
M / C + l2 (M the uncentred second moment of [x, 1], C the number of classes).
Real network features are ill-conditioned (a few directions carry most of the
variance, large means); in these coordinates L-BFGS needs several times fewer
iterations (docs/benchmarks.md). The optimum is the same: only the path to it
changes.
"""
import dataclasses
import functools
import itertools
import time
from typing import Dict, Optional, Sequence, Tuple

import gin
import numpy as np
import tensorflow as tf
import tensorflow_probability as tfp

# (features [N, D], labels [N]) as NumPy arrays (memory-mapped arrays work).
Split = Tuple[np.ndarray, np.ndarray]


@dataclasses.dataclass(frozen=True)
class LogisticRegressionResult:
  """A fitted linear classifier.

  Attributes:
    weights: [D, C] float32 weights.
    bias: [C] float32 bias.
    iterations: L-BFGS iterations run.
    evaluations: loss-and-gradient evaluations over the training set (the
      line search makes 2 to 3 per iteration).
    converged: whether L-BFGS stopped on its criterion (largest entry of the
      preconditioned gradient below the tolerance, or no progress left)
      rather than on the iteration budget or a failed line search.
    loss: final value of the regularised objective.
  """
  weights: np.ndarray
  bias: np.ndarray
  iterations: int
  evaluations: int
  converged: bool
  loss: float

  def predict(self, features: np.ndarray, chunk_rows: int = 65536
              ) -> np.ndarray:
    """Returns the [N, C] logits for [N, D] features, read in chunks."""
    logits = np.empty([len(features), len(self.bias)], np.float32)
    for start in range(0, len(features), chunk_rows):
      chunk = np.asarray(features[start:start + chunk_rows], np.float32)
      logits[start:start + len(chunk)] = chunk @ self.weights + self.bias
    return logits


def _chunk_statistics(params, features, labels):
  """Summed cross-entropy over a chunk and its gradient w.r.t. params.

  The matmuls run in the features' float32; sums are returned in the float64
  of `params`, so that the optimiser can resolve the objective well below
  float32's 1e-7 relative precision (otherwise the weights would only be
  determined to about 1e-3 on ill-conditioned problems).

  Args:
    params: [D + 1, C] float64 weights with the bias as the last row.
    features: [n, D] float32.
    labels: [n] int32 class ids.

  Returns:
    (summed cross-entropy: float64 scalar, its gradient transposed:
    [C, D + 1] float64).
  """
  params32 = tf.cast(params, features.dtype)
  logits = tf.matmul(features, params32[:-1]) + params32[-1]
  log_normaliser = tf.reduce_logsumexp(logits, axis=1, keepdims=True)
  label_logits = tf.gather(logits, labels, axis=1, batch_dims=1)
  summed_cross_entropy = tf.reduce_sum(
      tf.cast(log_normaliser[:, 0] - label_logits, params.dtype))
  residual = tf.exp(logits - log_normaliser) - tf.one_hot(
      labels, tf.shape(logits)[1], dtype=logits.dtype)
  # residual^T features ([C, D]) runs 3-7x faster on CPU than the
  # features^T residual ([D, C]) that would need no transpose.
  gradient_t = tf.concat([
      tf.matmul(residual, features, transpose_a=True),
      tf.transpose(tf.reduce_sum(residual, axis=0, keepdims=True))], axis=1)
  return summed_cross_entropy, tf.cast(gradient_t, params.dtype)


# XLA measured 2.5-3.5x slower than plain TensorFlow (oneDNN) for this on CPU.
_CHUNK_STATISTICS = {
    jit: tf.function(_chunk_statistics, jit_compile=jit, autograph=False)
    for jit in (False, True)}


def _minimize(summed_statistics, num_examples, initial_params, preconditioner,
              l2, max_iterations, tolerance):
  """Runs L-BFGS on the regularised mean cross-entropy, preconditioned.

  L-BFGS sees q = L^T params and the gradient L^-1 g, where L is the
  lower-triangular `preconditioner`.

  Args:
    summed_statistics: params [D + 1, C] -> (summed cross-entropy, its
      transposed gradient [C, D + 1]) over the whole training set.
    num_examples: N.
    initial_params: [D + 1, C] starting point, the bias as last row.
    preconditioner: [D + 1, D + 1] lower-triangular L (see `preconditioner`).
    l2, max_iterations, tolerance: see `fit_logistic_regression`.

  Returns:
    (params [D + 1, C], iterations, evaluations, converged, objective value).
  """
  shape = tf.shape(initial_params)
  num_examples = tf.cast(num_examples, initial_params.dtype)

  def to_params(flat_q):
    return tf.linalg.triangular_solve(
        preconditioner, tf.reshape(flat_q, shape), lower=True, adjoint=True)

  def value_and_gradients(flat_q):
    params = to_params(flat_q)
    summed_cross_entropy, gradient_t = summed_statistics(params)
    weights = params[:-1]
    loss = (summed_cross_entropy / num_examples
            + 0.5 * l2 * tf.reduce_sum(tf.square(weights)))
    gradient = (tf.transpose(gradient_t) / num_examples
                + l2 * tf.pad(weights, [[0, 1], [0, 0]]))
    q_gradient = tf.linalg.triangular_solve(preconditioner, gradient,
                                            lower=True)
    return loss, tf.reshape(q_gradient, [-1])

  initial_q = tf.matmul(preconditioner, initial_params, transpose_a=True)
  result = tfp.optimizer.lbfgs_minimize(
      value_and_gradients,
      initial_position=tf.reshape(initial_q, [-1]),
      max_iterations=max_iterations,
      tolerance=tolerance)
  return (to_params(result.position), result.num_iterations,
          result.num_objective_evaluations, result.converged,
          result.objective_value)


def _summed_over_chunks(read_chunk, num_chunks, jit_compile):
  """Builds params -> `_chunk_statistics` summed over all chunks.

  Args:
    read_chunk: index -> (features [n, D] float32, labels [n] int32).
    num_chunks: number of chunks.
    jit_compile: XLA-compile the per-chunk computation.
  """
  chunk_statistics = _CHUNK_STATISTICS[jit_compile]

  def summed_statistics(params):
    def accumulate(index, cross_entropy, gradient):
      chunk_cross_entropy, chunk_gradient = chunk_statistics(
          params, *read_chunk(index))
      return (index + 1, cross_entropy + chunk_cross_entropy,
              gradient + chunk_gradient)

    # Two chunks in flight: one per core, and the next is read meanwhile.
    _, cross_entropy, gradient = tf.while_loop(
        lambda index, *_: index < num_chunks, accumulate,
        (tf.constant(0), tf.zeros([], params.dtype),
         tf.zeros(tf.reverse(tf.shape(params), [0]), params.dtype)),
        parallel_iterations=2)
    return cross_entropy, gradient
  return summed_statistics


def _minimize_in_memory(features, labels, block_size, *options, jit_compile):
  """L-BFGS over in-memory features, evaluated in cache-sized row blocks."""
  def read_block(index):
    rows = slice(index * block_size, (index + 1) * block_size)
    return features[rows], labels[rows]

  num_examples = tf.shape(labels)[0]
  num_blocks = (num_examples + block_size - 1) // block_size
  return _minimize(_summed_over_chunks(read_block, num_blocks, jit_compile),
                   num_examples, *options)


# Arrays of the chunked fits in progress, by key. The traced graph reads its
# chunks through `_read_chunk` with the key as a tensor, so that the graph does
# not capture one fit's arrays and is traced only once.
_CHUNK_SOURCES = {}
_NEXT_SOURCE_KEY = itertools.count()


def _read_chunk(source_key, index):
  features, labels, chunk_size = _CHUNK_SOURCES[int(source_key)]
  rows = slice(index * chunk_size, (index + 1) * chunk_size)
  return (np.asarray(features[rows], np.float32),
          np.asarray(labels[rows], np.int32))


def _minimize_chunked(source_key, num_examples, num_chunks, *options,
                      jit_compile):
  """L-BFGS whose every evaluation streams the chunks from NumPy arrays."""
  def read_chunk(index):
    features, labels = tf.numpy_function(
        _read_chunk, [source_key, index], (tf.float32, tf.int32),
        stateful=False)
    return (tf.ensure_shape(features, [None, None]),
            tf.ensure_shape(labels, [None]))

  return _minimize(_summed_over_chunks(read_chunk, num_chunks, jit_compile),
                   num_examples, *options)


# initial_params [D + 1, C], preconditioner [D + 1, D + 1], l2,
# max_iterations, tolerance; the optimiser's state is float64 (see
# `_chunk_statistics`).
_OPTIONS_SPEC = (tf.TensorSpec([None, None], tf.float64),
                 tf.TensorSpec([None, None], tf.float64),
                 tf.TensorSpec([], tf.float64),
                 tf.TensorSpec([], tf.int32),
                 tf.TensorSpec([], tf.float64))
_SCALAR_INT = tf.TensorSpec([], tf.int32)

# Traced once per process and XLA setting: shapes are left unknown, so that
# every split, end point and L2 value reuses the same graph.
_MINIMIZE_IN_MEMORY = {
    jit: tf.function(
        functools.partial(_minimize_in_memory, jit_compile=jit),
        input_signature=(tf.TensorSpec([None, None], tf.float32),
                         tf.TensorSpec([None], tf.int32),
                         _SCALAR_INT) + _OPTIONS_SPEC,
        autograph=False)
    for jit in (False, True)}
_MINIMIZE_CHUNKED = {
    jit: tf.function(
        functools.partial(_minimize_chunked, jit_compile=jit),
        input_signature=(tf.TensorSpec([], tf.int64), _SCALAR_INT,
                         _SCALAR_INT) + _OPTIONS_SPEC,
        autograph=False)
    for jit in (False, True)}

# In-memory features are processed in blocks of about this many bytes, which
# stay in the CPU cache between the forward and the gradient matmul.
_BLOCK_BYTES = 16 << 20


def feature_second_moment(features: np.ndarray,
                          max_rows: Optional[int] = None) -> np.ndarray:
  """The uncentred second moment of [x, 1] over evenly spaced rows.

  Args:
    features: [N, D] array (a memory-mapped array works: only the sampled
      rows are read).
    max_rows: rows to sample at most; default max(8192, 2 D), enough for a
      preconditioner.

  Returns:
    [D + 1, D + 1] float64 mean of [x, 1]^T [x, 1] over the sampled rows.
  """
  if max_rows is None:
    max_rows = max(8192, 2 * features.shape[1])
  rows = np.unique(np.linspace(0, len(features) - 1,
                               min(max_rows, len(features))).astype(np.int64))
  sample = np.asarray(features[rows], np.float32)
  sample = np.concatenate([sample, np.ones([len(rows), 1], np.float32)], 1)
  return (sample.T @ sample).astype(np.float64) / len(rows)


def _preconditioning_pays(features) -> bool:
  """Whether N > D: with fewer examples than features, the O(D^3) factorisation
  outweighs the O(N D C) evaluations that preconditioning saves."""
  return len(features) > features.shape[1]


def preconditioner(second_moment: np.ndarray, num_classes: int,
                   l2: float) -> tf.Tensor:
  """The Cholesky factor L of the objective's Hessian at W = 0 (per class).

  At W = 0 every class has probability 1 / C, and the Hessian of the mean
  cross-entropy w.r.t. one class's [w; b] is M (1 / C - 1 / C^2): we use
  A = M / C + l2 diag(1, ..., 1, 0) plus a jitter of 1e-6 of A's mean diagonal
  that keeps A positive definite for constant features.

  Args:
    second_moment: [D + 1, D + 1] M, see `feature_second_moment`.
    num_classes: C.
    l2: the L2 strength.

  Returns:
    [D + 1, D + 1] lower-triangular float64 L with L L^T = A.
  """
  hessian = second_moment / num_classes + np.diag(
      np.append(np.full(len(second_moment) - 1, l2), 0.0))
  jitter = 1e-6 * np.mean(np.diag(hessian))
  return tf.linalg.cholesky(tf.constant(
      hessian + jitter * np.eye(len(hessian)), tf.float64))


def fit_logistic_regression(
    features: np.ndarray,
    labels: np.ndarray,
    num_classes: int,
    l2: float,
    max_iterations: int = 1000,
    tolerance: float = 1e-4,
    chunk_size: Optional[int] = None,
    initial: Optional[LogisticRegressionResult] = None,
    second_moment: Optional[np.ndarray] = None,
    precondition: Optional[bool] = None,
    jit_compile: bool = False,
) -> LogisticRegressionResult:
  """Fits multinomial logistic regression with full-batch L-BFGS.

  Minimises mean cross-entropy + l2 / 2 * ||W||^2 (the bias is not penalised);
  the features and matmuls are float32, the optimiser state float64.
  Standardising the features is left to the caller. The first call in a
  process traces the optimiser graph (a few seconds); later calls of any shape
  reuse it.

  Args:
    features: [N, D] array; with `chunk_size` it may be larger than memory:
      a memory-mapped array or `features.StackedRows` (anything that slicing
      reads), of which only `chunk_size` rows are read at a time.
    labels: [N] integer class ids in [0, num_classes).
    num_classes: C.
    l2: L2 strength on the weights (scikit-learn's C = 1 / (l2 * N)).
    max_iterations: L-BFGS iteration budget.
    tolerance: stop when the largest absolute entry of the gradient in
      L-BFGS's coordinates is below this: the preconditioned gradient
      L^-1 g (see the module docstring), or g itself without `precondition`
      (then it is scikit-learn's `tol` for its lbfgs solver). Near the optimum
      the objective is then within about D * C * tolerance^2 / 2 of its
      minimum.
    chunk_size: if set, the loss and gradient are accumulated over chunks of
      this many rows read from `features` at every evaluation, so that only one
      chunk is in (device) memory at a time.
    initial: a previous fit to start from (warm start); zeros otherwise.
    second_moment: `feature_second_moment(features)`, if already computed
      (it does not depend on `l2`: pass it to fits that share features).
    precondition: run L-BFGS in preconditioned coordinates; the
      [D + 1, D + 1] second moment and its Cholesky factor cost
      O(max(8192, 2 D) D^2 + D^3) once, and each evaluation two triangular
      solves, O(D^2 C). Default (None): only when N > D.
    jit_compile: compile the loss and gradient computation with XLA (slower on
      CPU; may help on accelerators).

  Returns:
    The fitted LogisticRegressionResult.

  Raises:
    ValueError: for mismatched shapes or labels outside [0, num_classes).
  """
  labels = np.asarray(labels)
  if features.ndim != 2 or labels.shape != features.shape[:1]:
    raise ValueError(
        f"Expected features [N, D] and labels [N]; got {features.shape} and "
        f"{labels.shape}. Flatten or pool feature maps first.")
  if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
    raise ValueError(f"Labels must lie in [0, {num_classes}); got "
                     f"[{labels.min()}, {labels.max()}]. Check num_classes.")
  if initial is None:
    initial_params = np.zeros([features.shape[1] + 1, num_classes])
  else:
    initial_params = np.concatenate([initial.weights, initial.bias[None]])
  if precondition is None:
    precondition = _preconditioning_pays(features)
  if not precondition:
    factor = tf.eye(features.shape[1] + 1, dtype=tf.float64)
  else:
    if second_moment is None:
      second_moment = feature_second_moment(features)
    factor = preconditioner(second_moment, num_classes, l2)
  options = (tf.constant(initial_params, tf.float64), factor,
             tf.constant(l2, tf.float64), tf.constant(max_iterations),
             tf.constant(tolerance, tf.float64))
  if chunk_size is None or chunk_size >= len(labels):
    block_size = max(1, _BLOCK_BYTES // (4 * features.shape[1]))
    outputs = _MINIMIZE_IN_MEMORY[jit_compile](
        tf.constant(np.asarray(features, np.float32)),
        tf.constant(labels, tf.int32),
        tf.constant(block_size), *options)
  else:
    source_key = next(_NEXT_SOURCE_KEY)
    _CHUNK_SOURCES[source_key] = (features, labels, chunk_size)
    try:
      outputs = _MINIMIZE_CHUNKED[jit_compile](
          tf.constant(source_key, tf.int64), tf.constant(len(labels)),
          tf.constant(-(-len(labels) // chunk_size)), *options)
    finally:
      del _CHUNK_SOURCES[source_key]
  params, iterations, evaluations, converged, loss = (
      o.numpy() for o in outputs)
  params = params.astype(np.float32)
  return LogisticRegressionResult(
      weights=params[:-1], bias=params[-1], iterations=int(iterations),
      evaluations=int(evaluations), converged=bool(converged),
      loss=float(loss))


def top_k_accuracy(logits: np.ndarray, labels: np.ndarray, k: int) -> float:
  """Fraction of rows whose label is among the k largest logits ([N, C])."""
  k = min(k, logits.shape[1])
  top_k = np.argpartition(-logits, k - 1, axis=1)[:, :k]
  return float(np.mean(np.any(top_k == labels[:, None], axis=1)))


@gin.configurable(denylist=["train", "val", "trainval", "test", "num_classes"])
def select_l2_and_fit(
    train: Split,
    val: Split,
    trainval: Split,
    test: Split,
    num_classes: int,
    l2_grid: Sequence[float] = tuple(10.0 ** np.arange(-6, 1)),
    max_iterations: int = 1000,
    tolerance: float = 1e-4,
    chunk_size: Optional[int] = None,
) -> Dict[str, float]:
  """The paper's protocol: L2 chosen on train -> val, refit on trainval.

  The grid is swept from strong to weak regularisation, each fit warm-started
  from the previous one; the trainval fit starts from the chosen train fit.

  Args:
    train, val, trainval, test: (features [N, D], labels [N]) splits.
    num_classes: C.
    l2_grid: candidate L2 strengths (see `fit_logistic_regression`).
    max_iterations, tolerance, chunk_size: passed to `fit_logistic_regression`.

  Returns:
    A row with test `top1`, `top5` (fractions), the chosen `l2`, the final
    fit's `iterations` and `converged`, the `val_top1` of the chosen L2 and the
    total `wall_time_s` including the sweep.
  """
  start = time.perf_counter()
  fit_options = dict(num_classes=num_classes, max_iterations=max_iterations,
                     tolerance=tolerance, chunk_size=chunk_size)
  train_moment = (feature_second_moment(train[0])
                  if _preconditioning_pays(train[0]) else None)
  best_l2, best_val_top1, best_fit, fit = None, -1.0, None, None
  for l2 in sorted(l2_grid, reverse=True):
    fit = fit_logistic_regression(*train, l2=l2, initial=fit,
                                  second_moment=train_moment, **fit_options)
    val_top1 = top_k_accuracy(fit.predict(val[0]), val[1], 1)
    if val_top1 > best_val_top1:
      best_l2, best_val_top1, best_fit = l2, val_top1, fit
  final = fit_logistic_regression(*trainval, l2=best_l2, initial=best_fit,
                                  **fit_options)
  test_logits = final.predict(test[0])
  return dict(
      top1=top_k_accuracy(test_logits, test[1], 1),
      top5=top_k_accuracy(test_logits, test[1], 5),
      l2=float(best_l2),
      val_top1=best_val_top1,
      iterations=final.iterations,
      converged=final.converged,
      wall_time_s=time.perf_counter() - start)
