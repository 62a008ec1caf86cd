"""Multinomial logistic regression trained full-batch with L-BFGS.

This is the paper's linear evaluation protocol: the L2 strength is chosen on
`train` -> `val`, the model is retrained on `trainval` and top-1 / top-5
accuracy is reported on `test`. The objective is

  mean_i cross_entropy(x_i W + b, y_i) + l2 / 2 * ||W||^2   (b not penalised),

i.e. scikit-learn's `LogisticRegression` with `C = 1 / (l2 * num_examples)`.

Nothing in the protocol depends on the features' units, since the release fed
raw features whose scale varies by orders of magnitude between layers:
- L-BFGS runs in preconditioned coordinates q = P^T [W; b], P P^T the
  objective's Hessian at W = 0 estimated from a sample of the features
  (`preconditioner`: its Cholesky factor when N > D, else its diagonal), and
  stops when the gradient in those coordinates is small (scale-free; see
  `fit_logistic_regression_grid`). Real network features are ill-conditioned
  (a few directions carry most of the variance, large means); in these
  coordinates L-BFGS also needs several times fewer iterations
  (docs/benchmarks.md). The optimum is the same: only the path changes.
- the L2 grid is relative to the features' mean square, and grows by decades
  while the best value sits at its edge (`linear_protocol`).

The L2 grid is fitted as one batched L-BFGS (`fit_logistic_regression_grid`):
G problems side by side, whose every evaluation reads the features once for
all of them, each with its own history and stopping test. The L-BFGS is ours
by default (`lbfgs.minimize`, about one evaluation per iteration) or
tensorflow-probability's (`optimizer="tfp"`).
"""
import dataclasses
import functools
import itertools
import time
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import gin
import numpy as np
import tensorflow as tf

from tfrevisit.evaluation import lbfgs

# (features [N, D], labels [N]) as NumPy arrays (memory-mapped arrays work).
Split = Tuple[np.ndarray, np.ndarray]


@dataclasses.dataclass(frozen=True)
class LogisticRegressionResult:
  """A fitted linear classifier.

  Attributes:
    weights: [D, C] float32 weights.
    bias: [C] float32 bias.
    iterations: L-BFGS iterations of this fit.
    evaluations: loss-and-gradient evaluations over the training set (about
      one per iteration once the unit step is accepted).
    converged: whether L-BFGS stopped on its criterion (largest entry of the
      preconditioned gradient at most the tolerance) rather than on the
      iteration budget or a line search that found no lower point.
    loss: final value of the regularised objective.
    path_iterations: iterations from W = 0 to these weights: this fit's and
      those of the fits it was warm-started from.
    hit_max_iterations: whether the fit ran out of iterations unconverged.
  """
  weights: np.ndarray
  bias: np.ndarray
  iterations: int
  evaluations: int
  converged: bool
  loss: float
  path_iterations: int
  hit_max_iterations: bool

  @property
  def stopped_early(self) -> bool:
    """Fewer than 3 L-BFGS iterations from W = 0: a fit that has barely moved
    (features without signal, or a stopping test met too early)."""
    return self.path_iterations < 3

  def predict(self, features: np.ndarray, chunk_rows: int = 65536
              ) -> np.ndarray:
    """Returns the [N, C] logits for [N, D] features, read in chunks."""
    logits = np.empty([len(features), len(self.bias)], np.float32)
    for start in range(0, len(features), chunk_rows):
      chunk = np.asarray(features[start:start + chunk_rows], np.float32)
      logits[start:start + len(chunk)] = chunk @ self.weights + self.bias
    return logits


def _chunk_statistics(params, features, labels):
  """Summed cross-entropy over a chunk and its gradient, for G problems at once.

  The G problems' weights are stacked into one [D + 1, G * C] matrix, so that
  the chunk is read once per matmul for all of them. The matmuls run in the
  features' float32; sums are returned in the float64 of `params`, so that the
  optimiser can resolve the objective well below float32's 1e-7 relative
  precision (otherwise the weights would only be determined to about 1e-3 on
  ill-conditioned problems).

  Args:
    params: [G, D + 1, C] float64 weights with the bias as the last row.
    features: [n, D] float32.
    labels: [n] int32 class ids.

  Returns:
    (summed cross-entropy: [G] float64, its gradient transposed:
    [G, C, D + 1] float64).
  """
  num_problems, num_params, num_classes = tf.unstack(tf.shape(params))
  stacked = tf.reshape(tf.transpose(tf.cast(params, features.dtype), [1, 0, 2]),
                       [num_params, num_problems * num_classes])
  logits = tf.reshape(tf.matmul(features, stacked[:-1]) + stacked[-1],
                      [-1, num_problems, num_classes])
  log_normaliser = tf.reduce_logsumexp(logits, axis=2, keepdims=True)
  label_logits = tf.gather(logits, labels, axis=2, batch_dims=1)
  summed_cross_entropy = tf.reduce_sum(
      tf.cast(log_normaliser[..., 0] - label_logits, params.dtype), axis=0)
  residual = tf.reshape(
      tf.exp(logits - log_normaliser)
      - tf.one_hot(labels, num_classes, dtype=logits.dtype)[:, None],
      [-1, num_problems * num_classes])
  # residual^T features ([G C, D]) runs 3-7x faster on CPU than the
  # features^T residual ([D, G C]) that would need no transpose.
  gradient_t = tf.concat([
      tf.matmul(residual, features, transpose_a=True),
      tf.transpose(tf.reduce_sum(residual, axis=0, keepdims=True))], axis=1)
  return summed_cross_entropy, tf.cast(
      tf.reshape(gradient_t, [num_problems, num_classes, num_params]),
      params.dtype)


# XLA measured 2.5-3.5x slower than plain TensorFlow (oneDNN) for this on CPU.
_CHUNK_STATISTICS = {
    jit: tf.function(_chunk_statistics, jit_compile=jit, autograph=False)
    for jit in (False, True)}


def _minimize(summed_statistics, num_examples, initial_params, preconditioner,
              l2, max_iterations, tolerance, *, diagonal, optimizer):
  """Runs batched L-BFGS on G regularised mean cross-entropies, preconditioned.

  Problem g's L-BFGS sees q_g = P_g^T params_g and the gradient P_g^-1 g_g:
  P_g is the lower-triangular `preconditioner[g]` ([D + 1, D + 1]), or with
  `diagonal` the diagonal matrix of `preconditioner[g]` ([D + 1, 1]). Every
  problem has its own L-BFGS state and stopping test; all are evaluated
  together until all have stopped.

  Args:
    summed_statistics: params [G, D + 1, C] -> (summed cross-entropies [G],
      their transposed gradients [G, C, D + 1]) over the whole training set.
    num_examples: N.
    initial_params: [G, D + 1, C] starting points, the bias as last row.
    preconditioner: see `preconditioner`.
    l2: [G] L2 strengths.
    max_iterations, tolerance: see `fit_logistic_regression_grid`.
    diagonal: whether `preconditioner` is diagonal.
    optimizer: a name in `lbfgs.OPTIMIZERS`.

  Returns:
    (params [G, D + 1, C], iterations [G], evaluations [G], converged [G],
    objective values [G]).
  """
  shape = tf.shape(initial_params)
  num_examples = tf.cast(num_examples, initial_params.dtype)
  if diagonal:
    to_params = lambda q: q / preconditioner
    to_q = lambda params: params * preconditioner
    q_gradient_of = lambda gradient: gradient / preconditioner
  else:
    to_params = lambda q: tf.linalg.triangular_solve(
        preconditioner, q, lower=True, adjoint=True)
    to_q = lambda params: tf.matmul(preconditioner, params, transpose_a=True)
    q_gradient_of = lambda gradient: tf.linalg.triangular_solve(
        preconditioner, gradient, lower=True)

  def value_and_gradients(flat_q):
    params = to_params(tf.reshape(flat_q, shape))
    summed_cross_entropy, gradient_t = summed_statistics(params)
    weights = params[:, :-1]
    loss = (summed_cross_entropy / num_examples
            + 0.5 * l2 * tf.reduce_sum(tf.square(weights), axis=[1, 2]))
    gradient = (tf.transpose(gradient_t, [0, 2, 1]) / num_examples
                + l2[:, None, None] * tf.pad(weights, [[0, 0], [0, 1], [0, 0]]))
    return loss, tf.reshape(q_gradient_of(gradient), [shape[0], -1])

  optimum = lbfgs.OPTIMIZERS.get(optimizer)(
      value_and_gradients, tf.reshape(to_q(initial_params), [shape[0], -1]),
      max_iterations, tolerance)
  return (to_params(tf.reshape(optimum.position, shape)), optimum.iterations,
          optimum.evaluations, optimum.converged, optimum.values)


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
        (tf.constant(0), tf.zeros(tf.shape(params)[:1], params.dtype),
         tf.zeros(tf.gather(tf.shape(params), [0, 2, 1]), params.dtype)),
        parallel_iterations=2)
    return cross_entropy, gradient
  return summed_statistics


def _minimize_in_memory(features, labels, block_size, *options, jit_compile,
                        **settings):
  """L-BFGS over in-memory features, evaluated in cache-sized row blocks."""
  def read_block(index):
    rows = slice(index * block_size, (index + 1) * block_size)
    return features[rows], labels[rows]

  num_examples = tf.shape(labels)[0]
  num_blocks = (num_examples + block_size - 1) // block_size
  return _minimize(_summed_over_chunks(read_block, num_blocks, jit_compile),
                   num_examples, *options, **settings)


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
                      jit_compile, **settings):
  """L-BFGS whose every evaluation streams the chunks from NumPy arrays."""
  def read_chunk(index):
    features, labels = tf.numpy_function(
        _read_chunk, [source_key, index], (tf.float32, tf.int32),
        stateful=False)
    return (tf.ensure_shape(features, [None, None]),
            tf.ensure_shape(labels, [None]))

  return _minimize(_summed_over_chunks(read_chunk, num_chunks, jit_compile),
                   num_examples, *options, **settings)


# initial_params [G, D + 1, C], preconditioner [G, D + 1, D + 1 or 1], l2 [G],
# max_iterations, tolerance; the optimiser's state is float64 (see
# `_chunk_statistics`).
_OPTIONS_SPEC = (tf.TensorSpec([None, None, None], tf.float64),
                 tf.TensorSpec([None, None, None], tf.float64),
                 tf.TensorSpec([None], tf.float64),
                 tf.TensorSpec([], tf.int32),
                 tf.TensorSpec([], tf.float64))
_SCALAR_INT = tf.TensorSpec([], tf.int32)
_SOURCE_SPECS = {
    "in_memory": (tf.TensorSpec([None, None], tf.float32),
                  tf.TensorSpec([None], tf.int32), _SCALAR_INT),
    "chunked": (tf.TensorSpec([], tf.int64), _SCALAR_INT, _SCALAR_INT)}
_SOURCE_MINIMIZERS = {"in_memory": _minimize_in_memory,
                      "chunked": _minimize_chunked}


@functools.lru_cache(maxsize=None)
def _traced_minimizer(source, jit_compile, diagonal, optimizer):
  """The tf.function of `_minimize_in_memory` or `_minimize_chunked`.

  Traced once per process and setting: shapes are left unknown, so that every
  split, end point and L2 value reuses the same graph.
  """
  return tf.function(
      functools.partial(_SOURCE_MINIMIZERS[source], jit_compile=jit_compile,
                        diagonal=diagonal, optimizer=optimizer),
      input_signature=_SOURCE_SPECS[source] + _OPTIONS_SPEC, autograph=False)


# In-memory features are processed in blocks of about this many bytes, which
# stay in the CPU cache between the forward and the gradient matmul.
_BLOCK_BYTES = 16 << 20


# Relative jitters tried in turn by `preconditioner`.
_JITTERS = (1e-6, 1e-4, 1e-2, 1.0)

# The preconditioners `fit_logistic_regression_grid` takes.
PRECONDITIONERS = ("full", "diagonal", "none")


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


def _check_inputs(features, labels, num_classes) -> np.ndarray:
  """Returns the labels as an array; raises ValueError for bad shapes/ids."""
  labels = np.asarray(labels)
  if features.ndim != 2 or labels.shape != features.shape[:1]:
    raise ValueError(
        f"Expected features [N, D] and labels [N]; got {features.shape} and "
        f"{labels.shape}. Flatten or pool feature maps first.")
  if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
    raise ValueError(f"Labels must lie in [0, {num_classes}); got "
                     f"[{labels.min()}, {labels.max()}]. Check num_classes.")
  return labels


def _initial_fits(initial, num_problems):
  """`initial` (see the grid fit) as a list of G fits, or None."""
  if initial is None or isinstance(initial, LogisticRegressionResult):
    return None if initial is None else [initial] * num_problems
  if len(initial) != num_problems:
    raise ValueError(f"Expected {num_problems} initial fits, got "
                     f"{len(initial)}.")
  return list(initial)


def _initial_params(initial_fits, num_problems, dim, num_classes
                    ) -> np.ndarray:
  """[G, D + 1, C] starting points: the fits' weights, or zeros."""
  if initial_fits is None:
    return np.zeros([num_problems, dim + 1, num_classes])
  return np.stack([np.concatenate([fit.weights, fit.bias[None]])
                   for fit in initial_fits])


def fit_logistic_regression_grid(
    features: np.ndarray,
    labels: np.ndarray,
    num_classes: int,
    l2_grid: Sequence[float],
    max_iterations: int = 1000,
    tolerance: float = 2e-5,
    chunk_size: Optional[int] = None,
    initial: Union[None, LogisticRegressionResult,
                   Sequence[LogisticRegressionResult]] = None,
    second_moment: Optional[np.ndarray] = None,
    precondition: Optional[str] = None,
    optimizer: str = "ours",
    jit_compile: bool = False,
) -> List[LogisticRegressionResult]:
  """Fits one multinomial logistic regression per L2 value, side by side.

  The G = len(l2_grid) problems run as one batched L-BFGS: every evaluation
  reads the features once, in one [n, D] x [D, G C] matmul per row block,
  for all of them; each problem keeps its own L-BFGS state and stopping test
  (a stopped problem no longer moves), and the fit ends when all have
  stopped. Each problem minimises mean cross-entropy + l2 / 2 * ||W||^2 (the
  bias is not penalised); the features and matmuls are float32, the optimiser
  state float64. The first call in a process traces the optimiser graph (a
  few seconds); later calls of any shape and G reuse it.

  Stopping test: a problem has converged when the largest absolute entry of
  its gradient in L-BFGS's coordinates, P^-1 g (see `preconditioner`), is at
  most `tolerance`. It does not depend on the features' units: scaling them
  (all by one constant, or each by its own) leaves P^-1 g unchanged. In these
  coordinates the objective's Hessian at W = 0 is about the identity, so
  that, near the optimum, the objective is within about
  (D + 1) C tolerance^2 / 2 of its minimum (g^T A^-1 g / 2, the Newton
  decrement); in particular a fit from W = 0 stops at once only when
  W = 0 is that close to optimal.

  Args:
    features: [N, D] array; with `chunk_size` it may be larger than memory:
      a memory-mapped array or `features.StackedRows` (anything that slicing
      reads), of which only `chunk_size` rows are read at a time.
    labels: [N] integer class ids in [0, num_classes).
    num_classes: C.
    l2_grid: the G L2 strengths on the weights, absolute (scikit-learn's
      C = 1 / (l2 * N)).
    max_iterations: L-BFGS iteration budget.
    tolerance: see the stopping test above.
    chunk_size: if set, the losses and gradients are accumulated over chunks
      of this many rows read from `features` at every evaluation, so that only
      one chunk is in (device) memory at a time.
    initial: a previous fit to start every problem from, or one per L2 value
      (warm starts); zeros otherwise.
    second_moment: `feature_second_moment(features)` (full, or its diagonal
      for the diagonal preconditioner), if already computed; it does not
      depend on `l2`: pass it to fits that share features.
    precondition: "full" (Cholesky factors of the Hessian at zero: the
      [D + 1, D + 1] second moment costs O(max(8192, 2 D) D^2) once, the G
      factors O(G D^3 / 3) and 8 G (D + 1)^2 bytes, each evaluation 2 G
      triangular solves, O(G D^2 C)), "diagonal" (its diagonal), or "none"
      (plain L-BFGS on [W; b], whose stopping test, scikit-learn's `tol`,
      then depends on the features' units; for comparisons). Default
      (None): `default_preconditioner`, "full" when N > D.
    optimizer: "ours" or "tfp" (`lbfgs.OPTIMIZERS`): the same objective,
      coordinates and stopping test.
    jit_compile: compile the loss and gradient computation with XLA (slower on
      CPU; may help on accelerators).

  Returns:
    One LogisticRegressionResult per L2 value, in `l2_grid`'s order.

  Raises:
    ValueError: for mismatched shapes, labels outside [0, num_classes), a
      wrong number of initial fits, an unknown preconditioner or optimizer.
  """
  labels = _check_inputs(features, labels, num_classes)
  lbfgs.OPTIMIZERS.get(optimizer)
  l2 = np.asarray(l2_grid, np.float64)
  initial_fits = _initial_fits(initial, len(l2))
  initial_params = _initial_params(initial_fits, len(l2), features.shape[1],
                                   num_classes)
  if precondition is None:
    precondition = default_preconditioner(features)
  if precondition not in PRECONDITIONERS:
    raise ValueError(f"precondition must be one of {PRECONDITIONERS}; got "
                     f"{precondition!r}.")
  diagonal = precondition != "full"
  if precondition == "none":
    factor = tf.ones([1, features.shape[1] + 1, 1], tf.float64)
  else:
    if second_moment is None:
      second_moment = feature_second_moment(features, diagonal=diagonal)
    elif diagonal and second_moment.ndim == 2:
      second_moment = np.diagonal(second_moment)
    elif not diagonal and second_moment.ndim == 1:
      raise ValueError("The full preconditioner needs the full second moment, "
                       "feature_second_moment(features); got its diagonal.")
    factor = preconditioner(second_moment, num_classes, l2)
  options = (tf.constant(initial_params, tf.float64), factor,
             tf.constant(l2, tf.float64), tf.constant(max_iterations),
             tf.constant(tolerance, tf.float64))
  traced = functools.partial(_traced_minimizer, jit_compile=jit_compile,
                             diagonal=diagonal, optimizer=optimizer)
  if chunk_size is None or chunk_size >= len(labels):
    block_size = max(1, _BLOCK_BYTES // (4 * features.shape[1]))
    outputs = traced("in_memory")(
        tf.constant(np.asarray(features, np.float32)),
        tf.constant(labels, tf.int32), tf.constant(block_size), *options)
  else:
    source_key = next(_NEXT_SOURCE_KEY)
    _CHUNK_SOURCES[source_key] = (features, labels, chunk_size)
    try:
      outputs = traced("chunked")(
          tf.constant(source_key, tf.int64), tf.constant(len(labels)),
          tf.constant(-(-len(labels) // chunk_size)), *options)
    finally:
      del _CHUNK_SOURCES[source_key]
  params, iterations, evaluations, converged, loss = (
      o.numpy() for o in outputs)
  params = params.astype(np.float32)
  return [LogisticRegressionResult(
      weights=params[g, :-1], bias=params[g, -1],
      iterations=int(iterations[g]), evaluations=int(evaluations[g]),
      converged=bool(converged[g]), loss=float(loss[g]),
      path_iterations=int(iterations[g]) + (
          initial_fits[g].path_iterations if initial_fits else 0),
      hit_max_iterations=bool(not converged[g]
                              and iterations[g] >= max_iterations))
          for g in range(len(l2))]


def fit_logistic_regression(
    features: np.ndarray,
    labels: np.ndarray,
    num_classes: int,
    l2: float,
    initial: Optional[LogisticRegressionResult] = None,
    **options,
) -> LogisticRegressionResult:
  """Fits multinomial logistic regression with full-batch L-BFGS.

  `fit_logistic_regression_grid` with the single L2 value `l2`; see there for
  the other arguments (`options`).
  """
  return fit_logistic_regression_grid(features, labels, num_classes, [l2],
                                      initial=initial, **options)[0]


def top_k_accuracy(logits: np.ndarray, labels: np.ndarray, k: int) -> float:
  """Fraction of rows whose label is among the k largest logits ([N, C])."""
  k = min(k, logits.shape[1])
  top_k = np.argpartition(-logits, k - 1, axis=1)[:, :k]
  return float(np.mean(np.any(top_k == labels[:, None], axis=1)))


# Cholesky factors of a batch of the L2 grid take at most about this many
# bytes (8 G (D + 1)^2); larger grids are fitted in consecutive batches.
_FACTOR_BYTES = 1 << 30


def default_grid_batch_size(dim: int) -> int:
  """How many L2 values to fit side by side at D = `dim` features."""
  return max(1, _FACTOR_BYTES // (8 * (dim + 1) ** 2))


@dataclasses.dataclass(frozen=True)
class ProtocolResult:
  """The fits of the linear protocol.

  Attributes:
    l2_grid: the relative L2 values fitted, strongest first: the given grid
      and the decades added at its ends (see `linear_protocol`).
    l2_unit: the absolute L2 of relative L2 1 (the train features' mean
      square; 1 for an absolute grid). Fit g used l2_grid[g] * l2_unit.
    grid_fits: the fit on `train` for each L2 value.
    val_top1: each grid fit's top-1 on `val` (a fraction).
    best: index of the chosen L2 value (the first with the best `val_top1`).
    final: the refit on `trainval` with the chosen L2 value.
  """
  l2_grid: Tuple[float, ...]
  l2_unit: float
  grid_fits: Tuple[LogisticRegressionResult, ...]
  val_top1: Tuple[float, ...]
  best: int
  final: LogisticRegressionResult

  @property
  def l2_at_edge(self) -> bool:
    """Whether the chosen L2 is the strongest or weakest of a grid of two or
    more values (after the grid's extension)."""
    return len(self.l2_grid) > 1 and self.best in (0, len(self.l2_grid) - 1)


def _decade(l2: float, factor: float) -> float:
  """l2 * factor without the float noise of repeated products (1e-4 * 0.1
  gives 1e-05, not 1.0000000000000001e-05)."""
  return float(f"{l2 * factor:.12g}")


def linear_protocol(
    train: Split,
    val: Split,
    trainval: Split,
    num_classes: int,
    l2_grid: Sequence[float],
    grid_batch_size: Optional[int] = None,
    relative_l2: bool = True,
    max_extra_decades: int = 4,
    precondition: Optional[str] = None,
    **fit_options,
) -> ProtocolResult:
  """Fits the L2 grid on `train`, picks on `val`, refits on `trainval`.

  The L2 values are relative to the features' scale: value l means the
  absolute L2 l * E[x^2], E[x^2] the train features' mean square
  (`mean_square`). Multiplying the features by a multiplies the optimal
  weights by 1 / a and the absolute L2 that gives the same classifier by
  a^2, as E[x^2]: so the same relative grid selects the same classifiers at
  any scale of the features (with the scale-free preconditioner and stopping
  test of `fit_logistic_regression_grid`).

  The grid, sorted from strong to weak regularisation, is fitted in batches of
  `grid_batch_size` L2 values, each batch one batched L-BFGS
  (`fit_logistic_regression_grid`) warm-started from the previous batch's
  last (weakest) fit. While the best value on `val` is the grid's strongest
  (weakest), the grid grows by one decade at that end (L2 x 10, resp. / 10;
  a fit warm-started from the end's fit), at most `max_extra_decades` at
  each end; `ProtocolResult.l2_at_edge` says whether the choice still ends
  at an edge. The trainval refit starts from the chosen train fit. The
  features' second moment (the preconditioner's) is computed once, on
  `train`, and shared by all fits, the trainval refit included: it only
  steers the path, not the optimum.

  Args:
    train, val, trainval: (features [N, D], labels [N]) splits.
    num_classes: C.
    l2_grid: candidate L2 strengths, relative (or absolute, see
      `relative_l2`).
    grid_batch_size: L2 values per batch; default `default_grid_batch_size`
      (the whole grid unless D is in the thousands); 1 is the sequential
      warm-started sweep.
    relative_l2: whether `l2_grid` is relative to E[x^2]; False: absolute L2
      values, as the release used them (on its features' own scale).
    max_extra_decades: decades the grid may grow at each end (0: never).
    precondition: see `fit_logistic_regression_grid`.
    **fit_options: max_iterations, tolerance, chunk_size, optimizer,
      jit_compile for `fit_logistic_regression_grid`.

  Returns:
    The ProtocolResult.
  """
  l2_grid = sorted({float(l2) for l2 in l2_grid}, reverse=True)
  if precondition is None:
    precondition = default_preconditioner(train[0])
  second_moment = feature_second_moment(
      train[0], diagonal=precondition != "full")
  unit = mean_square(second_moment) if relative_l2 else 1.0
  grid_batch_size = grid_batch_size or default_grid_batch_size(
      train[0].shape[1])

  def fit(features_labels, l2_values, initial):
    return fit_logistic_regression_grid(
        *features_labels, num_classes, [unit * l2 for l2 in l2_values],
        initial=initial, second_moment=second_moment,
        precondition=precondition, **fit_options)

  def val_top1(grid_fit):
    return top_k_accuracy(grid_fit.predict(val[0]), val[1], 1)

  grid_fits = []
  for start in range(0, len(l2_grid), grid_batch_size):
    grid_fits += fit(train, l2_grid[start:start + grid_batch_size],
                     grid_fits[-1] if grid_fits else None)
  accuracies = [val_top1(grid_fit) for grid_fit in grid_fits]
  added = {"strong": 0, "weak": 0}
  while len(l2_grid) > 1:
    best = int(np.argmax(accuracies))
    if best == 0 and added["strong"] < max_extra_decades:
      added["strong"] += 1
      l2_grid.insert(0, _decade(l2_grid[0], 10))
      grid_fits.insert(0, fit(train, l2_grid[:1], grid_fits[0])[0])
      accuracies.insert(0, val_top1(grid_fits[0]))
    elif best == len(l2_grid) - 1 and added["weak"] < max_extra_decades:
      added["weak"] += 1
      l2_grid.append(_decade(l2_grid[-1], 0.1))
      grid_fits.append(fit(train, l2_grid[-1:], grid_fits[-1])[0])
      accuracies.append(val_top1(grid_fits[-1]))
    else:
      break
  best = int(np.argmax(accuracies))
  final = fit(trainval, [l2_grid[best]], grid_fits[best])[0]
  return ProtocolResult(l2_grid=tuple(l2_grid), l2_unit=unit,
                        grid_fits=tuple(grid_fits), val_top1=tuple(accuracies),
                        best=best, final=final)


@gin.configurable(denylist=["train", "val", "trainval", "test", "num_classes"])
def select_l2_and_fit(
    train: Split,
    val: Split,
    trainval: Split,
    test: Split,
    num_classes: int,
    l2_grid: Sequence[float] = tuple(10.0 ** np.arange(-6, 1)),
    relative_l2: bool = True,
    max_extra_decades: int = 4,
    max_iterations: int = 1000,
    tolerance: float = 2e-5,
    optimizer: str = "ours",
    chunk_size: Optional[int] = None,
    grid_batch_size: Optional[int] = None,
) -> Dict[str, Any]:
  """The paper's protocol: L2 chosen on train -> val, refit on trainval.

  See `linear_protocol` (the relative grid and its extension) and
  `fit_logistic_regression_grid` (the stopping test).

  Args:
    train, val, trainval, test: (features [N, D], labels [N]) splits.
    num_classes: C.
    l2_grid: candidate L2 strengths, relative to the train features' mean
      square unless `relative_l2` is False.
    relative_l2, max_extra_decades, grid_batch_size: see `linear_protocol`.
    max_iterations, tolerance, optimizer, chunk_size: passed to
      `fit_logistic_regression_grid`.

  Returns:
    A row: test `top1`, `top5` (fractions); the chosen `l2` (in the grid's
    unit) and `l2_absolute`; `l2_grid` (the values fitted, strongest first)
    and `l2_at_edge`; the `val_top1` of the chosen L2; the final fit's
    `iterations`, `evaluations`, `converged`, `hit_max_iterations` and
    `stopped_early` (fewer than 3 L-BFGS iterations from zero to the final
    weights, warm starts included); the `optimizer`; the total `wall_time_s`.
  """
  start = time.perf_counter()
  result = linear_protocol(
      train, val, trainval, num_classes, l2_grid,
      grid_batch_size=grid_batch_size, relative_l2=relative_l2,
      max_extra_decades=max_extra_decades, max_iterations=max_iterations,
      tolerance=tolerance, optimizer=optimizer, chunk_size=chunk_size)
  test_logits = result.final.predict(test[0])
  l2 = result.l2_grid[result.best]
  return dict(
      top1=top_k_accuracy(test_logits, test[1], 1),
      top5=top_k_accuracy(test_logits, test[1], 5),
      l2=float(l2),
      l2_absolute=float(l2 * result.l2_unit),
      l2_grid=[float(value) for value in result.l2_grid],
      l2_at_edge=result.l2_at_edge,
      val_top1=result.val_top1[result.best],
      iterations=result.final.iterations,
      evaluations=result.final.evaluations,
      converged=result.final.converged,
      hit_max_iterations=result.final.hit_max_iterations,
      stopped_early=result.final.stopped_early,
      optimizer=optimizer,
      wall_time_s=time.perf_counter() - start)


def fit_problems(row: Dict[str, Any]) -> List[str]:
  """What a result row's diagnostics say went wrong with its fit ([] if
  nothing, or if the row has no diagnostics)."""
  problems = []
  if row.get("stopped_early"):
    problems.append("the L-BFGS fit stopped after fewer than 3 iterations "
                    "(features without signal, or a bad tolerance?)")
  if row.get("hit_max_iterations"):
    problems.append(f"the final fit hit max_iterations ({row['iterations']}) "
                    "before converging: raise select_l2_and_fit.max_iterations")
  if row.get("l2_at_edge"):
    grid = row["l2_grid"]
    problems.append(f"the chosen L2 {row['l2']:g} is at the edge of the grid "
                    f"{grid[0]:g}..{grid[-1]:g} even after its extension")
  return problems
