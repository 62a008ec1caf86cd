"""Pictures of one evaluation, per layer (PNG, matplotlib's Agg backend).

(The study's figures, across models, are `tfrevisit.study.plots`.)

`write_plots(rows, workdir)` draws, into WORKDIR/plots:
  accuracy_<probe>.png  top-1 per end point in network order, one line per
                        label fraction (and model), from the result rows;
  tsne_<end point>.png  a 2-D t-SNE (scikit-learn) of one end point's cached
                        features of the reported split (at most 2000 seeded
                        points), coloured by class.
"""
import collections
import os
from typing import Dict, List, Optional, Sequence

# pylint: disable=g-import-not-at-top
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
from sklearn import manifold

from tfrevisit.evaluation import features as features_lib
# pylint: enable=g-import-not-at-top

Row = Dict[str, object]
# End points in network order (VGG: block1..block5 and fc6 since issue 26,
# conv1 in the study's first-edition cells), the pretext head last.
LAYER_ORDER = ("after_root", "conv1", "block1", "block2", "block3", "block4",
               "block5", "fc6", "pre_logits", "logits")


def network_order(names: Sequence[str]) -> List[str]:
  """End points in network order; unknown names last, in their given order."""
  rank = {name: i for i, name in enumerate(LAYER_ORDER)}
  return sorted(dict.fromkeys(names), key=lambda n: rank.get(n, len(rank)))


def _save(fig, path: str) -> str:
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)
  return path


def accuracy_curve(rows: Sequence[Row], probe: str, path: str) -> str:
  """Top-1 (%) per end point of `probe`'s rows: one line per (model, label
  fraction), with the std over draws as error bars where rows give it."""
  rows = [row for row in rows if row["probe"] == probe]
  axis = network_order([row["end_point"] for row in rows])
  lines = collections.defaultdict(dict)
  for row in rows:
    lines[(row.get("model"), row.get("label_fraction", 1.0))][
        row["end_point"]] = row
  fig, ax = plt.subplots(figsize=(5.5, 3.6))
  for (model, fraction), by_end_point in lines.items():
    names = [name for name in axis if name in by_end_point]
    line = [by_end_point[name] for name in names]
    ax.errorbar([axis.index(name) for name in names],
                [100 * row["top1"] for row in line],
                yerr=[100 * row.get("top1_std", 0.0) for row in line],
                marker="o", capsize=2,
                label=" ".join(filter(None, [model, f"{fraction:.0%} of labels"])))
  ax.set_xticks(range(len(axis)), axis, rotation=45, fontsize=8)
  ax.set_ylabel(f"{probe} top-1 %")
  ax.set_title(f"{probe} probe per layer")
  ax.legend(fontsize=7)
  return _save(fig, path)


def tsne(features, labels: np.ndarray, path: str, title: str,
         max_points: int = 2000, seed: int = 0) -> str:
  """A 2-D t-SNE of [N, D] features (a seeded subsample of at most
  `max_points` rows) coloured by class."""
  index = np.sort(np.random.default_rng(seed).choice(
      len(labels), min(len(labels), max_points), replace=False))
  points = np.asarray(features[index], np.float32)
  embedding = manifold.TSNE(
      2, perplexity=min(30.0, (len(index) - 1) / 3), init="pca",
      random_state=seed).fit_transform(points)
  fig, ax = plt.subplots(figsize=(5.5, 5))
  labels = labels[index]
  num_classes = int(labels.max()) + 1
  colors = matplotlib.colormaps[
      "tab10" if num_classes <= 10 else "turbo"].resampled(num_classes)
  for label in np.unique(labels):
    ax.scatter(*embedding[labels == label].T, s=4, color=colors(int(label)),
               label=str(label))
  if num_classes <= 20:
    ax.legend(fontsize=6, title="class", markerscale=2)
  ax.set_title(title)
  ax.set_xticks([])
  ax.set_yticks([])
  return _save(fig, path)


def write_plots(rows: Sequence[Row], workdir: str,
                tsne_end_point: Optional[str] = None,
                tsne_points: int = 2000) -> List[str]:
  """Writes the accuracy curves and a t-SNE to WORKDIR/plots.

  Args:
    rows: the evaluation's result rows.
    workdir: the evaluation's workdir (its feature cache is read).
    tsne_end_point: the end point of the t-SNE; default `pre_logits` if
      cached, else the deepest cached one.
    tsne_points: the t-SNE's subsample size.

  Returns:
    The PNG paths.
  """
  directory = os.path.join(workdir, "plots")
  os.makedirs(directory, exist_ok=True)
  paths = [accuracy_curve(rows, probe,
                          os.path.join(directory, f"accuracy_{probe}.png"))
           for probe in dict.fromkeys(row["probe"] for row in rows)]
  split = rows[0]["reported_split"]
  features, labels = features_lib.read_cached_features(
      os.path.join(workdir, "features", split))
  end_point = tsne_end_point or (
      "pre_logits" if "pre_logits" in features
      else network_order(features)[-1])
  paths.append(tsne(features[end_point], labels,
                    os.path.join(directory, f"tsne_{end_point}.png"),
                    f"t-SNE of {end_point} ({split})", tsne_points))
  return paths
