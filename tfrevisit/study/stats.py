"""The statistics behind the study's verdicts.

Spread: a model's run-to-run standard deviation (over training seeds) is
estimated from the models that have several seeds, pooled (the seeds'
squared deviations from their model's mean, summed over models, over the
summed degrees of freedom n - 1). A model uses the first estimate that exists
of: its own seeds; the seeded models of its architecture family (ResNet,
RevNet, VGG) and task type (patch tasks, tasks on whole images); of its
family; of all seeded models. A group's near-zero std by chance would make
every difference in it count (with df = 2 a sample std falls below a third
of the true one about one time in ten), so an estimate with df degrees of
freedom is floored at s_all x sqrt(chi2_0.05(df) / df): the 5% quantile of
the std that df would show if the group's true spread were s_all, that of
all seeded models pooled (df = 2: 0.23 s_all). It keeps its own df; above
the floor a group keeps its own std, so families can differ.

Differences: a contrast sum_i c_i mean_i of model means (a difference of two
models, a difference of two ranges...) has the standard error
sqrt(sum_i c_i^2 s_i^2 / n_i), where models sharing one spread estimate
share its degrees of freedom, and different estimates combine by
Welch-Satterthwaite. A difference counts when it lies beyond its 95%
half-width t(0.975, df) x se (two-sided). The power statement of a rule is
the smallest true difference it detects with 80% probability,
(t(0.975, df) + t(0.8, df)) x se.
"""
import collections
import dataclasses
from typing import Dict, Hashable, List, Optional, Sequence, Tuple

import numpy as np
from scipy import stats as scipy_stats

from tfrevisit.study import grid

CONFIDENCE = 0.95
POWER = 0.8
FLOOR_QUANTILE = 0.05  # of a group's std under the pooled spread (see above)
# Outcomes of a one-sided claim "d > 0" (see `Comparison.classify`).
GREATER, NOT_GREATER, UNDECIDED, UNKNOWN = (
    "greater", "not greater", "undecided", "no spread")

Model = Tuple[str, str, int]  # (task, architecture, k)


@dataclasses.dataclass(frozen=True)
class Spread:
  """A per-cell standard deviation over seeds and where it comes from."""
  std: float
  df: int
  source: str


@dataclasses.dataclass(frozen=True)
class Estimate:
  """The mean of a model's seeds, their number and the model's spread."""
  mean: float
  n: int
  spread: Optional[Spread]


def estimate(seeds: Dict[int, float], spread: Optional[Spread]) -> Estimate:
  return Estimate(float(np.mean(list(seeds.values()))), len(seeds), spread)


def t_quantile(probability: float, df: float) -> float:
  return float(scipy_stats.t.ppf(probability, df))


@dataclasses.dataclass(frozen=True)
class Comparison:
  """A contrast d of model means, its standard error and degrees of freedom
  (None without a spread)."""
  difference: float
  se: Optional[float]
  df: Optional[float]

  @property
  def half_width(self) -> Optional[float]:
    """The 95% two-sided half-width t(0.975, df) x se."""
    if self.se is None:
      return None
    return t_quantile((1 + CONFIDENCE) / 2, self.df) * self.se

  @property
  def detectable(self) -> Optional[float]:
    """The true difference detected with 80% power (same test)."""
    if self.se is None:
      return None
    return (t_quantile((1 + CONFIDENCE) / 2, self.df)
            + t_quantile(POWER, self.df)) * self.se

  def classify(self, margin: float = 0.0) -> str:
    """The claim "d > 0": GREATER when d exceeds its half-width h; NOT_GREATER
    when d + h < margin (any excess is below `margin`, e.g. 0.01); else
    UNDECIDED; UNKNOWN without a spread."""
    h = self.half_width
    if h is None:
      return UNKNOWN
    if self.difference - h > 0:
      return GREATER
    if self.difference + h < margin:
      return NOT_GREATER
    return UNDECIDED

  def negated(self) -> "Comparison":
    return Comparison(-self.difference, self.se, self.df)


def contrast(terms: Sequence[Tuple[float, Estimate]]) -> Comparison:
  """sum c x mean over (c, Estimate) terms of distinct models."""
  difference = sum(c * e.mean for c, e in terms)
  if any(e.spread is None for _, e in terms):
    return Comparison(difference, None, None)
  per_source: Dict[Spread, float] = collections.defaultdict(float)
  for c, e in terms:
    per_source[e.spread] += c * c / e.n
  parts = {s: s.std ** 2 * weight for s, weight in per_source.items()}
  variance = sum(parts.values())
  if variance <= 0:
    return Comparison(difference, 0.0, float(min(s.df for s in parts)))
  df = variance ** 2 / sum(v ** 2 / s.df for s, v in parts.items())
  return Comparison(difference, float(np.sqrt(variance)), float(df))


def pooled(groups: Dict[str, Sequence[float]], source: str) -> Optional[Spread]:
  """The pooled std of groups of seed values (those with 2 or more)."""
  seeded = {name: np.asarray(v, float) for name, v in groups.items() if len(v) > 1}
  if not seeded:
    return None
  squares = sum(float(np.sum((v - v.mean()) ** 2)) for v in seeded.values())
  df = sum(len(v) - 1 for v in seeded.values())
  return Spread(float(np.sqrt(squares / df)), df,
                f"{source}: {', '.join(sorted(seeded))} (df={df})")


def family(architecture: str) -> str:
  """ResNet, RevNet or VGG: the architecture family of a grid label."""
  backbone = grid.ARCHITECTURES[architecture].backbone
  return {"resnet50_v1": "ResNet", "resnet50_v2": "ResNet",
          "revnet50": "RevNet", "vgg19": "VGG"}[backbone]


def task_type(task: str) -> str:
  return "patch" if task in grid.PATCH_TASKS else "image"


def model_name(model: Model) -> str:
  task, architecture, k = model
  return f"{task}/{architecture}/k{k}"


class SpreadTable:
  """The spread of each model of one metric ({model: {seed: value}}), by the
  hierarchy of the module docstring; `fallback` (another metric's table)
  answers when no model of this metric has seeds."""

  def __init__(self, values: Dict[Model, Dict[int, float]],
               fallback: Optional["SpreadTable"] = None):
    self.values = {m: v for m, v in values.items() if v}
    self.fallback = fallback
    seeded = {m: list(v.values()) for m, v in self.values.items() if len(v) > 1}
    self.seeded = sorted(seeded)
    levels: List[Tuple[str, callable]] = [
        ("family and task type", lambda m: (family(m[1]), task_type(m[0]))),
        ("family", lambda m: family(m[1])),
        ("all seeded models", lambda m: "all")]
    self._levels = []
    for label, key in levels:
      groups: Dict[Hashable, Dict[str, List[float]]] = collections.defaultdict(dict)
      for m, v in seeded.items():
        groups[key(m)][model_name(m)] = v
      self._levels.append((key, {k: pooled(g, label) for k, g in groups.items()}))
    self._own = {m: pooled({model_name(m): v}, "own seeds")
                 for m, v in seeded.items()}
    self.overall = self._levels[-1][1].get("all")

  def floor(self, df: int) -> float:
    """The smallest std taken from an estimate with `df` degrees of freedom
    (see the module docstring)."""
    return self.overall.std * float(
        np.sqrt(scipy_stats.chi2.ppf(FLOOR_QUANTILE, df) / df))

  def floored(self, spread: Spread) -> Spread:
    """`spread` with its std raised to `floor(spread.df)` (its df kept)."""
    floor = self.floor(spread.df)
    if spread.std >= floor:
      return spread
    return Spread(floor, spread.df, f"{spread.source}, floored at "
                  f"{100 * floor:.2f} pp")

  def spread(self, model: Model) -> Optional[Spread]:
    if model in self._own:
      return self.floored(self._own[model])
    for key, table in self._levels:
      found = table.get(key(model))
      if found is not None:
        return self.floored(found)
    if self.fallback is not None and not self.seeded:
      return self.fallback.spread(model)
    return None

  def estimate(self, model: Model) -> Optional[Estimate]:
    seeds = self.values.get(model)
    return estimate(seeds, self.spread(model)) if seeds else None

  def describe(self) -> List[str]:
    """One line per pooled estimate of the first level (family and task
    type), with the std used after the floor, and the overall one, in pp."""
    key, table = self._levels[0]
    del key
    lines = []
    for group, s in sorted(table.items()):
      used = self.floored(s)
      floor = (f"; used: {100 * used.std:.2f} pp (floor)"
               if used is not s else "")
      lines.append(f"{'/'.join(group)}: s = {100 * s.std:.2f} pp ({s.source}"
                   f"{floor})")
    if self.overall is not None:
      lines.append(f"all: s = {100 * self.overall.std:.2f} pp "
                   f"({self.overall.source})")
    return lines


def _row_spearman(x: np.ndarray, y: np.ndarray) -> np.ndarray:
  """Spearman's rho of each row pair of [R, P] arrays (average ranks for
  ties); NaN for fewer than 3 points or a constant row."""
  if x.shape[1] < 3:
    return np.full(len(x), np.nan)
  rx = scipy_stats.rankdata(x, axis=1)
  ry = scipy_stats.rankdata(y, axis=1)
  rx -= rx.mean(axis=1, keepdims=True)
  ry -= ry.mean(axis=1, keepdims=True)
  norm = np.sqrt((rx ** 2).sum(axis=1) * (ry ** 2).sum(axis=1))
  with np.errstate(invalid="ignore", divide="ignore"):
    rho = (rx * ry).sum(axis=1) / norm
  rho[norm == 0] = np.nan
  return rho


def spearman(x: Sequence[float], y: Sequence[float]) -> float:
  """Spearman's rho (average ranks for ties); NaN for fewer than 3 points or
  a constant variable."""
  return float(_row_spearman(np.asarray([x], float), np.asarray([y], float))[0])


def bootstrap_spearman(groups: Sequence[Tuple[Sequence[float], Sequence[float]]],
                       repetitions: int = 2000, seed: int = 0
                       ) -> Tuple[float, float, float]:
  """The mean over groups of Spearman's rho and its 95% percentile bootstrap
  interval, resampling the points of each group with replacement.

  Args:
    groups: (x [P_g], y [P_g]) per group (e.g. per task, over architectures).
    repetitions: bootstrap resamples.
    seed: the resampling's seed.

  Returns:
    (rho, low, high); NaNs when no group has 3 points. A resample's mean
    leaves out the groups whose resampled rho is undefined (ties).
  """
  groups = [(np.asarray(x, float), np.asarray(y, float)) for x, y in groups]
  rhos = [r for r in (spearman(x, y) for x, y in groups) if np.isfinite(r)]
  if not rhos:
    return float("nan"), float("nan"), float("nan")
  rng = np.random.default_rng(seed)
  samples = []
  for x, y in groups:
    index = rng.integers(0, len(x), (repetitions, len(x)))
    samples.append(_row_spearman(x[index], y[index]))
  samples = np.stack(samples, axis=1)  # [R, groups]
  valid = np.isfinite(samples).any(axis=1)
  means = np.nanmean(samples[valid], axis=1)
  alpha = (1 - CONFIDENCE) / 2
  low, high = np.quantile(means, [alpha, 1 - alpha])
  return float(np.mean(rhos)), float(low), float(high)
