"""The study report's tables and sentences, computed from cell results:
the Table 1 analogues, the gains over the untrained networks, the verdicts,
the probe's diagnostics, the training budgets per model and the cells' cost.
Each table is a list of rows (lists of strings; the first row the header),
rendered by `markdown_table`; accuracies are printed in percent."""
from typing import Dict, List, Optional, Sequence, Tuple

from tfrevisit.study import curves as curves_lib
from tfrevisit.study import findings as findings_lib
from tfrevisit.study import grid
from tfrevisit.study.results import (STAGES, Results, chance,
                                     gain_after_last_decay, late_gain,
                                     late_layers, mean_std, model_budgets,
                                     model_key, resolve_rungs, seed_mean,
                                     stage_seconds, stopped_early)


def _seeds_entry(seeds: Dict[int, float]) -> str:
  """'mean ± std, n=seeds' in percent, or the value alone for one seed."""
  if not seeds:
    return "-"
  mean, std = mean_std(list(seeds.values()))
  if std is None:
    return f"{100 * mean:.1f}"
  return f"{100 * mean:.1f} ± {100 * std:.1f}, n={len(seeds)}"


# Marks an entry whose L-BFGS fit stopped before its 3rd iteration.
STOPPED_MARK = "†"
STOPPED_NOTE = (f"{STOPPED_MARK}: the L-BFGS fit stopped before its 3rd "
                "iteration, a probe artefact rather than a measurement.")


def _entry(results: Results, task: str, architecture: str, k: int,
           end_point: str) -> str:
  """`_seeds_entry` of linear top-1 at an end point, marked if a fit stopped
  early."""
  rows = [r for seed_rows in results.rows(task, architecture, k,
                                          end_point).values() for r in seed_rows]
  mark = STOPPED_MARK if any(stopped_early(r) for r in rows) else ""
  return _seeds_entry(results.top1(task, architecture, k, end_point)) + mark


def pre_logits_entry(results: Results, task: str, architecture: str,
                     k: int = 1) -> str:
  return _entry(results, task, architecture, k, "pre_logits")


def best_layer_entry(results: Results, task: str, architecture: str,
                     k: int = 1) -> str:
  """"top-1 (layer)" of the layer chosen on val; "-" if none."""
  best = results.best_layer(task, architecture, k)
  if best is None:
    return "-"
  return f"{_entry(results, task, architecture, k, best)} ({best})"


def table1(views: Dict[str, Results], entry, k: int = 1) -> List[List[str]]:
  """Rows of a Table 1 analogue, budgets side by side in each entry
  ("first edition · converged"): per task and architecture at width k,
  `entry(results, task, architecture)`."""
  architectures = [a for a in grid.ARCHITECTURES
                   if any(a in r.architectures(k) for r in views.values())]
  tasks = [t for t in grid.TASKS if any(t in r.tasks() for r in views.values())]
  table = [["task"] + [grid.ARCHITECTURES[a].title for a in architectures]]
  for task in tasks:
    row = [task]
    for architecture in architectures:
      row.append(" · ".join(entry(r, task, architecture) for r in views.values()))
    table.append(row)
  return table


def _gain(results: Results, task: str, architecture: str, k: int,
          end_point: str) -> Optional[float]:
  """Mean top-1 of a trained model minus the untrained network's at one end
  point (linear probe, all labels), or None if either is missing."""
  trained, untrained = (seed_mean(results.top1(t, architecture, k, end_point))
                        for t in (task, "random_init"))
  if trained is None or untrained is None:
    return None
  return trained - untrained


def gain_table(results: Results, k: int = 1) -> List[List[str]]:
  """Rows of what training added over the untrained network (random_init) at
  the late layers, per task and architecture at width k: the gain in pp at
  each late layer evaluated on both; [] without random_init cells."""
  architectures = [a for a in results.architectures(k)
                   if results.layers("random_init", a, k)]
  if not architectures:
    return []
  table = [["task"] + [grid.ARCHITECTURES[a].title for a in architectures]]
  for task in results.tasks():
    if task == "random_init":
      continue
    row = [task]
    for architecture in architectures:
      gains = [(e, _gain(results, task, architecture, k, e))
               for e in late_layers(architecture)]
      row.append(", ".join(f"{e} {100 * g:+.1f}" for e, g in gains
                           if g is not None) or "-")
    table.append(row)
  return table


def markdown_table(rows: Sequence[Sequence[str]]) -> str:
  lines = ["| " + " | ".join(rows[0]) + " |",
           "|" + "---|" * len(rows[0])]
  return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows[1:]])


def hours(cells, kind: str, stages: Sequence[str] = STAGES) -> float:
  """Total `kind` ("wall" or "cpu") time of `stages`, in hours."""
  return sum(stage_seconds(c, kind, stages) for c in cells) / 3600


def cpu_hours(cells) -> str:
  """"X CPU h (training T, evaluation E)": the issue's aim counts training."""
  return (f"{hours(cells, 'cpu'):.1f} CPU h (training "
          f"{hours(cells, 'cpu', ('train',)):.1f}, evaluation "
          f"{hours(cells, 'cpu', ('eval',)):.1f})")


def machines(cells) -> str:
  """"; on CPU (N cells), ..." for the cells that recorded their machines."""
  counts = {}
  for cell in cells:
    for name in cell.get("machines", []):
      counts[name] = counts.get(name, 0) + 1
  if not counts:
    return ""
  unrecorded = sum(1 for c in cells if not c.get("machines"))
  return "; on " + ", ".join(
      [f"{name} ({_cells(n)})" for name, n in sorted(counts.items())]
      + ([f"unrecorded ({_cells(unrecorded)})"] if unrecorded else []))


def _cells(n: int) -> str:
  return f"{n} cell{'' if n == 1 else 's'}"


def unrecorded_cpu(cells) -> str:
  """A sentence naming the cells with killed attempts whose CPU time is not
  in the totals (their wall time is), or ""."""
  missing = {c["cell"]: c["unrecorded_cpu_attempts"] for c in cells
             if c.get("unrecorded_cpu_attempts")}
  if not missing:
    return ""
  listed = ", ".join(f"`{name}` ({n})" for name, n in sorted(missing.items()))
  return (" Not in the CPU hours: killed attempts (runner stopped before its "
          f"first CPU poll) of {listed}; their wall time is counted.")


def verdict_table(findings: Dict[str, List[findings_lib.Finding]],
                  budgets_run: Optional[Dict[str, Tuple[int, int]]] = None
                  ) -> List[List[str]]:
  """Rows: finding title, its verdict per budget. A budget whose planned
  cells have not all run (`budgets_run`: {budget: (done, planned)}) says how
  many have: its verdicts rest on a part of its grid."""
  budgets = list(findings)

  def header(budget):
    done, planned = (budgets_run or {}).get(budget, (0, 0))
    if done < planned:
      return f"{budget} ({done} of {planned} cells run)"
    return budget

  table = [["finding"] + [header(b) for b in budgets]]
  for index, finding in enumerate(findings[budgets[0]]):
    table.append([finding.title] + [f"**{findings[b][index].verdict}**"
                                    for b in budgets])
  return table


def diagnostics_table(views: Dict[str, Results]) -> List[List[str]]:
  """Rows: per budget, linear probe rows and the count of each diagnostic
  ("n (+u unknown)" where old rows lack it)."""
  names = {"stopped_early": "stopped before 3 iterations",
           "hit_max_iterations": "hit the iteration cap",
           "not_converged": "not converged",
           "l2_at_edge": "L2 at the grid's edge"}
  table = [["budget", "L-BFGS rows"] + list(names.values())]
  for budget, results in views.items():
    counts = results.diagnostics()
    row = [budget, str(len(results.linear_rows()))]
    for name in names:
      found = counts[name]
      row.append(f"{found['count']}" + (f" ({found['unknown']} unknown)"
                                        if found["unknown"] else ""))
    table.append(row)
  return table


def _pretext_entry(cell: Dict) -> str:
  parts = []
  if cell.get("pretext_accuracy") is not None:
    parts.append(f"{100 * cell['pretext_accuracy']:.1f}")
  if cell.get("heldout_pretext_accuracy") is not None:
    parts.append(f"held-out {100 * cell['heldout_pretext_accuracy']:.1f}")
  if not parts:
    return "-"
  return " / ".join(parts) + f" ({100 * chance(cell):.1f})"


def _gains(cell: Dict, gain: float, unit: str = "") -> str:
  """"+G`unit`" (the late gain `gain` in points) and, where the curve shows
  it, "; +A after the last decay"."""
  after = gain_after_last_decay(cell)
  return f"{100 * gain:+.2f}{unit}" + (
      "" if after is None else f"; {100 * after:+.2f} after the last decay")


def _converged_entry(cell: Dict) -> str:
  """"yes (gains)" or "no (gains)": converged by the rule (`_gains`)."""
  if not cell.get("pretext_curve"):
    return "-"
  gain = late_gain(cell)
  if gain is None:
    return "too few points"
  return f"{'yes' if gain < curves_lib.MIN_GAIN else 'no'} ({_gains(cell, gain)})"


def cells_table(cells) -> str:
  rows = [["cell", "budget", "epochs", "pretext acc. % (chance)",
           "converged (late gain, pts)", "steps", "train min", "eval min",
           "CPU h"]]
  for cell in cells:
    rows.append([cell["cell"], cell["budget"], f"{cell.get('train_epochs')}",
                 _pretext_entry(cell), _converged_entry(cell),
                 str(cell.get("global_step")),
                 f"{(cell.get('train_wall_time_s') or 0) / 60:.1f}",
                 f"{(cell.get('eval_wall_time_s') or 0) / 60:.1f}",
                 f"{hours([cell], 'cpu'):.2f}"])
  return markdown_table(rows)


def pilot_table(cells: Sequence[Dict]) -> List[List[str]]:
  """Rows: per task, architecture and seed of cells with pretext curves, each
  budget's late gain and linear top-1 (what more epochs give), and the
  budget the model's seeds share (`results.model_budgets`, the rung the
  tables report); [] without curves."""
  with_curves = [c for c in cells if c.get("pretext_curve")]
  runs: Dict = {}
  for cell in with_curves:
    runs.setdefault(model_key(cell) + (cell["seed"],), {})[cell["train_epochs"]] = cell
  if not runs:
    return []
  budgets = model_budgets(with_curves)
  table = [["task", "architecture", "seed",
            "budgets: converged (late gain, pts), linear top-1 (layer chosen on val)",
            "picked"]]
  for (task, architecture, k, seed), by_budget in sorted(runs.items()):
    gains = "; ".join(
        f"{e:g} ep: {_converged_entry(c)}, "
        f"{best_layer_entry(Results([c]), task, architecture, k)}"
        for e, c in sorted(by_budget.items()))
    budget, rising = budgets[(task, architecture, k)]
    picked = f"{budget:g}" + (
        f", not converged (seed {', '.join(map(str, rising))})" if rising else "")
    table.append([task, f"{grid.ARCHITECTURES[architecture].title} k={k}",
                  str(seed), gains, picked])
  return table


def still_rising(cells: Sequence[Dict]) -> List[str]:
  """"CELL (+G pts; ...)" (`_gains`) for each cell with a budget whose
  held-out pretext accuracy gained at least `curves.MIN_GAIN` over its last
  25% of epochs: it had not converged by the pilot's rule."""
  gains = [(cell, late_gain(cell)) for cell in cells]
  return [f"`{cell['cell']}` ({_gains(cell, gain, ' pts')})" for cell, gain in gains
          if gain is not None and gain >= curves_lib.MIN_GAIN]


def rung_notes(cells: Sequence[Dict]) -> List[str]:
  """The report's sentences on training budgets: models trained at a longer
  rung (the rung each table uses, `results.resolve_rungs`) and the cells
  still rising at the rung they are reported at."""
  kept, superseded = resolve_rungs([c for c in cells if c.get("pretext_curve")])
  # Every model keeps at least one seed at its budget.
  used = {model_key(c): c["train_epochs"] for c in kept}
  reported_seeds = {model_key(c) + (c["seed"],) for c in kept}
  notes = []
  if superseded:
    entries = []
    for cell in superseded:
      gain, budget = late_gain(cell), used[model_key(cell)]
      missing = model_key(cell) + (cell["seed"],) not in reported_seeds
      entries.append(f"`{cell['cell']}`"
                     + ("" if gain is None else f" ({100 * gain:+.2f} pts)")
                     + f": reported at {budget:g} epochs"
                     + (", where this seed is not trained yet" if missing else ""))
    notes.append("Models trained at several budgets are reported at the "
                 "smallest at which each seed's pretext accuracy converged "
                 "with every longer rung converged too, else the largest "
                 "(each model at its own convergence, its seeds at one "
                 "budget); not reported: "
                 + "; ".join(entries) + ".")
  rising = still_rising(kept)
  if rising:
    notes.append("Cells whose pretext accuracy was still rising at the end of "
                 "the largest budget they trained (not converged by the same "
                 "rule; the notes say which get a longer rung): "
                 + ", ".join(rising) + ".")
  return notes
