"""The study's results as read back from the committed cell files.

A cell file (docs/study/cells/CELL.json, see `tfrevisit.study.cells.collect`)
holds the cell's settings, pretext accuracy, wall times and evaluation rows.
`Results` indexes their top-1 accuracies (fractions) by (task, architecture,
k, probe, label fraction, end point) -> {seed: top1}.
"""
import glob
import json
import os
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from tfrevisit.study import grid

# End points in network order; `logits` (the pretext head) is not a
# representation and is left out of "best layer".
LAYER_ORDER = ("after_root", "conv1", "block1", "block2", "block3", "block4",
               "fc6", "pre_logits", "logits")
REPRESENTATIONS = LAYER_ORDER[:-1]
# Cell columns repeated on every row of results.csv.
CELL_COLUMNS = ("cell", "task", "architecture", "filters_factor", "seed",
                "pretext_accuracy", "global_step", "batch_size", "epochs",
                "train_wall_time_s", "eval_wall_time_s", "train_cpu_time_s",
                "eval_cpu_time_s")


def load_cells(results_dir: str) -> List[Dict[str, Any]]:
  """Every results_dir/*.json cell file, sorted by cell name."""
  cells = []
  for path in sorted(glob.glob(os.path.join(results_dir, "*.json"))):
    with open(path) as f:
      cells.append(json.load(f))
  if not cells:
    raise FileNotFoundError(f"No cell results in {results_dir}; run "
                            "`python -m tfrevisit.study` first.")
  return cells


def flat_rows(cells: Sequence[Dict[str, Any]]) -> List[Dict[str, Any]]:
  """One row per cell x evaluation row, cell columns first; list-valued
  columns (per-epoch curves) are left to the JSON files."""
  rows = []
  for cell in cells:
    for row in cell["rows"]:
      rows.append({**{c: cell.get(c) for c in CELL_COLUMNS},
                   **{k: v for k, v in row.items() if not isinstance(v, list)}})
  return rows


def mean_std(values: Sequence[float]) -> Tuple[float, Optional[float]]:
  """Mean and sample std (None for a single value)."""
  values = np.asarray(values, dtype=float)
  return (float(values.mean()),
          float(values.std(ddof=1)) if len(values) > 1 else None)


def seed_mean(seeds: Dict[int, float]) -> Optional[float]:
  """The mean of a {seed: value} dict, None if it is empty."""
  return mean_std(list(seeds.values()))[0] if seeds else None


def chance(cell: Dict[str, Any]) -> float:
  """The pretext accuracy of guessing, for a cell's task and batch."""
  task = cell["task"]
  if task == "exemplar":  # nearest neighbour among the batch's other crops
    crops = cell.get("num_crops") or 8
    return (crops - 1) / (cell["batch_size"] * crops - 1)
  return {"rotation": 1 / 4, "relative_patch_location": 1 / 8,
          "jigsaw": 1 / 100, "supervised": 1 / 10}[task]


class Results:
  """Top-1 accuracies of the cells, indexed for tables and plots."""

  def __init__(self, cells: Sequence[Dict[str, Any]]):
    self.cells = list(cells)
    self._top1: Dict[Tuple, Dict[int, float]] = {}
    self._curves: Dict[Tuple, List[float]] = {}
    for cell in self.cells:
      model = (cell["task"], cell["architecture"], cell["filters_factor"])
      for row in cell["rows"]:
        key = model + (row["probe"], float(row["label_fraction"]),
                       row["end_point"])
        self._top1.setdefault(key, {})[cell["seed"]] = row["top1"]
        if "test_top1_per_epoch" in row:
          self._curves[key + (cell["seed"],)] = row["test_top1_per_epoch"]

  def top1(self, task, architecture, k=1, end_point="pre_logits",
           probe="linear", fraction=1.0) -> Dict[int, float]:
    """{seed: top-1} (empty if not evaluated)."""
    return self._top1.get(
        (task, architecture, k, probe, float(fraction), end_point), {})

  def layers(self, task, architecture, k=1, probe="linear", fraction=1.0
             ) -> List[str]:
    """The evaluated representation end points of a model, in network order."""
    found = {key[-1] for key in self._top1
             if key[:5] == (task, architecture, k, probe, float(fraction))}
    return [e for e in REPRESENTATIONS if e in found]

  def best_layer(self, task, architecture, k=1, probe="linear", fraction=1.0
                 ) -> Optional[str]:
    """The representation with the highest top-1 averaged over seeds."""
    layers = self.layers(task, architecture, k, probe, fraction)
    if not layers:
      return None
    return max(layers, key=lambda e: mean_std(list(
        self.top1(task, architecture, k, e, probe, fraction).values()))[0])

  def models(self) -> List[Tuple[str, str, int]]:
    """(task, architecture, k) of all cells, in grid order, once each."""
    order = lambda m: (grid.TASKS.index(m[0]), list(grid.ARCHITECTURES).index(m[1]),
                       m[2])
    return sorted({(c["task"], c["architecture"], c["filters_factor"])
                   for c in self.cells}, key=order)

  def tasks(self) -> List[str]:
    """The tasks that have cells, in grid order."""
    return [t for t in grid.TASKS if any(m[0] == t for m in self.models())]

  def widths(self, task, architecture) -> List[int]:
    return sorted({m[2] for m in self.models() if m[:2] == (task, architecture)})

  def pretext(self, task, architecture, k=1) -> Dict[int, float]:
    """{seed: pretext accuracy} of a model."""
    return {c["seed"]: c["pretext_accuracy"] for c in self.cells
            if (c["task"], c["architecture"], c["filters_factor"])
            == (task, architecture, k) and c["pretext_accuracy"] is not None}

  def curves(self) -> Dict[Tuple, List[float]]:
    """(task, architecture, k, probe, fraction, end point, seed) -> per-epoch
    test top-1 of the SGD/MLP probes."""
    return dict(self._curves)

  def seed_spread(self, end_point="pre_logits") -> Optional[float]:
    """The largest std over seeds of linear top-1 among models with several
    seeds (a conservative run-to-run spread), or None without seeds."""
    stds = [mean_std(list(self.top1(*m, end_point=end_point).values()))[1]
            for m in self.models()]
    stds = [s for s in stds if s is not None]
    return max(stds) if stds else None
