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

The L2 grid is fitted as one batched L-BFGS (`fit_logistic_regression_grid`):
G problems side by side, whose every evaluation reads the features once for
all of them, each with its own history and stopping test. The L-BFGS is our
own (`_lbfgs_minimize`): its line search accepts the unit step when it
decreases the objective enough, so that it needs about one evaluation per
iteration where tfp's Hager-Zhang search needed 2.5 to 3.
"""
import dataclasses
import functools
import itertools
import time
from typing import Dict, List, Optional, Sequence, Tuple, Union

import gin
import numpy as np
import tensorflow as tf

# (features [N, D], labels [N]) as NumPy arrays (memory-mapped arrays work).
Split = Tuple[np.ndarray, np.ndarray]


@dataclasses.dataclass(frozen=True)
class LogisticRegressionResult:
  """A fitted linear classifier.

  Attributes:
    weights: [D, C] float32 weights.
    bias: [C] float32 bias.
    iterations: L-BFGS iterations run.
    evaluations: loss-and-gradient evaluations over the training set (about
      one per iteration once the unit step is accepted).
    converged: whether L-BFGS stopped on its criterion (largest entry of the
      preconditioned gradient at most the tolerance) rather than on the
      iteration budget or a line search that found no lower point.
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


# L-BFGS settings: pairs kept, Armijo constant, relative change of the
# objective that counts as no change, line search trials at most.
_MEMORY = 10
_ARMIJO = 1e-4
_FLAT = 1e-7
_MAX_STEP_TRIALS = 30


def _lbfgs_direction(gradient, steps, changes, rho, gamma):
  """The L-BFGS two-loop recursion for G problems at once.

  Args:
    gradient: [G, n].
    steps, changes: [m, G, n] the last m position steps s and gradient
      changes y, oldest first; unused or skipped pairs are zero.
    rho: [m, G] 1 / (s^T y), zero for unused pairs.
    gamma: [G] the initial inverse Hessian scale s^T y / y^T y.

  Returns:
    [G, n] the search direction -H g.
  """
  alphas = []
  q = gradient
  for i in reversed(range(_MEMORY)):
    alpha = rho[i] * tf.reduce_sum(steps[i] * q, axis=1)
    q -= alpha[:, None] * changes[i]
    alphas.append(alpha)
  r = gamma[:, None] * q
  for i, alpha in zip(range(_MEMORY), reversed(alphas)):
    beta = rho[i] * tf.reduce_sum(changes[i] * r, axis=1)
    r += (alpha - beta)[:, None] * steps[i]
  return -r


def _line_search(value_and_gradients, position, value, direction, slope,
                 active):
  """Backtracking from the unit step until the Armijo condition holds.

  Every problem starts at step 1 (accepted at once near the optimum, where
  L-BFGS's steps are well scaled) and, while it fails, takes the minimiser of
  the quadratic through f(0), f'(0) and f(step), kept in [0.1, 0.5] step.

  Args:
    value_and_gradients: [G, n] -> ([G], [G, n]).
    position, direction: [G, n].
    value, slope: [G] f(0) and its directional derivative (negative).
    active: [G] problems that search; the others keep their position.

  Returns:
    (position [G, n], value [G], gradient [G, n], found [G], evaluations).
  """
  def trial(step, found, *_):
    new_position = position + step[:, None] * direction
    new_value, new_gradient = value_and_gradients(new_position)
    decrease = new_value - value
    # Armijo, or Hager and Zhang's approximate Wolfe condition for when the
    # decrease is below the objective's float32 rounding.
    approximate_wolfe = (
        (decrease <= _FLAT * tf.abs(value))
        & (tf.reduce_sum(new_gradient * direction, axis=1)
           <= (2 * _ARMIJO - 1) * slope))
    ok = found | (tf.math.is_finite(new_value)
                  & ((decrease <= _ARMIJO * step * slope) | approximate_wolfe))
    quadratic = -slope * step ** 2 / (2.0 * (decrease - slope * step))
    next_step = tf.where(
        tf.math.is_finite(quadratic),
        tf.clip_by_value(quadratic, 0.1 * step, 0.5 * step), 0.1 * step)
    return (tf.where(ok, step, next_step), ok, new_position, new_value,
            new_gradient)

  def body(step, found, best_position, best_value, best_gradient, trials):
    new_step, ok, new_position, new_value, new_gradient = trial(step, found)
    newly = ok & ~found
    return (new_step, ok,
            tf.where(newly[:, None], new_position, best_position),
            tf.where(newly, new_value, best_value),
            tf.where(newly[:, None], new_gradient, best_gradient),
            trials + 1)

  step = tf.ones_like(value)
  found = ~active
  _, found, position, value, gradient, trials = tf.while_loop(
      lambda step, found, *args: (~tf.reduce_all(found))
      & (args[-1] < _MAX_STEP_TRIALS),
      body, (step, found, position, value, tf.zeros_like(position),
             tf.constant(0)))
  return position, value, gradient, found, trials


def _lbfgs_minimize(value_and_gradients, initial_position, max_iterations,
                    tolerance):
  """Batched L-BFGS whose line search tries the unit step first.

  Each of the G problems has its own history, stopping test and line search;
  a stopped problem no longer moves, and the loop runs until all have stopped
  or `max_iterations`. Pairs with s^T y <= 1e-10 y^T y are not stored (the
  curvature condition is not enforced by the line search).

  Args:
    value_and_gradients: [G, n] -> (values [G], gradients [G, n]).
    initial_position: [G, n] float64.
    max_iterations: iteration budget of the batch.
    tolerance: a problem converges when its gradient's largest absolute entry
      is at most this.

  Returns:
    (position [G, n], iterations, evaluations, converged [G], values [G]).
  """
  value, gradient = value_and_gradients(initial_position)
  converged = tf.reduce_max(tf.abs(gradient), axis=1) <= tolerance
  history = tf.zeros(tf.concat([[_MEMORY], tf.shape(initial_position)], 0),
                     initial_position.dtype)

  def body(iteration, evaluations, position, value, gradient, steps, changes,
           rho, gamma, converged, failed):
    active = ~(converged | failed)
    direction = _lbfgs_direction(gradient, steps, changes, rho, gamma)
    slope = tf.reduce_sum(direction * gradient, axis=1)
    # Not a descent direction (rounding): steepest descent instead.
    descent = slope < 0
    direction = tf.where(descent[:, None], direction, -gradient)
    slope = tf.where(descent, slope, -tf.reduce_sum(gradient ** 2, axis=1))
    new_position, new_value, new_gradient, found, trials = _line_search(
        value_and_gradients, position, value, direction, slope, active)
    moved = active & found
    step = tf.where(moved[:, None], new_position - position, 0.0)
    change = tf.where(moved[:, None], new_gradient - gradient, 0.0)
    step_change = tf.reduce_sum(step * change, axis=1)
    change_change = tf.reduce_sum(change * change, axis=1)
    curved = moved & (step_change > 1e-10 * change_change)
    return (
        iteration + 1, evaluations + trials,
        tf.where(moved[:, None], new_position, position),
        tf.where(moved, new_value, value),
        tf.where(moved[:, None], new_gradient, gradient),
        tf.concat([steps[1:], tf.where(curved[:, None], step, 0.0)[None]], 0),
        tf.concat([changes[1:], tf.where(curved[:, None], change, 0.0)[None]],
                  0),
        tf.concat([rho[1:], tf.where(curved, 1.0 / step_change, 0.0)[None]],
                  0),
        tf.where(curved, step_change / change_change, gamma),
        converged | (moved & (tf.reduce_max(tf.abs(new_gradient), axis=1)
                              <= tolerance)),
        failed | (active & ~found))

  iteration, evaluations, position, value, _, _, _, _, _, converged, _ = (
      tf.while_loop(
          lambda iteration, _, *state: (
              (iteration < max_iterations)
              & ~tf.reduce_all(state[-2] | state[-1])),
          body,
          (tf.constant(0), tf.constant(1), initial_position, value, gradient,
           history, history, history[:, :, 0], tf.ones_like(value),
           converged, tf.zeros_like(converged))))
  return position, iteration, evaluations, converged, value


def _minimize(summed_statistics, num_examples, initial_params, preconditioner,
              l2, max_iterations, tolerance):
  """Runs batched L-BFGS on G regularised mean cross-entropies, preconditioned.

  Problem g's L-BFGS sees q_g = L_g^T params_g and the gradient L_g^-1 g_g,
  where L_g is the lower-triangular `preconditioner[g]`. Every problem has its
  own L-BFGS state and stopping test; all are evaluated together until all
  have stopped.

  Args:
    summed_statistics: params [G, D + 1, C] -> (summed cross-entropies [G],
      their transposed gradients [G, C, D + 1]) over the whole training set.
    num_examples: N.
    initial_params: [G, D + 1, C] starting points, the bias as last row.
    preconditioner: [G, D + 1, D + 1] lower-triangular L_g (see
      `preconditioner`).
    l2: [G] L2 strengths.
    max_iterations, tolerance: see `fit_logistic_regression_grid`.

  Returns:
    (params [G, D + 1, C], iterations (of the batch), evaluations (of the
    batch), converged [G], objective values [G]).
  """
  shape = tf.shape(initial_params)
  num_examples = tf.cast(num_examples, initial_params.dtype)

  def to_params(flat_q):
    return tf.linalg.triangular_solve(
        preconditioner, tf.reshape(flat_q, shape), lower=True, adjoint=True)

  def value_and_gradients(flat_q):
    params = to_params(flat_q)
    summed_cross_entropy, gradient_t = summed_statistics(params)
    weights = params[:, :-1]
    loss = (summed_cross_entropy / num_examples
            + 0.5 * l2 * tf.reduce_sum(tf.square(weights), axis=[1, 2]))
    gradient = (tf.transpose(gradient_t, [0, 2, 1]) / num_examples
                + l2[:, None, None] * tf.pad(weights, [[0, 0], [0, 1], [0, 0]]))
    q_gradient = tf.linalg.triangular_solve(preconditioner, gradient,
                                            lower=True)
    return loss, tf.reshape(q_gradient, [shape[0], -1])

  initial_q = tf.matmul(preconditioner, initial_params, transpose_a=True)
  position, iterations, evaluations, converged, value = _lbfgs_minimize(
      value_and_gradients, tf.reshape(initial_q, [shape[0], -1]),
      max_iterations, tolerance)
  return to_params(position), iterations, evaluations, converged, value


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


# initial_params [G, D + 1, C], preconditioner [G, D + 1, D + 1], l2 [G],
# max_iterations, tolerance; the optimiser's state is float64 (see
# `_chunk_statistics`).
_OPTIONS_SPEC = (tf.TensorSpec([None, None, None], tf.float64),
                 tf.TensorSpec([None, None, None], tf.float64),
                 tf.TensorSpec([None], tf.float64),
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


# Relative jitters tried in turn by `preconditioner`.
_JITTERS = (1e-6, 1e-4, 1e-2, 1.0)


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
                   l2) -> tf.Tensor:
  """The Cholesky factors L of the objective's Hessian at W = 0 (per class).

  At W = 0 every class has probability 1 / C, and the Hessian of the mean
  cross-entropy w.r.t. one class's [w; b] is M (1 / C - 1 / C^2): we use
  A = M / C + l2 diag(1, ..., 1, 0) plus a jitter of 1e-6 of A's mean diagonal
  that keeps A positive definite for constant features. M is summed in
  float32, so its smallest eigenvalues can come out negative by about 1e-7 of
  its largest (measured: -0.019 against 3.3e5 on 4096 post-ReLU features);
  when A's factorisation fails the jitter grows 100-fold until it succeeds.
  The jitter changes L-BFGS's path, never the optimum. The second moment M is
  shared by all L2 values; each gets its own O(D^3 / 3) factorisation.

  Args:
    second_moment: [D + 1, D + 1] M, see `feature_second_moment`.
    num_classes: C.
    l2: the L2 strength, a float or a [G] array of them.

  Returns:
    [D + 1, D + 1] (or [G, D + 1, D + 1] for [G] `l2`) lower-triangular
    float64 L with L L^T = A.
  """
  size = len(second_moment)
  l2 = np.asarray(l2, np.float64)[..., None, None]
  hessian = second_moment / num_classes + l2 * np.diag(
      np.append(np.ones(size - 1), 0.0))
  mean_diagonal = np.trace(hessian, axis1=-2, axis2=-1)[..., None, None] / size
  for relative_jitter in _JITTERS:
    try:
      factor = tf.linalg.cholesky(tf.constant(
          hessian + relative_jitter * mean_diagonal * np.eye(size), tf.float64))
    except tf.errors.InvalidArgumentError:  # not positive definite
      continue
    if np.all(np.isfinite(factor.numpy())):
      return factor
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


def _initial_params(initial, num_problems, dim, num_classes) -> np.ndarray:
  """[G, D + 1, C] starting points from `initial` (see the grid fit)."""
  if initial is None:
    return np.zeros([num_problems, dim + 1, num_classes])
  if isinstance(initial, LogisticRegressionResult):
    initial = [initial] * num_problems
  if len(initial) != num_problems:
    raise ValueError(f"Expected {num_problems} initial fits, got "
                     f"{len(initial)}.")
  return np.stack([np.concatenate([fit.weights, fit.bias[None]])
                   for fit in initial])


def fit_logistic_regression_grid(
    features: np.ndarray,
    labels: np.ndarray,
    num_classes: int,
    l2_grid: Sequence[float],
    max_iterations: int = 1000,
    tolerance: float = 1e-4,
    chunk_size: Optional[int] = None,
    initial: Union[None, LogisticRegressionResult,
                   Sequence[LogisticRegressionResult]] = None,
    second_moment: Optional[np.ndarray] = None,
    precondition: Optional[bool] = None,
    jit_compile: bool = False,
) -> List[LogisticRegressionResult]:
  """Fits one multinomial logistic regression per L2 value, side by side.

  The G = len(l2_grid) problems run as one batched L-BFGS: every evaluation
  reads the features once, in one [n, D] x [D, G C] matmul per row block,
  for all of them; each problem keeps its own L-BFGS state and stopping test
  (a stopped problem no longer moves), and the fit ends when all have
  stopped. Each problem minimises mean cross-entropy + l2 / 2 * ||W||^2 (the
  bias is not penalised); the features and matmuls are float32, the optimiser
  state float64. Standardising the features is left to the caller. The first
  call in a process traces the optimiser graph (a few seconds); later calls of
  any shape and G reuse it.

  Args:
    features: [N, D] array; with `chunk_size` it may be larger than memory:
      a memory-mapped array or `features.StackedRows` (anything that slicing
      reads), of which only `chunk_size` rows are read at a time.
    labels: [N] integer class ids in [0, num_classes).
    num_classes: C.
    l2_grid: the G L2 strengths on the weights (scikit-learn's
      C = 1 / (l2 * N)).
    max_iterations: L-BFGS iteration budget (of the batch).
    tolerance: a problem stops when the largest absolute entry of its gradient
      in L-BFGS's coordinates is below this: the preconditioned gradient
      L^-1 g (see the module docstring), or g itself without `precondition`
      (then it is scikit-learn's `tol` for its lbfgs solver). Near the optimum
      the objective is then within about D * C * tolerance^2 / 2 of its
      minimum.
    chunk_size: if set, the losses and gradients are accumulated over chunks
      of this many rows read from `features` at every evaluation, so that only
      one chunk is in (device) memory at a time.
    initial: a previous fit to start every problem from, or one per L2 value
      (warm starts); zeros otherwise.
    second_moment: `feature_second_moment(features)`, if already computed
      (it does not depend on `l2`: pass it to fits that share features).
    precondition: run L-BFGS in preconditioned coordinates; the
      [D + 1, D + 1] second moment costs O(max(8192, 2 D) D^2) once, the G
      Cholesky factors O(G D^3 / 3) and 8 G (D + 1)^2 bytes, and each
      evaluation 2 G triangular solves, O(G D^2 C). Default (None): only when
      N > D.
    jit_compile: compile the loss and gradient computation with XLA (slower on
      CPU; may help on accelerators).

  Returns:
    One LogisticRegressionResult per L2 value, in `l2_grid`'s order;
    `iterations` and `evaluations` are the batch's, shared by all.

  Raises:
    ValueError: for mismatched shapes, labels outside [0, num_classes) or a
      wrong number of initial fits.
  """
  labels = _check_inputs(features, labels, num_classes)
  l2 = np.asarray(l2_grid, np.float64)
  initial_params = _initial_params(initial, len(l2), features.shape[1],
                                   num_classes)
  if precondition is None:
    precondition = _preconditioning_pays(features)
  if not precondition:
    # One identity shared by (broadcast to) all problems.
    factor = tf.eye(features.shape[1] + 1, batch_shape=[1], dtype=tf.float64)
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
  return [LogisticRegressionResult(
      weights=params[g, :-1], bias=params[g, -1], iterations=int(iterations),
      evaluations=int(evaluations), converged=bool(converged[g]),
      loss=float(loss[g])) for g in range(len(l2))]


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

  `fit_logistic_regression_grid` with the single L2 value `l2`; see there for
  the other arguments.
  """
  return fit_logistic_regression_grid(
      features, labels, num_classes, [l2], max_iterations=max_iterations,
      tolerance=tolerance, chunk_size=chunk_size, initial=initial,
      second_moment=second_moment, precondition=precondition,
      jit_compile=jit_compile)[0]


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
    l2_grid: the L2 values, strongest first.
    grid_fits: the fit on `train` for each of them.
    val_top1: each grid fit's top-1 on `val` (a fraction).
    best: index of the chosen L2 value (the first with the best `val_top1`).
    final: the refit on `trainval` with the chosen L2 value.
  """
  l2_grid: Tuple[float, ...]
  grid_fits: Tuple[LogisticRegressionResult, ...]
  val_top1: Tuple[float, ...]
  best: int
  final: LogisticRegressionResult


def linear_protocol(
    train: Split,
    val: Split,
    trainval: Split,
    num_classes: int,
    l2_grid: Sequence[float],
    grid_batch_size: Optional[int] = None,
    **fit_options,
) -> ProtocolResult:
  """Fits the L2 grid on `train`, picks on `val`, refits on `trainval`.

  The grid, sorted from strong to weak regularisation, is fitted in batches of
  `grid_batch_size` L2 values, each batch one batched L-BFGS
  (`fit_logistic_regression_grid`) warm-started from the previous batch's
  last (weakest) fit; the trainval refit starts from the chosen train fit.
  The features' second moment (the preconditioner's, see
  `feature_second_moment`) is computed once, on `train`, and shared by all
  fits, the trainval refit included: it only steers the path, not the optimum.

  Args:
    train, val, trainval: (features [N, D], labels [N]) splits.
    num_classes: C.
    l2_grid: candidate L2 strengths.
    grid_batch_size: L2 values per batch; default `default_grid_batch_size`
      (the whole grid unless D is in the thousands); 1 is the sequential
      warm-started sweep.
    **fit_options: max_iterations, tolerance, chunk_size, precondition,
      jit_compile for `fit_logistic_regression_grid`.

  Returns:
    The ProtocolResult.
  """
  l2_grid = tuple(sorted(l2_grid, reverse=True))
  grid_batch_size = grid_batch_size or default_grid_batch_size(
      train[0].shape[1])
  precondition = fit_options.get("precondition")
  if precondition is None:
    precondition = _preconditioning_pays(train[0])
  fit_options.update(
      precondition=precondition,
      second_moment=feature_second_moment(train[0]) if precondition else None)
  grid_fits = []
  for start in range(0, len(l2_grid), grid_batch_size):
    grid_fits += fit_logistic_regression_grid(
        *train, num_classes, l2_grid[start:start + grid_batch_size],
        initial=grid_fits[-1] if grid_fits else None, **fit_options)
  val_top1 = tuple(top_k_accuracy(fit.predict(val[0]), val[1], 1)
                   for fit in grid_fits)
  best = int(np.argmax(val_top1))
  final = fit_logistic_regression(*trainval, num_classes, l2_grid[best],
                                  initial=grid_fits[best], **fit_options)
  return ProtocolResult(l2_grid=l2_grid, grid_fits=tuple(grid_fits),
                        val_top1=val_top1, best=best, final=final)


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
    grid_batch_size: Optional[int] = None,
) -> Dict[str, float]:
  """The paper's protocol: L2 chosen on train -> val, refit on trainval.

  See `linear_protocol`: the grid is fitted as one batched L-BFGS (or a few,
  warm-started one from the other), the trainval refit warm-started from
  the chosen train fit.

  Args:
    train, val, trainval, test: (features [N, D], labels [N]) splits.
    num_classes: C.
    l2_grid: candidate L2 strengths (see `fit_logistic_regression_grid`).
    max_iterations, tolerance, chunk_size: passed to
      `fit_logistic_regression_grid`.
    grid_batch_size: see `linear_protocol`.

  Returns:
    A row with test `top1`, `top5` (fractions), the chosen `l2`, the final
    fit's `iterations` and `converged`, the `val_top1` of the chosen L2 and the
    total `wall_time_s` including the sweep.
  """
  start = time.perf_counter()
  result = linear_protocol(
      train, val, trainval, num_classes, l2_grid,
      grid_batch_size=grid_batch_size, max_iterations=max_iterations,
      tolerance=tolerance, chunk_size=chunk_size)
  test_logits = result.final.predict(test[0])
  return dict(
      top1=top_k_accuracy(test_logits, test[1], 1),
      top5=top_k_accuracy(test_logits, test[1], 5),
      l2=float(result.l2_grid[result.best]),
      val_top1=result.val_top1[result.best],
      iterations=result.final.iterations,
      converged=result.final.converged,
      wall_time_s=time.perf_counter() - start)
