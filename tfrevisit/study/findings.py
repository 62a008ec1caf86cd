"""Evidence and verdicts for the paper's six findings, from one budget's results.

Each finding is a function Results -> Finding: the rule (its threshold), its
power at these results, the numbers it rests on (markdown) and the verdict.
Differences are tested against the spread of the cells compared
(`tfrevisit.study.stats`: pooled seed spreads, Welch-Satterthwaite degrees of
freedom, 95% two-sided half-widths h). A claim "X > Y" is supported when
X - Y - h > 0 and contradicted when X - Y + h < MARGIN (any excess is below
1 pp); a finding holds when more than half of its comparisons support it,
does not hold when more than half contradict it, and is inconclusive
otherwise, or without any spread estimate. Findings 4 and 5 are rank
correlations judged by a bootstrap interval; finding 6 is a measurement
against a fixed tolerance. Nothing is selected on the test split: layers are
chosen on validation accuracy.
"""
import dataclasses
import itertools
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

from tfrevisit.study import grid
from tfrevisit.study import stats
from tfrevisit.study.results import Results, late_layers, seed_mean, stopped_early

HOLDS = "holds"
FAILS = "does not hold"
INCONCLUSIVE = "inconclusive"
# The smallest difference that matters, for contradicting a claim "X > Y".
MARGIN = 0.01
# Finding 6: SGD counts as close to the L-BFGS optimum within this.
SGD_TOLERANCE = 0.005
# Findings 4 and 5: the rank correlation that separates "predicts" from not.
RHO_THRESHOLD = 0.5
# Findings 4 and 5: a bootstrap interval of rho wider than this (half of
# rho's range) is too wide for a verdict, whichever side of the threshold
# it lies on (few architectures per task give such intervals).
MAX_RHO_INTERVAL = 1.0


@dataclasses.dataclass
class Finding:
  title: str
  rule: str
  power: str
  evidence: str
  verdict: str


def _pp(value: Optional[float], sign: bool = True) -> str:
  if value is None:
    return "-"
  return f"{100 * value:+.2f} pp" if sign else f"{100 * value:.2f} pp"


def _pct(value: Optional[float]) -> str:
  return "-" if value is None else f"{100 * value:.2f}"


def _title(architecture: str) -> str:
  return grid.ARCHITECTURES[architecture].title


def majority(outcomes: Sequence[str], support: str, against: str) -> str:
  """HOLDS if more than half of `outcomes` are `support`, FAILS if more than
  half are `against`, else INCONCLUSIVE (also without outcomes)."""
  if not outcomes:
    return INCONCLUSIVE
  if sum(o == support for o in outcomes) > len(outcomes) / 2:
    return HOLDS
  if sum(o == against for o in outcomes) > len(outcomes) / 2:
    return FAILS
  return INCONCLUSIVE


def _comparison_text(comparison: stats.Comparison) -> str:
  h = comparison.half_width
  if h is None:
    return f"{_pp(comparison.difference)} (no spread)"
  return f"{_pp(comparison.difference)} ± {_pp(h, sign=False)}"


def _power(comparisons: Sequence[stats.Comparison]) -> str:
  """The median half-width and 80%-power detectable difference."""
  known = [c for c in comparisons if c.se is not None]
  if not known:
    return "no spread estimate: nothing can be tested."
  h = float(np.median([c.half_width for c in known]))
  detectable = float(np.median([c.detectable for c in known]))
  return (f"median 95% half-width {_pp(h, sign=False)} over {len(known)} "
          f"comparisons; a true difference of {_pp(detectable, sign=False)} "
          "would be detected with 80% probability.")


def _table(results: Results, metric: Callable[..., Dict[int, float]]
           ) -> stats.SpreadTable:
  return stats.SpreadTable({m: metric(*m) for m in results.models()})


# Finding 1.


def _range(table: stats.SpreadTable, task: str, architectures: Sequence[str]
           ) -> Tuple[str, str, List[Tuple[float, stats.Estimate]]]:
  """(best, worst, terms of best - worst) of a task's k=1 architectures."""
  estimates = {a: table.estimate((task, a, 1)) for a in architectures}
  best = max(estimates, key=lambda a: estimates[a].mean)
  worst = min(estimates, key=lambda a: estimates[a].mean)
  return best, worst, [(1.0, estimates[best]), (-1.0, estimates[worst])]


def _ranges_vs_supervised(table, tasks, architectures, label, lines):
  """Outcomes of "range(task) > range(supervised)" per self-supervised task,
  both ranges over the architectures that have both."""
  outcomes, comparisons = [], []
  lines.append(f"- {label}:")
  for task in tasks:
    common = [a for a in architectures if table.estimate((task, a, 1))
              and table.estimate(("supervised", a, 1))]
    if len(common) < 2:
      continue
    mine, supervised = (_range(table, t, common) for t in (task, "supervised"))
    comparison = stats.contrast(mine[2] + [(-c, e) for c, e in supervised[2]])
    outcome = comparison.classify(MARGIN)
    outcomes.append(outcome)
    comparisons.append(comparison)
    lines.append(
        f"  - {task}: range {_pp(stats.contrast(mine[2]).difference)} "
        f"({_title(mine[0])} - {_title(mine[1])}), supervised "
        f"{_pp(stats.contrast(supervised[2]).difference)} "
        f"({_title(supervised[0])} - {_title(supervised[1])}) over "
        f"{len(common)} architectures; difference "
        f"{_comparison_text(comparison)}: {outcome}")
  if not outcomes:
    lines.append("  - no task with a supervised row on 2 or more of its "
                 "architectures")
  return outcomes, comparisons


def _rank_swaps(table, tasks, architectures) -> List[str]:
  """Pairs of architectures ordered one way in one task and the other way in
  another, both beyond their half-widths."""
  swaps = []
  for t1, t2 in itertools.combinations(tasks, 2):
    for a, b in itertools.combinations(architectures, 2):
      estimates = [table.estimate((t, x, 1)) for t in (t1, t2) for x in (a, b)]
      if None in estimates:
        continue
      first = stats.contrast([(1.0, estimates[0]), (-1.0, estimates[1])])
      second = stats.contrast([(1.0, estimates[2]), (-1.0, estimates[3])])
      for x, y in ((first, second.negated()), (first.negated(), second)):
        if x.classify() == stats.GREATER and y.classify() == stats.GREATER:
          swaps.append(f"{_title(a)} vs {_title(b)}: {t1} "
                       f"{_comparison_text(first)}, {t2} "
                       f"{_comparison_text(second)}")
  return swaps


def architecture_matters(results: Results) -> Finding:
  """Finding 1: self-supervised ranges across architectures against the
  supervised range, with and without VGG, and rank swaps across tasks."""
  table = _table(results, lambda *m: results.top1(*m))
  tasks = [t for t in grid.SELF_SUPERVISED if t in results.tasks()]
  architectures = results.architectures(1)
  lines, verdicts, comparisons = [], [], []
  for label, subset in (("all architectures", architectures),
                        ("without VGG19-BN", [a for a in architectures
                                              if a != "vgg19"])):
    outcomes, found = _ranges_vs_supervised(table, tasks, subset, label, lines)
    comparisons += found
    verdicts.append(majority(outcomes, stats.GREATER, stats.NOT_GREATER))
  swaps = _rank_swaps(table, tasks, architectures)
  lines.append(f"- rank swaps beyond the combined spread: {len(swaps)}")
  lines += [f"  - {s}" for s in swaps[:8]]
  if len(swaps) > 8:
    lines.append(f"  - and {len(swaps) - 8} more")
  if FAILS in verdicts:
    verdict = FAILS
  elif verdicts == [HOLDS, HOLDS] and swaps:
    verdict = HOLDS
  else:
    verdict = INCONCLUSIVE
  return Finding(
      "(1) Architecture matters more for self-supervised than for supervised "
      "learning; rankings differ across tasks",
      "per self-supervised task, its range of pre_logits top-1 over the k=1 "
      "architectures minus the supervised range over the same architectures "
      "is tested (\"greater\": beyond h; \"not greater\": below 1 pp even at "
      "+h). Holds if more than half of the tasks are greater both with and "
      "without VGG19-BN and at least one pair of architectures swaps order "
      "between two tasks with both differences beyond h; does not hold if "
      "more than half are not greater, with or without VGG19-BN.",
      _power(comparisons), "\n".join(lines), verdict)


# Finding 2.


def _val_gain(results: Results, task: str, architecture: str, end_point: str
              ) -> Optional[float]:
  """Validation top-1 of a trained model minus the untrained network's."""
  trained, untrained = (seed_mean(results.val_top1(t, architecture, 1, end_point))
                        for t in (task, "random_init"))
  return None if trained is None or untrained is None else trained - untrained


def _degradation(results: Results, task: str, architecture: str):
  """(L*, {seed: D}, {late layer: mean gain}) where D = gain(pre_logits) -
  gain(L*), a gain being trained minus untrained test top-1 and L* the late
  layer before pre_logits with the largest validation gain; a string (why)
  if a row is missing or stopped early, None if the model has no such rows."""
  late = [e for e in late_layers(architecture)
          if results.top1(task, architecture, 1, e)
          and results.top1("random_init", architecture, 1, e)]
  earlier = [e for e in late if e != "pre_logits"
             and _val_gain(results, task, architecture, e) is not None]
  if "pre_logits" not in late or not earlier:
    return None
  for t in (task, "random_init"):
    for e in late:
      if any(stopped_early(r) for rows in
             results.rows(t, architecture, 1, e).values() for r in rows):
        return f"{t} {e} stopped before its 3rd L-BFGS iteration"
  chosen = max(earlier, key=lambda e: _val_gain(results, task, architecture, e))
  untrained = {e: seed_mean(results.top1("random_init", architecture, 1, e))
               for e in late}
  trained = {e: results.top1(task, architecture, 1, e) for e in late}
  seeds = set(trained["pre_logits"]) & set(trained[chosen])
  per_seed = {s: (trained["pre_logits"][s] - untrained["pre_logits"])
              - (trained[chosen][s] - untrained[chosen]) for s in seeds}
  gains = {e: seed_mean(trained[e]) - untrained[e] for e in late}
  return chosen, per_seed, gains


def pre_logits_degrade(results: Results) -> Finding:
  """Finding 2: does what training adds shrink at pre_logits?"""
  found, left_out = {}, []
  for task in [t for t in grid.SELF_SUPERVISED if t in results.tasks()]:
    for architecture in results.architectures(1):
      value = _degradation(results, task, architecture)
      if isinstance(value, str):
        left_out.append(f"{task}, {_title(architecture)} ({value})")
      elif value is not None and value[1]:
        found[(task, architecture, 1)] = value
  table = stats.SpreadTable({m: v[1] for m, v in found.items()})
  lines, skip, vgg, comparisons = [], [], [], []
  for model, (chosen, _, gains) in found.items():
    comparison = stats.contrast([(1.0, table.estimate(model))])
    comparisons.append(comparison)
    not_degraded = stats.Comparison(comparison.difference + MARGIN, comparison.se,
                                    comparison.df).classify()
    degraded = comparison.negated().classify()
    outcome = ("degrades" if degraded == stats.GREATER else "does not degrade"
               if not_degraded == stats.GREATER else
               stats.UNKNOWN if degraded == stats.UNKNOWN else stats.UNDECIDED)
    (vgg if model[1] == "vgg19" else skip).append(outcome)
    gain_text = ", ".join(f"{e} {_pp(g)}" for e, g in gains.items())
    lines.append(f"- {model[0]}, {_title(model[1])}: gain {gain_text}; D = "
                 f"gain(pre_logits) - gain({chosen}): "
                 f"{_comparison_text(comparison)}: {outcome}")
  if left_out:
    lines.append("- left out: " + "; ".join(left_out))
  skip_verdict = majority(skip, "does not degrade", "degrades")
  vgg_verdict = majority(vgg, "degrades", "does not degrade")
  if FAILS in (skip_verdict, vgg_verdict):
    verdict = FAILS
  elif skip_verdict == vgg_verdict == HOLDS:
    verdict = HOLDS
  else:
    verdict = INCONCLUSIVE
  return Finding(
      "(2) With skip connections pre_logits does not degrade; VGG's does",
      "the gain of a trained model over the same architecture untrained "
      "(random_init) is compared at the late layers (ResNet/RevNet: block3, "
      "block4, pre_logits; VGG: fc6, pre_logits): D = gain(pre_logits) - "
      "gain(L), L the earlier late layer with the largest gain in validation "
      "top-1. A model degrades if D + h < 0 and does not degrade "
      "if D - h > -1 pp. Holds if more than half of the "
      "ResNet/RevNet models do not degrade and more than half of the VGG "
      "models degrade; does not hold if more than half of either group go "
      "the other way. Rows whose L-BFGS fit stopped before its 3rd "
      "iteration are left out (a probe artefact, not a representation).",
      _power(comparisons),
      "\n".join(lines) or "- no trained model with an untrained counterpart",
      verdict)


# Finding 3.


def wider_is_better(results: Results) -> Finding:
  """Finding 3: pre_logits top-1 at the widest k minus k=1, full and 10%
  labels."""
  full = _table(results, lambda *m: results.top1(*m))
  lines, outcomes, comparisons = [], [], []
  for task, architecture in dict.fromkeys(m[:2] for m in results.models()):
    widths = results.widths(task, architecture)
    if len(widths) < 2 or widths[0] != 1:
      continue
    for fraction in (1.0, 0.1):
      table = stats.SpreadTable(
          {m: results.top1(*m, fraction=fraction) for m in results.models()},
          fallback=full)
      source = "" if table.seeded or fraction == 1.0 else " (full-label spread)"
      wide, narrow = (table.estimate((task, architecture, k))
                      for k in (widths[-1], 1))
      if wide is None or narrow is None:
        continue
      comparison = stats.contrast([(1.0, wide), (-1.0, narrow)])
      outcome = comparison.classify(MARGIN)
      outcomes.append(outcome)
      comparisons.append(comparison)
      lines.append(f"- {task}, {_title(architecture)}, {fraction:.0%} labels: "
                   f"k={widths[-1]} - k=1 = {_comparison_text(comparison)}"
                   f"{source}: {outcome}")
  return Finding(
      "(3) Wider networks are better, also with few labels",
      "for each width series, pre_logits top-1 at the widest k minus at k=1, "
      "with all and with 10% of the labels (mean over label subsets). Holds "
      "if more than half of these differences are greater than h; does not "
      "hold if more than half are below 1 pp even at +h.",
      _power(comparisons), "\n".join(lines) or "- no width series",
      majority(outcomes, stats.GREATER, stats.NOT_GREATER))


# Findings 4 and 5: rank correlations with a bootstrap interval.


def _correlation_verdict(rho, low, high, holds_if_high: bool) -> str:
  if not np.isfinite(rho) or high - low > MAX_RHO_INTERVAL:
    return INCONCLUSIVE
  if low > RHO_THRESHOLD:
    return HOLDS if holds_if_high else FAILS
  if high < RHO_THRESHOLD:
    return FAILS if holds_if_high else HOLDS
  return INCONCLUSIVE


def _rho_text(rho, low, high) -> str:
  if not np.isfinite(rho):
    return "rho undefined"
  return f"rho = {rho:.2f} (95% bootstrap interval {low:.2f} to {high:.2f})"


def linear_is_adequate(results: Results) -> Finding:
  """Finding 4: Spearman rank correlation of linear and MLP top-1."""
  models = [m for m in results.models() if results.top1(*m, probe="mlp")
            and results.top1(*m)]
  linear = [seed_mean(results.top1(*m)) for m in models]
  mlp = [seed_mean(results.top1(*m, probe="mlp")) for m in models]
  rho, low, high = stats.bootstrap_spearman([(linear, mlp)])
  on_val = sum(all("val_top1" in r for rows in
                   results.rows(*m, probe="mlp").values() for r in rows)
               for m in models)
  gap = np.mean(np.subtract(mlp, linear)) if models else None
  return Finding(
      "(4) A linear evaluation is adequate (the MLP ranks models alike)",
      "Spearman rho of linear and MLP pre_logits top-1 over the models, with "
      "a 95% bootstrap interval (models resampled). Holds if its lower bound "
      f"exceeds {RHO_THRESHOLD}; does not hold if its upper bound is below "
      f"{RHO_THRESHOLD}; inconclusive when the interval spans it, is wider "
      f"than {MAX_RHO_INTERVAL:g} or there are fewer than 5 models.",
      f"interval width {high - low:.2f} over {len(models)} models."
      if np.isfinite(rho) else "fewer than 3 models.",
      f"- {len(models)} models ({on_val} with the MLP recipe chosen on val); "
      f"{_rho_text(rho, low, high)}; mean MLP - linear = {_pp(gap)}",
      _correlation_verdict(rho, low, high, holds_if_high=True)
      if len(models) >= 5 else INCONCLUSIVE)


def pretext_does_not_predict(results: Results) -> Finding:
  """Finding 5: per task, pretext accuracy vs linear top-1 across
  architectures; the mean rho over tasks with a bootstrap interval."""
  lines, groups = [], []
  for task in grid.SELF_SUPERVISED:
    pairs = [(seed_mean(results.pretext(task, a)), seed_mean(results.top1(task, a)))
             for a in results.architectures(1)
             if results.pretext(task, a) and results.top1(task, a)]
    if len(pairs) < 3:
      continue
    groups.append(tuple(zip(*pairs)))
    lines.append(f"- {task}: Spearman rho over {len(pairs)} architectures = "
                 f"{stats.spearman(*groups[-1]):.2f}")
  rho, low, high = stats.bootstrap_spearman(groups)
  lines.append(f"- mean over {len(groups)} tasks: {_rho_text(rho, low, high)}; "
               f"pretext accuracy: {results.pretext_source()}")
  return Finding(
      "(5) Pretext accuracy does not predict downstream accuracy across "
      "architectures",
      "per task, Spearman rho of pretext accuracy and pre_logits top-1 over "
      "the k=1 architectures; their mean over tasks with a 95% bootstrap "
      "interval (architectures resampled within each task). Holds if the "
      f"upper bound is below {RHO_THRESHOLD} (evidence of at most a weak "
      f"association); does not hold if the lower bound exceeds "
      f"{RHO_THRESHOLD}; inconclusive when the interval spans it or is "
      f"wider than {MAX_RHO_INTERVAL:g}.",
      f"interval width {high - low:.2f} over {len(groups)} tasks."
      if np.isfinite(rho) else "fewer than 3 architectures per task.",
      "\n".join(lines), _correlation_verdict(rho, low, high, holds_if_high=False))


# Finding 6.


def sgd_is_slow(results: Results) -> Finding:
  """Finding 6: epochs the SGD probe needs to come within 0.5 pp of the
  L-BFGS optimum on the same features."""
  lines, outcomes = [], []
  for key, curve in sorted(results.curves().items()):
    task, architecture, k, probe, fraction, end_point, seed = key
    optimum = results.top1(task, architecture, k, end_point, "linear", fraction)
    if probe != "linear_sgd" or seed not in optimum:
      continue
    close = [i + 1 for i, a in enumerate(curve)
             if a >= optimum[seed] - SGD_TOLERANCE]
    needed = close[0] if close else None
    outcomes.append("slow" if needed is None or needed > 100 else
                    "fast" if needed <= 10 else "between")
    lines.append(
        f"- {task}, {_title(architecture)} k={k}, {end_point}: L-BFGS "
        f"{_pct(optimum[seed])}, SGD after 1/10/{len(curve)} epochs "
        f"{_pct(curve[0])}/{_pct(curve[min(9, len(curve) - 1)])}/"
        f"{_pct(curve[-1])}; within {100 * SGD_TOLERANCE:.1f} pp after "
        f"{needed or f'more than {len(curve)}'} epochs")
  return Finding(
      "(6) SGD for the linear model converges slowly",
      f"the SGD probe's test top-1 per epoch against the L-BFGS top-1 on the "
      f"same features (end point, labels, seed), with a fixed tolerance of "
      f"{100 * SGD_TOLERANCE:.1f} pp (not the seed spread: the features are "
      "the same). Holds if more than half of the curves need more than 100 "
      "epochs (or never get there); does not hold if more than half get "
      "there within 10 epochs.",
      "a measurement against a fixed tolerance, no test.",
      "\n".join(lines) or "- no SGD probe results",
      majority(outcomes, "slow", "fast"))


FINDINGS = (architecture_matters, pre_logits_degrade, wider_is_better,
            linear_is_adequate, pretext_does_not_predict, sgd_is_slow)


def all_findings(results: Results) -> List[Finding]:
  return [finding(results) for finding in FINDINGS]
