"""The paper's linear evaluation protocol on frozen features.

The L2 strength of an L2-regularised multinomial logistic regression
(`logistic_regression`) is chosen on `train` -> `val`, the model is retrained
on `trainval` and top-1 / top-5 accuracy is reported on `test`
(`select_l2_and_fit`, the `linear` probe).

Nothing in the protocol depends on the features' units, since the release fed
raw features whose scale varies by orders of magnitude between layers: the
fits are preconditioned (`preconditioning`), and the L2 grid is relative to
the features' mean square and grows by decades while the best value sits at
its edge (`linear_protocol`).
"""
import dataclasses
import time
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

from tfrevisit.evaluation import logistic_regression
from tfrevisit.evaluation import preconditioning
from tfrevisit.evaluation.inputs import ProbeInputs
from tfrevisit.evaluation.splits import Split

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
  grid_fits: Tuple[logistic_regression.LogisticRegressionResult, ...]
  val_top1: Tuple[float, ...]
  best: int
  final: logistic_regression.LogisticRegressionResult

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
  (`preconditioning.mean_square`). Multiplying the features by a multiplies
  the optimal weights by 1 / a and the absolute L2 that gives the same
  classifier by a^2, as E[x^2]: so the same relative grid selects the same
  classifiers at any scale of the features (with the scale-free
  preconditioner and stopping test of
  `logistic_regression.fit_logistic_regression_grid`).

  The grid, sorted from strong to weak regularisation, is fitted in batches of
  `grid_batch_size` L2 values, each batch one batched L-BFGS
  (`logistic_regression.fit_logistic_regression_grid`) warm-started from the
  previous batch's last (weakest) fit. While the best value on `val` is the
  grid's strongest (weakest), the grid grows by one decade at that end (L2 x 10,
  resp. / 10; a fit warm-started from the end's fit), at most
  `max_extra_decades` at each end; `ProtocolResult.l2_at_edge` says whether the
  choice still ends at an edge. The trainval refit starts from the chosen train
  fit. The features' second moment (the preconditioner's) is computed once, on
  `train`, and shared by all fits, the trainval refit included: it only steers
  the path, not the optimum.

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
    precondition: see `logistic_regression.fit_logistic_regression_grid`.
    **fit_options: max_iterations, tolerance, chunk_size, optimizer,
      jit_compile for `logistic_regression.fit_logistic_regression_grid`.

  Returns:
    The ProtocolResult.
  """
  l2_grid = sorted({float(l2) for l2 in l2_grid}, reverse=True)
  if precondition is None:
    precondition = preconditioning.default_preconditioner(train[0])
  second_moment = preconditioning.feature_second_moment(
      train[0], diagonal=precondition != "full")
  unit = preconditioning.mean_square(second_moment) if relative_l2 else 1.0
  grid_batch_size = grid_batch_size or default_grid_batch_size(
      train[0].shape[1])

  def fit(features_labels, l2_values, initial):
    return logistic_regression.fit_logistic_regression_grid(
        *features_labels, num_classes, [unit * l2 for l2 in l2_values],
        initial=initial, second_moment=second_moment,
        precondition=precondition, **fit_options)

  def val_top1(grid_fit):
    return logistic_regression.top_k_accuracy(grid_fit.predict(val[0]), val[1],
                                              1)

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
  `logistic_regression.fit_logistic_regression_grid` (the stopping test).

  Args:
    train, val, trainval, test: (features [N, D], labels [N]) splits.
    num_classes: C.
    l2_grid: candidate L2 strengths, relative to the train features' mean
      square unless `relative_l2` is False.
    relative_l2, max_extra_decades, grid_batch_size: see `linear_protocol`.
    max_iterations, tolerance, optimizer, chunk_size: passed to
      `logistic_regression.fit_logistic_regression_grid`.

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
      top1=logistic_regression.top_k_accuracy(test_logits, test[1], 1),
      top5=logistic_regression.top_k_accuracy(test_logits, test[1], 5),
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


def linear_probe(inputs: ProbeInputs,
                 fit: Callable[..., Dict[str, Any]] = select_l2_and_fit
                 ) -> Dict[str, Any]:
  """The `linear` probe: `fit` (the configured `select_l2_and_fit`) on the
  feature splits."""
  splits = inputs.features
  return fit(splits["train"], splits["val"], splits["trainval"], splits["test"],
             inputs.num_classes)
