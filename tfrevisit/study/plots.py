"""The study's figures (PNG, matplotlib's Agg backend), one function each.

Every function takes `Results` (one budget's, or all cells' for the pretext
curves) and an output path, draws what the results hold (missing cells are
skipped) and returns the path, or None when there is nothing to draw.
Accuracies are plotted in percent. `CAPTIONS` says what each figure shows
and how to read it; the report prints them under the figures.
"""
import math
from typing import Dict, Optional

# pylint: disable=g-import-not-at-top
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

from tfrevisit.study import grid
from tfrevisit.study.results import (REPRESENTATIONS, Results, chance,
                                     mean_std, resolve_rungs, run_key)
# pylint: enable=g-import-not-at-top

_MARKERS = {"rotation": "o", "exemplar": "s", "relative_patch_location": "^",
            "jigsaw": "D", "supervised": "*", "random_init": "x"}
_WIDTH_STYLES = {1: "-", 2: "--", 4: ":"}
_FONT = 9


def _color(architecture: str):
  return plt.get_cmap("tab10")(list(grid.ARCHITECTURES).index(architecture))


def _title(architecture: str) -> str:
  return grid.ARCHITECTURES[architecture].title


def _stats(seeds_to_top1):
  mean, std = mean_std(list(seeds_to_top1.values()))
  return 100 * mean, 100 * (std or 0.0)


def _save(fig, path: str) -> str:
  """Saves with the canvas grown to hold a legend outside the axes."""
  fig.tight_layout()
  fig.savefig(path, dpi=110, bbox_inches="tight")
  plt.close(fig)
  return path


def _subplots(count: int, width: float = 4.2, height: float = 3.4,
              columns: int = 3):
  columns = min(count, columns)
  rows = math.ceil(count / columns)
  fig, axes = plt.subplots(rows, columns, figsize=(width * columns, height * rows),
                           squeeze=False)
  for ax in axes.flat[count:]:
    ax.axis("off")
  return fig, list(axes.flat)


def _figure_legend(fig, axes):
  """One legend for all panels, right of them (entries deduplicated)."""
  handles = {}
  for ax in axes:
    for handle, label in zip(*ax.get_legend_handles_labels()):
      handles.setdefault(label, handle)
  if handles:
    fig.legend(handles.values(), handles.keys(), loc="center left",
               bbox_to_anchor=(1.0, 0.5), fontsize=_FONT, frameon=False)


def layers(results: Results, path: str) -> Optional[str]:
  """Figure 2 analogue: linear top-1 per end point, one panel per task, one
  line per architecture (k=1, mean over seeds, std as error bars)."""
  tasks = results.tasks()
  if not tasks:
    return None
  fig, axes = _subplots(len(tasks))
  for ax, task in zip(axes, tasks):
    per_architecture = {a: results.layers(task, a) for a in grid.ARCHITECTURES}
    axis = [e for e in REPRESENTATIONS
            if any(e in names for names in per_architecture.values())]
    for architecture, names in per_architecture.items():
      if not names:
        continue
      stats = [_stats(results.top1(task, architecture, 1, e)) for e in names]
      chosen = results.best_layer(task, architecture)
      ax.errorbar([axis.index(e) for e in names], [s[0] for s in stats],
                  yerr=[s[1] for s in stats], marker="o", markersize=3,
                  capsize=2, color=_color(architecture), label=_title(architecture))
      if chosen in names:
        ax.plot(axis.index(chosen), stats[names.index(chosen)][0], marker="*",
                markersize=11, color=_color(architecture), linestyle="")
    ax.set_xticks(range(len(axis)), axis, rotation=45, fontsize=_FONT - 1)
    ax.set_title(task, fontsize=_FONT + 1)
    ax.set_ylabel("linear top-1 % (test)", fontsize=_FONT)
  _figure_legend(fig, axes)
  return _save(fig, path)


def width(results: Results, path: str) -> Optional[str]:
  """Figures 3/4 analogue: pre_logits linear top-1 against k (log2), one
  panel per task with several widths; 100% labels solid, 10% dashed."""
  series = [(t, a) for t, a, _ in results.models()
            if len(results.widths(t, a)) > 1]
  tasks = list(dict.fromkeys(t for t, _ in series))
  if not tasks:
    return None
  fig, axes = _subplots(len(tasks), columns=2)
  for ax, task in zip(axes, tasks):
    for architecture in dict.fromkeys(a for t, a in series if t == task):
      for fraction, style in ((1.0, "-"), (0.1, "--")):
        ks = [k for k in results.widths(task, architecture)
              if results.top1(task, architecture, k, fraction=fraction)]
        if not ks:
          continue
        stats = [_stats(results.top1(task, architecture, k, fraction=fraction))
                 for k in ks]
        ax.errorbar(ks, [s[0] for s in stats], yerr=[s[1] for s in stats],
                    linestyle=style, marker="o", capsize=2,
                    color=_color(architecture),
                    label=f"{_title(architecture)}, {fraction:.0%} labels "
                    f"({'solid' if fraction == 1 else 'dashed'})")
    ax.set_xscale("log", base=2)
    ax.set_xticks([1, 2, 4], ["1", "2", "4"])
    ax.set_xlabel("widening factor k", fontsize=_FONT)
    ax.set_ylabel("pre_logits linear top-1 % (test)", fontsize=_FONT)
    ax.set_title(task, fontsize=_FONT + 1)
  fig.suptitle("solid: 100% of the labels, dashed: 10%", fontsize=_FONT + 1)
  _figure_legend(fig, axes)
  return _save(fig, path)


def pretext_vs_linear(results: Results, path: str) -> Optional[str]:
  """Figure 5 analogue: pretext accuracy vs pre_logits linear top-1 per
  model, one panel per self-supervised task, colour = architecture, marker
  size = width."""
  tasks = [t for t in results.tasks() if t in grid.SELF_SUPERVISED]
  if not tasks:
    return None
  fig, axes = _subplots(len(tasks), columns=2)
  for ax, task in zip(axes, tasks):
    for _, architecture, k in [m for m in results.models() if m[0] == task]:
      pretext, top1 = results.pretext(task, architecture, k), results.top1(
          task, architecture, k)
      seeds = sorted(set(pretext) & set(top1))
      ax.scatter([100 * pretext[s] for s in seeds], [100 * top1[s] for s in seeds],
                 color=_color(architecture), s=25 * k,
                 label=f"{_title(architecture)} k={k}")
    ax.set_xlabel("pretext accuracy %", fontsize=_FONT)
    ax.set_ylabel("pre_logits linear top-1 % (test)", fontsize=_FONT)
    ax.set_title(task, fontsize=_FONT + 1)
  fig.suptitle(f"pretext accuracy: {results.pretext_source()}",
               fontsize=_FONT + 1)
  _figure_legend(fig, axes)
  return _save(fig, path)


def linear_vs_mlp(results: Results, path: str) -> Optional[str]:
  """Linear vs MLP top-1 at pre_logits per model (marker = task), y = x."""
  points = [(m, _stats(results.top1(*m)), _stats(results.top1(*m, probe="mlp")))
            for m in results.models()
            if results.top1(*m, probe="mlp") and results.top1(*m)]
  if not points:
    return None
  fig, ax = plt.subplots(figsize=(5.5, 4.5))
  for (task, architecture, _), (linear, _), (mlp, _) in points:
    ax.scatter(linear, mlp, marker=_MARKERS[task], color=_color(architecture))
  low = min(min(p[1][0], p[2][0]) for p in points) - 2
  high = max(max(p[1][0], p[2][0]) for p in points) + 2
  ax.plot([low, high], [low, high], "k:", linewidth=1, label="y = x")
  handles = [plt.Line2D([], [], linestyle="", marker=_MARKERS[t], color="gray",
                        label=t) for t in grid.TASKS
             if t in {m[0] for m, _, _ in points}]
  handles += [plt.Line2D([], [], linestyle="", marker="o", color=_color(a),
                         label=_title(a)) for a in grid.ARCHITECTURES
              if a in {m[1] for m, _, _ in points}]
  fig.legend(handles=handles, loc="center left", bbox_to_anchor=(1.0, 0.5),
             fontsize=_FONT, frameon=False)
  ax.set_xlabel("linear (L-BFGS) top-1 % (test)", fontsize=_FONT)
  ax.set_ylabel("MLP top-1 % (test)", fontsize=_FONT)
  ax.set_title("pre_logits: linear vs MLP", fontsize=_FONT + 1)
  return _save(fig, path)


def low_data(results: Results, path: str) -> Optional[str]:
  """Low-data setting: pre_logits linear top-1 against the fraction of
  labels (log scale), small multiples, one panel per task, one line per
  architecture (line style = width); error bars: std over label subsets
  (or seeds)."""
  fractions = (0.01, 0.1, 1.0)
  models = [m for m in results.models()
            if sum(bool(results.top1(*m, fraction=f)) for f in fractions) > 1]
  tasks = [t for t in grid.TASKS if any(m[0] == t for m in models)]
  if not tasks:
    return None
  fig, axes = _subplots(len(tasks), width=3.8, height=3.2)
  for ax, task in zip(axes, tasks):
    for _, architecture, k in [m for m in models if m[0] == task]:
      found = [f for f in fractions if results.top1(task, architecture, k, fraction=f)]
      means, errors = [], []
      for f in found:
        mean, seed_std = _stats(results.top1(task, architecture, k, fraction=f))
        subset = list(results.subset_std(task, architecture, k,
                                         fraction=f).values())
        means.append(mean)
        errors.append(100 * float(np.mean(subset)) if subset else seed_std)
      ax.errorbar(found, means, yerr=errors, marker=_MARKERS[task], markersize=4,
                  capsize=2, color=_color(architecture),
                  linestyle=_WIDTH_STYLES.get(k, "-."),
                  label=f"{_title(architecture)} k={k}")
    ax.set_xscale("log")
    ax.set_xticks(fractions, ["1%", "10%", "100%"])
    ax.set_xlabel("training labels", fontsize=_FONT)
    ax.set_ylabel("pre_logits linear top-1 % (test)", fontsize=_FONT)
    ax.set_title(task, fontsize=_FONT + 1)
  _figure_legend(fig, axes)
  return _save(fig, path)


def sgd_convergence(results: Results, path: str) -> Optional[str]:
  """Figure 7 analogue: the SGD linear probe's test top-1 per epoch against
  the L-BFGS optimum of the same end point (dashed)."""
  curves = {k: v for k, v in results.curves().items() if k[3] == "linear_sgd"}
  if not curves:
    return None
  fig, ax = plt.subplots(figsize=(6, 4.5))
  for index, ((task, architecture, k, _, fraction, end_point, seed), curve) in (
      enumerate(sorted(curves.items()))):
    color = plt.get_cmap("tab10")(index)
    epochs = np.arange(1, len(curve) + 1)
    ax.plot(epochs, 100 * np.asarray(curve), color=color,
            label=f"SGD {task} {_title(architecture)} k={k} {end_point} s{seed}")
    optimum = results.top1(task, architecture, k, end_point, "linear", fraction)
    if seed in optimum:
      ax.axhline(100 * optimum[seed], color=color, linestyle="--",
                 label=f"L-BFGS {end_point}")
  ax.set_xscale("log")
  ax.set_xlabel("epoch", fontsize=_FONT)
  ax.set_ylabel("test top-1 %", fontsize=_FONT)
  fig.legend(loc="center left", bbox_to_anchor=(1.0, 0.5), fontsize=_FONT,
             frameon=False)
  return _save(fig, path)


def pretext_curves(results: Results, path: str) -> Optional[str]:
  """Held-out pretext accuracy per epoch, one panel per task, colour =
  architecture, line style = width, one line per run (budget and seed):
  faint where a longer or shorter rung of the same model is the one reported
  (`resolve_rungs`); the dotted line is chance."""
  curves = results.pretext_curves()
  tasks = [t for t in grid.TASKS if any(key[0] == t for key in curves)]
  if not tasks:
    return None
  _, superseded = resolve_rungs([c for c in results.cells
                                 if c.get("pretext_curve")])
  faint = {run_key(c) for c in superseded}
  fig, axes = _subplots(len(tasks), width=4.0, height=3.2)
  for ax, task in zip(axes, tasks):
    for key, curve in sorted(curves.items()):
      (t, architecture, k, _, _) = key
      if t != task:
        continue
      points = sorted(curve, key=lambda p: p["epoch"])
      style = (dict(alpha=0.25, linewidth=0.8) if key in faint else
               dict(marker=".", label=f"{_title(architecture)} k={k}"))
      ax.plot([p["epoch"] for p in points], [100 * p["accuracy"] for p in points],
              color=_color(architecture), linestyle=_WIDTH_STYLES.get(k, "-."),
              **style)
    cell = next(c for c in results.cells if c["task"] == task)
    ax.axhline(100 * chance(cell), color="gray", linestyle=":", linewidth=1)
    ax.set_xlabel("epoch", fontsize=_FONT)
    ax.set_ylabel("held-out pretext accuracy %", fontsize=_FONT)
    ax.set_title(task, fontsize=_FONT + 1)
  _figure_legend(fig, axes)
  return _save(fig, path)


# Output file stem -> plot function, in the order of docs/study.md; the
# report writes STEM-BUDGET.png per budget (pretext_curves: once, all cells).
PLOTS = {
    "layers": layers,
    "width": width,
    "pretext_vs_linear": pretext_vs_linear,
    "linear_vs_mlp": linear_vs_mlp,
    "low_data": low_data,
    "sgd_convergence": sgd_convergence,
}
ALL_BUDGETS_PLOTS = {"pretext_curves": pretext_curves}

CAPTIONS: Dict[str, str] = {
    "layers": "Linear top-1 on the test split per end point (x, network order) "
              "for each architecture at k=1 (colour), one panel per task; "
              "error bars: std over seeds where a model has several. The star "
              "marks the layer chosen on validation accuracy, whose test "
              "top-1 the tables report; the curves themselves are "
              "description, not selection.",
    "width": "pre_logits linear top-1 against the widening factor k (log "
             "scale), one panel per task; solid lines: all training labels, "
             "dashed: 10% of them (mean over label subsets); colour = "
             "architecture.",
    "pretext_vs_linear": "Each point is one model (seed): its pretext "
                         "accuracy (x) against its pre_logits linear top-1 "
                         "(y), colour = architecture, size = width k. "
                         "Finding 5 asks whether x orders the architectures "
                         "as y does.",
    "linear_vs_mlp": "pre_logits top-1 of the linear probe (x) against the "
                     "MLP probe (y) per model; marker = task, colour = "
                     "architecture; the dotted line is y = x. Finding 4 "
                     "asks whether both order the models alike.",
    "low_data": "pre_logits linear top-1 against the fraction of training "
                "labels (1%, 10%, 100%; log scale), one panel per task, "
                "colour = architecture, line style = width (solid k=1, "
                "dashed k=2, dotted k=4). Error bars: std over the label "
                "subsets (else over seeds).",
    "sgd_convergence": "Test top-1 of the linear model trained by SGD per "
                       "epoch (solid) against the L-BFGS optimum on the same "
                       "features (dashed, same colour). Finding 6 counts the "
                       "epochs SGD needs to come within 0.5 pp of it.",
    "pretext_curves": "Held-out pretext accuracy at each checkpoint (x: "
                      "epochs trained), one panel per task, colour = "
                      "architecture, line style = width; every run (budget, "
                      "seed) is one line, so a model's budgets show as lines "
                      "of different lengths, faint where the tables report "
                      "another of its budgets (the one its seeds share: the "
                      "smallest at which every seed converged with every "
                      "longer one converged too, else the largest). The "
                      "dotted grey line is chance. "
                      "A run has converged when it gained less than 1 point "
                      "over its last 25% of epochs.",
}
