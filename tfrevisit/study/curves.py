"""When a pretext task has converged, and the budget a pilot picks.

A curve is a cell's held-out pretext accuracy per checkpoint
(`tfrevisit.study.pretext_eval`): points {"epoch", "accuracy"} with the
accuracy a fraction. The rule (issue 28): a model has converged when its
held-out pretext accuracy gained less than 1 point over the last 25% of its
training.
"""
from typing import Dict, Optional, Sequence

import numpy as np

# Converged: gain over the last WINDOW of training below MIN_GAIN.
WINDOW = 0.25
MIN_GAIN = 0.01


def late_gain(epochs: Sequence[float], accuracy: Sequence[float],
              total_epochs: Optional[float] = None,
              window: float = WINDOW) -> Optional[float]:
  """Accuracy at the end minus at (1 - window) of training.

  The earlier value is linearly interpolated between the neighbouring
  points.

  Args:
    epochs: [P] increasing epochs of the points.
    accuracy: [P] held-out accuracies (fractions).
    total_epochs: the training's length; default the last point's epoch.
    window: the late fraction of training.

  Returns:
    The gain (a fraction; negative if accuracy fell), or None when the curve
    cannot tell: no point at or before the window's start, or none within 1%
    of `total_epochs` at the end.
  """
  epochs, accuracy = np.asarray(epochs, float), np.asarray(accuracy, float)
  if len(epochs) == 0:
    return None
  total = epochs[-1] if total_epochs is None else total_epochs
  start = (1 - window) * total
  if epochs[0] > start + 1e-9 or epochs[-1] < 0.99 * total:
    return None
  return float(accuracy[-1] - np.interp(start, epochs, accuracy))


def gain_after(epochs: Sequence[float], accuracy: Sequence[float],
               start_epoch: float, total_epochs: Optional[float] = None
               ) -> Optional[float]:
  """Accuracy at the end minus at the first point at or after `start_epoch`
  (e.g. the last learning-rate decay: what training gave after the jump a
  decay causes).

  Args:
    epochs: [P] increasing epochs of the points.
    accuracy: [P] held-out accuracies (fractions).
    start_epoch: where to start, in epochs.
    total_epochs: the training's length; default the last point's epoch.

  Returns:
    The gain (a fraction), or None when the points from `start_epoch` on
    span less than half of the training after it (fewer than 2, or a last
    checkpoint a few steps after the one before: a gain over a few steps
    says nothing).
  """
  after = [(e, a) for e, a in zip(epochs, accuracy) if e >= start_epoch - 1e-9]
  total = epochs[-1] if total_epochs is None else total_epochs
  if len(after) < 2 or after[-1][0] - after[0][0] < 0.5 * (total - start_epoch):
    return None
  return float(after[-1][1] - after[0][1])


def converged(epochs: Sequence[float], accuracy: Sequence[float],
              total_epochs: Optional[float] = None,
              window: float = WINDOW, min_gain: float = MIN_GAIN
              ) -> Optional[bool]:
  """True when the accuracy gained less than `min_gain` over the last
  `window` of training (see `late_gain`), None when the curve cannot tell."""
  gain = late_gain(epochs, accuracy, total_epochs, window)
  return None if gain is None else gain < min_gain


def curve_arrays(curve: Sequence[Dict[str, float]]):
  """([P] epochs, [P] accuracies) of a cell's `pretext_curve`."""
  points = sorted(curve, key=lambda p: p["epoch"])
  return ([p["epoch"] for p in points], [p["accuracy"] for p in points])


def choose_budget(curves: Dict[float, Sequence[Dict[str, float]]]
                  ) -> Optional[float]:
  """The smallest budget (epochs) whose own run converged by the rule and
  above which every run converged too (a run that converged and a longer one
  that still rose did not reach the model's convergence).

  Args:
    curves: {budget epochs: that run's pretext curve}, e.g. a pilot's
      ladder of budgets for one task.

  Returns:
    The budget, or None if the longest run did not converge (the ladder
    needs a longer rung).
  """
  picked = None
  for budget in sorted(curves, reverse=True):
    if not converged(*curve_arrays(curves[budget]), total_epochs=budget):
      break
    picked = budget
  return picked
