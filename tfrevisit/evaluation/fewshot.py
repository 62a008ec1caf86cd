"""Few-shot evaluation: closed-form ridge regression on n examples per class.

After big_vision's few-shot evaluator (`evaluators/fewshot_lsr.py`): the n-shot
training features are standardised with their own mean and standard
deviation (+1e-5), a constant feature of 100 is appended as a bias (so large
that its regularisation barely matters), and a ridge regression to one-hot
targets in {-1, 1} is solved in closed form,
  W = (X^T X + l2 I)^-1 X^T Y = X^T (X X^T + l2 I)^-1 Y,
whichever system is smaller. Test rows are classified by argmax of their
scores. Each n is drawn several times with different seeds; rows report the
mean and standard deviation of the accuracies.
"""
import dataclasses
from typing import Any, Dict, List, Sequence

import numpy as np

from tfrevisit.evaluation.inputs import ProbeInputs

BIAS_CONSTANT = 100.0


@dataclasses.dataclass
class AffineClassifier:
  """Scores = features @ weights + bias.

  Attributes:
    weights: [D, C] float64.
    bias: [C] float64.
  """
  weights: np.ndarray
  bias: np.ndarray


def fit_ridge_classifier(features: np.ndarray, labels: np.ndarray,
                         num_classes: int, l2_reg: float) -> AffineClassifier:
  """big_vision's closed-form ridge classifier, folded into one affine map.

  Args:
    features: [N, D] training features.
    labels: [N] int class ids.
    num_classes: C.
    l2_reg: the ridge regulariser l2 (on every weight, the bias feature's too).

  Returns:
    The classifier on raw (unstandardised) features.
  """
  features = np.asarray(features, np.float64)
  mean = features.mean(axis=0)
  std = features.std(axis=0) + 1e-5
  x = np.pad((features - mean) / std, ((0, 0), (0, 1)),
             constant_values=BIAS_CONSTANT)
  y = 2.0 * np.eye(num_classes)[labels] - 1.0
  num_points, dim = x.shape
  if num_points >= dim:
    w = np.linalg.solve(x.T @ x + l2_reg * np.eye(dim), x.T @ y)
  else:
    w = x.T @ np.linalg.solve(x @ x.T + l2_reg * np.eye(num_points), y)
  # ((f - mean) / std) @ w[:-1] + BIAS_CONSTANT * w[-1], as f @ A + b.
  weights = w[:-1] / std[:, None]
  return AffineClassifier(weights, BIAS_CONSTANT * w[-1] - mean @ weights)


def draw_shots(labels: np.ndarray, shots: int, num_classes: int,
               rng: np.random.Generator) -> np.ndarray:
  """Sorted indices of `shots` examples per class, drawn without replacement.

  Raises:
    ValueError: a class has fewer than `shots` examples.
  """
  chosen = []
  for label in range(num_classes):
    members = np.flatnonzero(labels == label)
    if len(members) < shots:
      raise ValueError(f"Class {label} has {len(members)} examples, fewer than "
                       f"{shots} shots; lower fewshot_probe.shots.")
    chosen.append(rng.choice(members, shots, replace=False))
  return np.sort(np.concatenate(chosen))


def _accuracies(classifiers: Sequence[AffineClassifier], features: Any,
                labels: np.ndarray, chunk_size: int) -> np.ndarray:
  """[len(classifiers), 2] top-1 and top-5 accuracies on [M, D] features,
  read `chunk_size` rows at a time, all classifiers in one product."""
  weights = np.concatenate([c.weights for c in classifiers], axis=1)
  bias = np.concatenate([c.bias for c in classifiers])
  num_classes = len(classifiers[0].bias)
  correct = np.zeros([len(classifiers), 2])
  for start in range(0, len(labels), chunk_size):
    chunk = np.asarray(features[start:start + chunk_size], np.float64)
    scores = (chunk @ weights + bias).reshape(len(chunk), len(classifiers),
                                              num_classes)
    ranked = np.argsort(-scores, axis=2, kind="stable")
    hits = ranked == labels[start:start + chunk_size, None, None]
    correct[:, 0] += hits[:, :, 0].sum(axis=0)
    correct[:, 1] += hits[:, :, :5].any(axis=2).sum(axis=0)
  return correct / len(labels)


def fewshot_probe(inputs: ProbeInputs, shots: Sequence[int] = (1, 5, 10, 25),
                  num_draws: int = 5, l2_reg: float = 2.0**10, seed: int = 0,
                  chunk_size: int = 16384) -> Dict[str, Any]:
  """n-shot ridge classifiers drawn from trainval, evaluated on test.

  Args:
    inputs: the feature splits (`ProbeInputs.features`; reads trainval and
      test) and C.
    shots: the examples per class, n.
    num_draws: seeded draws of the n-shot set per n.
    l2_reg: the ridge regulariser (big_vision's default, 2^10).
    seed: draw d of n shots uses `np.random.default_rng([seed, n, d])`.
    chunk_size: test rows read at a time.

  Returns:
    The row: `top1`, `top1_std`, `top5` (means and standard deviation over
    the draws) for the first of `shots`, and per-shot lists of them for all.
  """
  splits, num_classes = inputs.features, inputs.num_classes
  (train_x, train_y), (test_x, test_y) = splits["trainval"], splits["test"]
  classifiers: List[AffineClassifier] = []
  for n in shots:
    for draw in range(num_draws):
      index = draw_shots(train_y, n, num_classes,
                         np.random.default_rng([seed, n, draw]))
      classifiers.append(fit_ridge_classifier(train_x[index], train_y[index],
                                              num_classes, l2_reg))
  accuracy = _accuracies(classifiers, test_x, np.asarray(test_y), chunk_size)
  accuracy = accuracy.reshape(len(shots), num_draws, 2)
  mean, std = accuracy.mean(axis=1), accuracy.std(axis=1)
  return {"top1": float(mean[0, 0]), "top1_std": float(std[0, 0]),
          "top5": float(mean[0, 1]),
          "shots": list(shots), "top1_per_shot": mean[:, 0].tolist(),
          "top1_std_per_shot": std[:, 0].tolist(),
          "top5_per_shot": mean[:, 1].tolist(), "num_draws": num_draws,
          "l2_reg": l2_reg}
