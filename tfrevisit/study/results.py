"""The study's results as read back from the committed cell files.

A cell file (docs/study/cells/CELL.json, see `tfrevisit.study.cells.collect`)
holds the cell's settings, budget, pretext accuracies, times and evaluation
rows. `normalise_cell` reads old files alike (the first edition's cells have
no budget: "first edition"; their `epochs` is the training's, `train_epochs`
here, and the probes' own `epochs` become `probe_epochs`). `budget_views`
splits the cells by budget (one training rung per model, `resolve_rungs`);
`Results` indexes one budget's top-1 accuracies (fractions)
by (task, architecture, k, probe, label fraction, end point) -> {seed: top1},
a low-data row's top-1 being the mean over its label subsets.
"""
import collections
import copy
import glob
import json
import os
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from tfrevisit.evaluation.layer_plots import LAYER_ORDER
from tfrevisit.study import curves as curves_lib
from tfrevisit.study import grid

# `logits` (the pretext head) is not a representation and is left out of
# "best layer".
REPRESENTATIONS = LAYER_ORDER[:-1]
# The late layers where learning shows (finding 2), per architecture family.
_LATE = {"vgg19": ("fc6", "pre_logits")}
_LATE_SKIP = ("block3", "block4", "pre_logits")
# Cell columns repeated on every row of results.csv.
CELL_COLUMNS = ("cell", "task", "architecture", "filters_factor", "seed",
                "budget", "train_epochs", "pretext_accuracy",
                "heldout_pretext_accuracy", "global_step", "batch_size",
                "train_wall_time_s", "eval_wall_time_s", "train_cpu_time_s",
                "eval_cpu_time_s")
# The L-BFGS linear probe's diagnostics (issue 25) counted by the report.
DIAGNOSTICS = ("stopped_early", "hit_max_iterations", "l2_at_edge")
# Fewer L-BFGS iterations than this: the fit stopped early.
MIN_ITERATIONS = 3


def late_layers(architecture: str) -> Tuple[str, ...]:
  return _LATE.get(grid.ARCHITECTURES[architecture].backbone, _LATE_SKIP)


def normalise_cell(cell: Dict[str, Any]) -> Dict[str, Any]:
  """A cell file's content in the current schema (see module docstring);
  adds `heldout_pretext_accuracy` (the curve's last point, None without)."""
  cell = copy.deepcopy(cell)
  cell.setdefault("budget", grid.FIRST_EDITION)
  if "train_epochs" not in cell:
    cell["train_epochs"] = cell.pop("epochs", None)
  curve = cell.get("pretext_curve")
  cell["heldout_pretext_accuracy"] = (
      curves_lib.curve_arrays(curve)[1][-1] if curve else None)
  for row in cell["rows"]:
    if "epochs" in row:
      row["probe_epochs"] = row.pop("epochs")
  return cell


def load_cells(results_dir: str) -> List[Dict[str, Any]]:
  """Every results_dir/*.json cell file, normalised, sorted by cell name."""
  cells = []
  for path in sorted(glob.glob(os.path.join(results_dir, "*.json"))):
    with open(path) as f:
      cells.append(normalise_cell(json.load(f)))
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


# A cell's timed stages: its `{stage}_{wall,cpu}_time_s` fields.
STAGES = ("train", "eval")


def stage_seconds(cell: Dict[str, Any], kind: str,
                  stages: Sequence[str] = STAGES) -> float:
  """A cell result's `kind` ("wall" or "cpu") seconds summed over `stages`."""
  return sum(cell.get(f"{stage}_{kind}_time_s") or 0 for stage in stages)


# Budgets whose cells are rungs of another budget's ladder.
_LADDER_OF = {"pilot": "converged"}


def _budget_order(label: str) -> Tuple[int, str]:
  order = (grid.FIRST_EDITION, grid.SHORT, "converged")
  return (order.index(label) if label in order else len(order), label)


def budget_views(cells: Sequence[Dict[str, Any]]) -> Dict[str, List[Dict]]:
  """{budget label: its cells}: first edition, short, converged, then others.

  The untrained network (random_init) is the reference of every budget of
  its code era: a random_init cell of the first edition (before the fixed
  probe and the release's backbones) serves the first edition, one labelled
  otherwise (the converged grid's) every other budget; a budget without a
  reference of its era takes all random_init cells. Every "pilot" cell is a
  rung of the converged ladder (the same recipe stretched to its epochs; the
  converged grid adopts the pilot's cells at its budgets by name, not
  retrained), so it stands in the converged view and the pilot has no view
  of its own, which would repeat a part of that one. Within each budget a
  model trained at several rungs keeps one (`resolve_rungs`).
  """
  views = collections.defaultdict(list)
  for cell in cells:
    if cell["task"] == "random_init":
      continue
    views[_LADDER_OF.get(cell["budget"], cell["budget"])].append(cell)
  untrained = [c for c in cells if c["task"] == "random_init"]
  labels = sorted(views, key=_budget_order) or [grid.FIRST_EDITION]
  return {label: resolve_rungs(views[label])[0] + _references(untrained, label)
          for label in labels}


def model_key(cell: Dict[str, Any]) -> Tuple[str, str, int]:
  """(task, architecture, k): one model, whatever its budget and seed."""
  return (cell["task"], cell["architecture"], cell["filters_factor"])


def run_key(cell: Dict[str, Any]) -> Tuple[str, str, int, float, int]:
  """(task, architecture, k, train epochs, seed): one training run."""
  return (cell["task"], cell["architecture"], cell["filters_factor"],
          cell["train_epochs"], cell["seed"])


def late_gain(cell: Dict[str, Any]) -> Optional[float]:
  """`curves.late_gain` of the cell's held-out pretext curve over its
  training epochs; None without a curve or when the curve cannot tell."""
  curve = cell.get("pretext_curve")
  if not curve:
    return None
  return curves_lib.late_gain(*curves_lib.curve_arrays(curve),
                              cell.get("train_epochs"))


def gain_after_last_decay(cell: Dict[str, Any]) -> Optional[float]:
  """`curves.gain_after` the cell's last learning-rate decay (its recorded
  `decay_epochs`); None without a curve or a recorded decay, or when the
  curve cannot tell."""
  curve, decays = cell.get("pretext_curve"), cell.get("decay_epochs")
  if not curve or not decays:
    return None
  return curves_lib.gain_after(*curves_lib.curve_arrays(curve), max(decays),
                               cell.get("train_epochs"))


def _epochs(cell: Dict[str, Any]) -> float:
  return cell["train_epochs"] or 0


def model_budgets(cells: Sequence[Dict[str, Any]]
                  ) -> Dict[Tuple[str, str, int], Tuple[float, Tuple[int, ...]]]:
  """{(task, architecture, k): (budget epochs, seeds not converged)}.

  Each seed's ladder of rungs (e.g. 2 then 4 epochs for a seed still rising
  at 2) gives the rung `curves.choose_budget` picks from its pretext curves
  (the smallest that converged with every longer rung converged too), else
  its largest rung (that seed has not converged; a rung without a curve
  counts as not converged). The model's budget is the largest of these over
  its seeds: the smallest rung at which every seed converged, so that the
  seeds, whose spread every comparison uses, share one budget.
  """
  ladders = collections.defaultdict(lambda: collections.defaultdict(dict))
  for cell in cells:
    ladders[model_key(cell)][cell["seed"]][_epochs(cell)] = (
        cell.get("pretext_curve") or [])
  budgets = {}
  for model, seeds in ladders.items():
    picks = {seed: curves_lib.choose_budget({e: c for e, c in ladder.items() if e})
             for seed, ladder in seeds.items()}
    budget = max(max(seeds[seed]) if pick is None else pick
                 for seed, pick in picks.items())
    budgets[model] = (budget, tuple(sorted(s for s, p in picks.items() if p is None)))
  return budgets


def resolve_rungs(cells: Sequence[Dict[str, Any]]
                  ) -> Tuple[List[Dict], List[Dict]]:
  """One training budget per model: (kept cells, superseded cells).

  Each model (task, architecture, k) keeps its seeds' cells at the budget
  `model_budgets` gives it: each model at its own convergence, its seeds at
  one budget. The other rungs are superseded, and so is a seed without a
  cell at that budget (its longer rung not run yet). Cells keep their order.
  """
  budgets = model_budgets(cells)
  kept = [_epochs(c) == budgets[model_key(c)][0] for c in cells]
  return ([c for c, k in zip(cells, kept) if k],
          [c for c, k in zip(cells, kept) if not k])


def _references(untrained: Sequence[Dict], label: str) -> List[Dict]:
  """The random_init cells of budget `label`'s code era (see budget_views)."""
  first = label == grid.FIRST_EDITION
  same_era = [c for c in untrained if (c["budget"] == grid.FIRST_EDITION) == first]
  return same_era or list(untrained)


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


def stopped_early(row: Dict[str, Any]) -> Optional[bool]:
  """The row's `stopped_early`, else (rows older than issue 25) its final
  fit's `iterations` below 3, else None (unknown). The final fit is a refit
  warm-started from the chosen train fit, so the derived flag can mark a fit
  whose path from zero was longer."""
  if "stopped_early" in row:
    return bool(row["stopped_early"])
  if row.get("iterations") is None:
    return None
  return row["iterations"] < MIN_ITERATIONS


def diagnostic(row: Dict[str, Any], name: str) -> Optional[bool]:
  """One of DIAGNOSTICS for an L-BFGS row; None when the row predates it."""
  if name == "stopped_early":
    return stopped_early(row)
  return None if row.get(name) is None else bool(row[name])


def _diagnosed_row(cell: Dict, row: Dict) -> str:
  """"CELL END_POINT @FRACTION[ subset S] (L2 l, N iterations, top-1 T)":
  which fit, its chosen relative L2, its iterations and its test top-1 (%)."""
  subset = (f" subset {row['subset_seed']}"
            if row.get("subset_seed") is not None else "")
  facts = ([f"L2 {row['l2']:g}"] if row.get("l2") is not None else []) + [
      f"{row['iterations']} iterations", f"top-1 {100 * row['top1']:.1f}"]
  return (f"{cell['cell']} {row['end_point']} @{row['label_fraction']:g}"
          f"{subset} ({', '.join(facts)})")


class Results:
  """Top-1 accuracies of one budget's cells, indexed for tables and plots."""

  def __init__(self, cells: Sequence[Dict[str, Any]]):
    self.cells = list(cells)
    self._rows: Dict[Tuple, Dict[int, List[Dict]]] = {}
    self._curves: Dict[Tuple, List[float]] = {}
    for cell in self.cells:
      model = model_key(cell)
      for row in cell["rows"]:
        key = model + (row["probe"], float(row["label_fraction"]),
                       row["end_point"])
        self._rows.setdefault(key, {}).setdefault(cell["seed"], []).append(row)
        if "test_top1_per_epoch" in row:
          self._curves[key + (cell["seed"],)] = row["test_top1_per_epoch"]

  def rows(self, task, architecture, k=1, end_point="pre_logits",
           probe="linear", fraction=1.0) -> Dict[int, List[Dict]]:
    """{seed: [rows]} (several rows: one per label subset)."""
    return self._rows.get(
        (task, architecture, k, probe, float(fraction), end_point), {})

  def _per_seed(self, column, *args, **kwargs) -> Dict[int, float]:
    per_seed = {}
    for seed, rows in self.rows(*args, **kwargs).items():
      values = [r[column] for r in rows if r.get(column) is not None]
      if values:
        per_seed[seed] = float(np.mean(values))
    return per_seed

  def top1(self, task, architecture, k=1, end_point="pre_logits",
           probe="linear", fraction=1.0) -> Dict[int, float]:
    """{seed: test top-1} (mean over label subsets; empty if not evaluated)."""
    return self._per_seed("top1", task, architecture, k, end_point, probe,
                          fraction)

  def val_top1(self, task, architecture, k=1, end_point="pre_logits",
               probe="linear", fraction=1.0) -> Dict[int, float]:
    """{seed: validation top-1 of the chosen hyper-parameters}."""
    return self._per_seed("val_top1", task, architecture, k, end_point, probe,
                          fraction)

  def subset_std(self, task, architecture, k=1, end_point="pre_logits",
                 probe="linear", fraction=1.0) -> Dict[int, float]:
    """{seed: std of test top-1 over label subsets} for seeds with several."""
    return {seed: mean_std([r["top1"] for r in rows])[1]
            for seed, rows in self.rows(task, architecture, k, end_point, probe,
                                        fraction).items() if len(rows) > 1}

  def layers(self, task, architecture, k=1, probe="linear", fraction=1.0
             ) -> List[str]:
    """The evaluated representation end points of a model, in network order."""
    found = {key[-1] for key in self._rows
             if key[:5] == (task, architecture, k, probe, float(fraction))}
    return [e for e in REPRESENTATIONS if e in found]

  def best_layer(self, task, architecture, k=1, probe="linear", fraction=1.0,
                 among: Optional[Sequence[str]] = None) -> Optional[str]:
    """The representation (of `among`, default all) with the highest
    validation top-1 averaged over seeds: chosen without the test split."""
    layers = [e for e in self.layers(task, architecture, k, probe, fraction)
              if among is None or e in among]
    scored = {e: seed_mean(self.val_top1(task, architecture, k, e, probe, fraction))
              for e in layers}
    scored = {e: v for e, v in scored.items() if v is not None}
    return max(scored, key=scored.get) if scored else None

  def models(self) -> List[Tuple[str, str, int]]:
    """(task, architecture, k) of all cells, in grid order, once each."""
    order = lambda m: (grid.TASKS.index(m[0]), list(grid.ARCHITECTURES).index(m[1]),
                       m[2])
    return sorted({model_key(c) for c in self.cells}, key=order)

  def tasks(self) -> List[str]:
    """The tasks that have cells, in grid order."""
    return [t for t in grid.TASKS if any(m[0] == t for m in self.models())]

  def architectures(self, k: int = 1) -> List[str]:
    """The architectures with cells at width k, in grid order."""
    return [a for a in grid.ARCHITECTURES
            if any(m[1:] == (a, k) for m in self.models())]

  def widths(self, task, architecture) -> List[int]:
    return sorted({m[2] for m in self.models() if m[:2] == (task, architecture)})

  def _model_cells(self, task, architecture, k):
    return [c for c in self.cells
            if model_key(c) == (task, architecture, k)]

  def pretext(self, task, architecture, k=1) -> Dict[int, float]:
    """{seed: pretext accuracy}: held-out (the curve's last point) where
    measured, else the training accuracy of the last logged interval."""
    values = {}
    for c in self._model_cells(task, architecture, k):
      value = c.get("heldout_pretext_accuracy")
      value = c.get("pretext_accuracy") if value is None else value
      if value is not None:
        values[c["seed"]] = value
    return values

  def pretext_source(self) -> str:
    """Which pretext accuracy `pretext` gives for these cells."""
    trained = [c for c in self.cells if c["task"] != "random_init"]
    held_out = [c.get("heldout_pretext_accuracy") is not None for c in trained]
    if held_out and all(held_out):
      return "held-out"
    return "training (last logged interval)" if not any(held_out) else (
        "held-out where measured, else training")

  def pretext_curves(self) -> Dict[Tuple[str, str, int, float, int], List[Dict]]:
    """`run_key` -> held-out curve."""
    return {run_key(c): c["pretext_curve"]
            for c in self.cells if c.get("pretext_curve")}

  def curves(self) -> Dict[Tuple, List[float]]:
    """(task, architecture, k, probe, fraction, end point, seed) -> per-epoch
    test top-1 of the SGD/MLP probes."""
    return dict(self._curves)

  def linear_rows(self) -> List[Tuple[Dict, Dict]]:
    """(cell, row) of every L-BFGS linear probe row."""
    return [(c, r) for c in self.cells for r in c["rows"] if r["probe"] == "linear"]

  def diagnostics(self) -> Dict[str, Dict[str, Any]]:
    """{diagnostic: {"count", "unknown", "where": [`_diagnosed_row`]}} over
    the linear probe rows, plus "not_converged" from `converged`."""
    counts = {}
    for name in DIAGNOSTICS + ("not_converged",):
      count, unknown, where = 0, 0, []
      for cell, row in self.linear_rows():
        if name == "not_converged":
          value = None if row.get("converged") is None else not row["converged"]
        else:
          value = diagnostic(row, name)
        if value is None:
          unknown += 1
        elif value:
          count += 1
          where.append(_diagnosed_row(cell, row))
      counts[name] = {"count": count, "unknown": unknown, "where": where}
    return counts
