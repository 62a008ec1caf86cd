"""Multinomial logistic regression trained full-batch with batched L-BFGS.

The objective is

  mean_i cross_entropy(x_i W + b, y_i) + l2 / 2 * ||W||^2   (b not penalised),

i.e. scikit-learn's `LogisticRegression` with `C = 1 / (l2 * num_examples)`.
`fit_logistic_regression_grid` fits one problem per L2 value as one batched
L-BFGS (`logistic_objective`): G problems side by side, whose every
evaluation reads the features once for all of them, each with its own
history and stopping test. L-BFGS runs in the preconditioned coordinates of
`preconditioning` and stops when the gradient in those coordinates is small,
so that nothing depends on the features' units. The L-BFGS is ours by default
(`lbfgs.minimize`, about one evaluation per iteration) or
tensorflow-probability's (`optimizer="tfp"`).

The paper's protocol on top of these fits (the L2 grid chosen on val) is
`linear`.
"""
import dataclasses
from typing import List, Optional, Sequence, Union

import numpy as np
import tensorflow as tf

from tfrevisit.evaluation import lbfgs
from tfrevisit.evaluation import logistic_objective
from tfrevisit.evaluation import preconditioning

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


# In-memory features are processed in blocks of about this many bytes, which
# stay in the CPU cache between the forward and the gradient matmul.
_BLOCK_BYTES = 16 << 20

# The preconditioners `fit_logistic_regression_grid` takes.
PRECONDITIONERS = ("full", "diagonal", "none")


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

  Stopping test: a problem has converged when the largest absolute entry of its
  gradient in L-BFGS's coordinates, P^-1 g (see
  `preconditioning.preconditioner`), is at most `tolerance`. It does not depend
  on the features' units: scaling them (all by one constant, or each by its own)
  leaves P^-1 g unchanged. In these coordinates the objective's Hessian at W = 0
  is about the identity, so that, near the optimum, the objective is within
  about (D + 1) C tolerance^2 / 2 of its minimum (g^T A^-1 g / 2, the Newton
  decrement); in particular a fit from W = 0 stops at once only when W = 0 is
  that close to optimal.

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
    second_moment: `preconditioning.feature_second_moment(features)` (full,
      or its diagonal for the diagonal preconditioner), if already computed;
      it does not depend on `l2`: pass it to fits that share features.
    precondition: "full" (Cholesky factors of the Hessian at zero: the
      [D + 1, D + 1] second moment costs O(max(8192, 2 D) D^2) once, the G
      factors O(G D^3 / 3) and 8 G (D + 1)^2 bytes, each evaluation 2 G
      triangular solves, O(G D^2 C)), "diagonal" (its diagonal), or "none"
      (plain L-BFGS on [W; b], whose stopping test, scikit-learn's `tol`,
      then depends on the features' units; for comparisons). Default
      (None): `preconditioning.default_preconditioner`, "full" when N > D.
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
    precondition = preconditioning.default_preconditioner(features)
  factor = _preconditioner_factor(features, num_classes, l2, second_moment,
                                  precondition)
  options = (tf.constant(initial_params, tf.float64), factor,
             tf.constant(l2, tf.float64), tf.constant(max_iterations),
             tf.constant(tolerance, tf.float64))
  chunked = chunk_size is not None and chunk_size < len(labels)
  minimize = logistic_objective.traced_minimizer(
      chunked, jit_compile, precondition != "full", optimizer)
  if chunked:
    outputs = minimize(features, labels, chunk_size, *options)
  else:
    block_size = max(1, _BLOCK_BYTES // (4 * features.shape[1]))
    outputs = minimize(
        tf.constant(np.asarray(features, np.float32)),
        tf.constant(labels, tf.int32), tf.constant(block_size), *options)
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


def _preconditioner_factor(features, num_classes, l2, second_moment,
                           precondition) -> tf.Tensor:
  """The factor P of `precondition` for each L2 value (see the grid fit)."""
  if precondition not in PRECONDITIONERS:
    raise ValueError(f"precondition must be one of {PRECONDITIONERS}; got "
                     f"{precondition!r}.")
  diagonal = precondition != "full"
  if precondition == "none":
    return tf.ones([1, features.shape[1] + 1, 1], tf.float64)
  if second_moment is None:
    second_moment = preconditioning.feature_second_moment(
        features, diagonal=diagonal)
  elif diagonal and second_moment.ndim == 2:
    second_moment = np.diagonal(second_moment)
  elif not diagonal and second_moment.ndim == 1:
    raise ValueError("The full preconditioner needs the full second moment, "
                     "feature_second_moment(features); got its diagonal.")
  return preconditioning.preconditioner(second_moment, num_classes, l2)


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


