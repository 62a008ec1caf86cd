"""The study's figures (PNG, matplotlib's Agg backend), one function each.

Every function takes `Results` and an output path, draws what the results
hold (missing cells are skipped) and returns the path, or None when there is
nothing to draw. Accuracies are plotted in percent.
"""
import math
from typing import Optional

# pylint: disable=g-import-not-at-top
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

from tfrevisit.study import grid
from tfrevisit.study.results import REPRESENTATIONS, Results, mean_std
# pylint: enable=g-import-not-at-top

_MARKERS = {"rotation": "o", "exemplar": "s", "relative_patch_location": "^",
            "jigsaw": "D", "supervised": "*", "random_init": "x"}


def _color(architecture: str):
  return plt.get_cmap("tab10")(list(grid.ARCHITECTURES).index(architecture))


def _title(architecture: str) -> str:
  return grid.ARCHITECTURES[architecture].title


def _stats(seeds_to_top1):
  mean, std = mean_std(list(seeds_to_top1.values()))
  return 100 * mean, 100 * (std or 0.0)


def _save(fig, path: str) -> str:
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)
  return path


def _subplots(count: int, width: float = 4.2, height: float = 3.4):
  columns = min(count, 3)
  rows = math.ceil(count / columns)
  fig, axes = plt.subplots(rows, columns, figsize=(width * columns, height * rows),
                           squeeze=False)
  for ax in axes.flat[count:]:
    ax.axis("off")
  return fig, list(axes.flat)


def layers(results: Results, path: str) -> Optional[str]:
  """Figure 2 analogue: linear top-1 per end point, one panel per task, one
  line per architecture (k=1, mean over seeds, std as error bars)."""
  tasks = results.tasks()
  if not tasks:
    return None
  fig, axes = _subplots(len(tasks))
  for ax, task in zip(axes, tasks):
    per_architecture = {a: results.layers(task, a) for a in grid.ARCHITECTURES}
    # One x position per end point of any architecture, in network order.
    axis = [e for e in REPRESENTATIONS
            if any(e in names for names in per_architecture.values())]
    for architecture, names in per_architecture.items():
      if not names:
        continue
      stats = [_stats(results.top1(task, architecture, 1, e)) for e in names]
      ax.errorbar([axis.index(e) for e in names], [s[0] for s in stats],
                  yerr=[s[1] for s in stats], marker="o", capsize=2,
                  color=_color(architecture), label=_title(architecture))
    ax.set_xticks(range(len(axis)), axis, rotation=45, fontsize=7)
    ax.set_title(task)
    ax.set_ylabel("linear top-1 %")
  axes[0].legend(fontsize=7)
  return _save(fig, path)


def width(results: Results, path: str) -> Optional[str]:
  """Figures 3/4 analogue: pre_logits linear top-1 against k (log2), one
  panel per task with several widths; full labels solid, 10% dashed."""
  series = [(t, a) for t, a, _ in results.models()
            if len(results.widths(t, a)) > 1]
  tasks = list(dict.fromkeys(t for t, _ in series))
  if not tasks:
    return None
  fig, axes = _subplots(len(tasks))
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
                    label=f"{_title(architecture)}, {fraction:.0%} labels")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("widening factor k")
    ax.set_ylabel("pre_logits linear top-1 %")
    ax.set_title(task)
    ax.legend(fontsize=7)
  return _save(fig, path)


def pretext_vs_linear(results: Results, path: str) -> Optional[str]:
  """Figure 5 analogue: pretext accuracy vs pre_logits linear top-1 per
  model, one panel per self-supervised task, colour = architecture."""
  tasks = [t for t in results.tasks() if t in grid.SELF_SUPERVISED]
  if not tasks:
    return None
  fig, axes = _subplots(len(tasks))
  for ax, task in zip(axes, tasks):
    for _, architecture, k in [m for m in results.models() if m[0] == task]:
      pretext, top1 = results.pretext(task, architecture, k), results.top1(
          task, architecture, k)
      seeds = sorted(set(pretext) & set(top1))
      ax.scatter([100 * pretext[s] for s in seeds], [100 * top1[s] for s in seeds],
                 color=_color(architecture), s=20 + 15 * k,
                 label=f"{_title(architecture)} k={k}")
    ax.set_xlabel("pretext accuracy % (training, last interval)")
    ax.set_ylabel("pre_logits linear top-1 %")
    ax.set_title(task)
    ax.legend(fontsize=6)
  return _save(fig, path)


def linear_vs_mlp(results: Results, path: str) -> Optional[str]:
  """Linear vs MLP top-1 at pre_logits per model (marker = task), y = x."""
  points = [(m, _stats(results.top1(*m)), _stats(results.top1(*m, probe="mlp")))
            for m in results.models() if results.top1(*m, probe="mlp")]
  if not points:
    return None
  fig, ax = plt.subplots(figsize=(5, 4.5))
  for (task, architecture, _), (linear, _), (mlp, _) in points:
    ax.scatter(linear, mlp, marker=_MARKERS[task], color=_color(architecture))
  low = min(min(p[1][0], p[2][0]) for p in points) - 2
  high = max(max(p[1][0], p[2][0]) for p in points) + 2
  ax.plot([low, high], [low, high], "k:", linewidth=1)
  _legends(ax, {m[0] for m, _, _ in points}, {m[1] for m, _, _ in points})
  ax.set_xlabel("linear (L-BFGS) top-1 %")
  ax.set_ylabel("MLP top-1 %")
  ax.set_title("pre_logits: linear vs MLP")
  return _save(fig, path)


def _legends(ax, tasks, architectures):
  handles = [plt.Line2D([], [], linestyle="", marker=_MARKERS[t], color="gray",
                        label=t) for t in grid.TASKS if t in tasks]
  handles += [plt.Line2D([], [], linestyle="", marker="o", color=_color(a),
                         label=_title(a)) for a in grid.ARCHITECTURES
              if a in architectures]
  ax.legend(handles=handles, fontsize=6)


def low_data(results: Results, path: str) -> Optional[str]:
  """Low-data setting: pre_logits linear top-1 against the fraction of
  labels (log scale), one line per model evaluated at several fractions."""
  fractions = (0.01, 0.1, 1.0)
  models = [m for m in results.models()
            if sum(bool(results.top1(*m, fraction=f)) for f in fractions) > 1]
  if not models:
    return None
  fig, ax = plt.subplots(figsize=(6, 4.5))
  for task, architecture, k in models:
    found = [f for f in fractions if results.top1(task, architecture, k, fraction=f)]
    stats = [_stats(results.top1(task, architecture, k, fraction=f)) for f in found]
    ax.errorbar(found, [s[0] for s in stats], yerr=[s[1] for s in stats],
                marker=_MARKERS[task], capsize=2, color=_color(architecture),
                linewidth=0.5 + 0.5 * math.log2(k + 1),
                label=f"{task} {_title(architecture)} k={k}")
  ax.set_xscale("log")
  ax.set_xlabel("fraction of training labels")
  ax.set_ylabel("pre_logits linear top-1 %")
  ax.legend(fontsize=5)
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
  ax.set_xlabel("epoch")
  ax.set_ylabel("test top-1 %")
  ax.legend(fontsize=6)
  return _save(fig, path)


# Output file name -> plot function, in the order of docs/study.md.
PLOTS = {
    "layers.png": layers,
    "width.png": width,
    "pretext_vs_linear.png": pretext_vs_linear,
    "linear_vs_mlp.png": linear_vs_mlp,
    "low_data.png": low_data,
    "sgd_convergence.png": sgd_convergence,
}
