"""Evidence and verdicts for the paper's six findings, from the results.

Each finding is a function Results -> Finding: the numbers it rests on (a
markdown fragment) and a verdict by an explicit rule. The rules compare
differences with the run-to-run spread `s` (the largest std over seeds of
pre_logits linear top-1 among the seeded models, `Results.seed_spread`): a
difference counts only if it exceeds 2s. Without seeds every verdict is
"inconclusive at this scale".
"""
import dataclasses
from typing import List, Optional

import numpy as np

from tfrevisit.study import grid
from tfrevisit.study.results import Results, seed_mean

HOLDS = "holds"
FAILS = "does not hold"
INCONCLUSIVE = "inconclusive at this scale"


@dataclasses.dataclass
class Finding:
  title: str
  rule: str
  evidence: str
  verdict: str


def _pct(value: Optional[float]) -> str:
  return "-" if value is None else f"{100 * value:.2f}"


def _pp(value: float) -> str:
  return f"{100 * value:+.2f} pp"


def _margin(results: Results) -> Optional[float]:
  spread = results.seed_spread()
  return None if spread is None else 2 * spread


def _spearman(x, y) -> float:
  rank = lambda v: np.argsort(np.argsort(v))
  if len(x) < 3:
    return float("nan")
  return float(np.corrcoef(rank(np.asarray(x)), rank(np.asarray(y)))[0, 1])


def _k1_means(results: Results, task: str, **kwargs):
  """{architecture: mean pre_logits top-1} at k=1 for `task`."""
  means = {a: seed_mean(results.top1(task, a, 1, **kwargs)) for a in grid.ARCHITECTURES}
  return {a: m for a, m in means.items() if m is not None}


def architecture_matters(results: Results) -> Finding:
  """Finding 1: the spread across architectures and the best one per task."""
  margin = _margin(results)
  lines, ranges, best = [], {}, {}
  for task in grid.SELF_SUPERVISED:
    means = _k1_means(results, task)
    if len(means) < 2:
      continue
    ranges[task] = max(means.values()) - min(means.values())
    best[task] = max(means, key=means.get)
    order = " > ".join(grid.ARCHITECTURES[a].title
                       for a in sorted(means, key=means.get, reverse=True))
    lines.append(f"- {task}: range {_pp(ranges[task])}; {order}")
  verdict = INCONCLUSIVE
  if margin is not None and ranges:
    if all(r <= margin for r in ranges.values()):
      verdict = FAILS
    elif all(r > margin for r in ranges.values()) and len(set(best.values())) > 1:
      verdict = HOLDS
  return Finding(
      "(1) Architecture matters for self-supervision; rankings differ across tasks",
      "holds if for every task the range of pre_logits top-1 across the k=1 "
      "architectures exceeds 2s and the best architecture is not the same for "
      "all tasks; does not hold if every range is within 2s.",
      "\n".join(lines) or "- no task with two architectures yet", verdict)


def pre_logits_degrade(results: Results) -> Finding:
  """Finding 2: pre_logits minus the best layer, per task and architecture."""
  margin = _margin(results)
  lines, skip, vgg = [], [], []
  for task in grid.SELF_SUPERVISED:
    for architecture in grid.ARCHITECTURES:
      best = results.best_layer(task, architecture)
      if best is None:
        continue
      delta = (seed_mean(results.top1(task, architecture))
               - seed_mean(results.top1(task, architecture, 1, best)))
      (vgg if architecture == "vgg19" else skip).append(delta)
      lines.append(f"- {task}, {grid.ARCHITECTURES[architecture].title}: "
                   f"pre_logits - best ({best}) = {_pp(delta)}")
  verdict = INCONCLUSIVE
  if margin is not None and skip and vgg:
    skip_fine = np.mean([d >= -margin for d in skip]) > 0.5
    vgg_drops = np.mean([d < -margin for d in vgg]) > 0.5
    verdict = HOLDS if skip_fine and vgg_drops else FAILS
  return Finding(
      "(2) With skip connections pre_logits does not degrade; VGG's does",
      "holds if for most (task, ResNet/RevNet) models pre_logits is within 2s "
      "of the best layer and for most VGG models it is more than 2s below; "
      "does not hold otherwise (given a seed spread).",
      "\n".join(lines) or "- no per-layer results yet", verdict)


def wider_is_better(results: Results) -> Finding:
  """Finding 3: top-1 at the widest k minus k=1, full and 10% labels."""
  margin = _margin(results)
  lines, gains = [], []
  for task, architecture in dict.fromkeys(m[:2] for m in results.models()):
    widths = results.widths(task, architecture)
    if len(widths) < 2:
      continue
    for fraction in (1.0, 0.1):
      low, high = (seed_mean(results.top1(task, architecture, k, fraction=fraction))
                   for k in (widths[0], widths[-1]))
      if low is None or high is None:
        continue
      gains.append(high - low)
      lines.append(f"- {task}, {grid.ARCHITECTURES[architecture].title}, "
                   f"{fraction:.0%} labels: k={widths[-1]} - k={widths[0]} = "
                   f"{_pp(high - low)}")
  verdict = INCONCLUSIVE
  if margin is not None and gains:
    if all(g > margin for g in gains):
      verdict = HOLDS
    elif all(g <= margin for g in gains):
      verdict = FAILS
  return Finding(
      "(3) Wider networks are better, also with few labels",
      "holds if every widest-minus-narrowest gain (pre_logits, full and 10% "
      "labels) exceeds 2s; does not hold if none does.",
      "\n".join(lines) or "- no width series yet", verdict)


def linear_is_adequate(results: Results) -> Finding:
  """Finding 4: Spearman rank correlation of linear and MLP top-1."""
  models = [m for m in results.models() if results.top1(*m, probe="mlp")]
  linear = [seed_mean(results.top1(*m)) for m in models]
  mlp = [seed_mean(results.top1(*m, probe="mlp")) for m in models]
  rho = _spearman(linear, mlp)
  verdict = INCONCLUSIVE
  if len(models) >= 5:
    verdict = HOLDS if rho >= 0.8 else FAILS if rho < 0.5 else INCONCLUSIVE
  gap = np.mean(np.subtract(mlp, linear)) if models else float("nan")
  return Finding(
      "(4) A linear evaluation is adequate (the MLP ranks models alike)",
      "holds if the Spearman correlation of linear and MLP pre_logits top-1 "
      "over at least 5 models is >= 0.8; does not hold below 0.5.",
      f"- {len(models)} models; Spearman rho = {rho:.2f}; mean MLP - linear = "
      f"{_pp(gap) if models else '-'}", verdict)


def pretext_does_not_predict(results: Results) -> Finding:
  """Finding 5: per task, pretext accuracy vs linear top-1 across architectures."""
  lines, rhos = [], []
  for task in grid.SELF_SUPERVISED:
    pairs = [(seed_mean(results.pretext(task, a)), seed_mean(results.top1(task, a)))
             for a in grid.ARCHITECTURES if results.pretext(task, a)
             and results.top1(task, a)]
    if len(pairs) < 3:
      continue
    rho = _spearman(*zip(*pairs))
    rhos.append(rho)
    lines.append(f"- {task}: Spearman rho over {len(pairs)} architectures = {rho:.2f}")
  verdict = INCONCLUSIVE
  if rhos:
    weak = np.mean([r < 0.5 for r in rhos])
    verdict = HOLDS if weak >= 0.5 else FAILS if all(r >= 0.8 for r in rhos) else (
        INCONCLUSIVE)
  return Finding(
      "(5) Pretext accuracy does not predict downstream accuracy across architectures",
      "holds if in at least half of the tasks the Spearman correlation "
      "(k=1 architectures) of pretext accuracy and pre_logits top-1 is < 0.5; "
      "does not hold if it is >= 0.8 in every task.",
      "\n".join(lines) or "- fewer than 3 architectures per task yet", verdict)


def sgd_is_slow(results: Results) -> Finding:
  """Finding 6: epochs the SGD probe needs to come within max(1 pp, 2s) of
  the L-BFGS optimum."""
  tolerance = max(0.01, _margin(results) or 0.0)
  lines, needed = [], []
  for key, curve in sorted(results.curves().items()):
    task, architecture, k, probe, fraction, end_point, seed = key
    optimum = results.top1(task, architecture, k, end_point, "linear", fraction)
    if probe != "linear_sgd" or seed not in optimum:
      continue
    close = [i + 1 for i, a in enumerate(curve) if a >= optimum[seed] - tolerance]
    needed.append(close[0] if close else None)
    lines.append(
        f"- {task}, {grid.ARCHITECTURES[architecture].title} k={k}, {end_point}: "
        f"L-BFGS {_pct(optimum[seed])}, SGD after 1/10/{len(curve)} epochs "
        f"{_pct(curve[0])}/{_pct(curve[min(9, len(curve) - 1)])}/{_pct(curve[-1])}; "
        f"within {100 * tolerance:.2f} pp after "
        f"{close[0] if close else f'more than {len(curve)}'} epochs")
  verdict = INCONCLUSIVE
  if needed:
    if all(n is None or n > 100 for n in needed):
      verdict = HOLDS
    elif all(n is not None and n <= 10 for n in needed):
      verdict = FAILS
  return Finding(
      "(6) SGD for the linear model converges slowly",
      "holds if the SGD probe needs more than 100 epochs (or never gets) to "
      "come within max(1 pp, 2s) of the L-BFGS optimum; does not hold if it "
      "gets there within 10 epochs.",
      "\n".join(lines) or "- no SGD probe results yet", verdict)


FINDINGS = (architecture_matters, pre_logits_degrade, wider_is_better,
            linear_is_adequate, pretext_does_not_predict, sgd_is_slow)


def all_findings(results: Results) -> List[Finding]:
  return [finding(results) for finding in FINDINGS]
