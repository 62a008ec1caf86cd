r"""Writes the study's report from the committed cell results alone.

`python -m tfrevisit.study.report [--results_dir docs/study/cells]
 [--workdir DIR] [--out_dir docs] [--readme README.md]
 [--plan configs/study/fashion_mnist_converged.gin ...]`

Reads results_dir/*.json (or, with --workdir, DIR/*/cell.json of a study
workdir) and writes OUT/study/results.csv (one row per cell x end point x
probe x label fraction x label subset, with the cell's budget, training
epochs, pretext accuracies and times; `probe_epochs` is a probe's own), the
PNG plots in OUT/study/ (NAME-BUDGET.png per training budget, and
pretext_curves.png), and OUT/study.md: per budget side by side, the Table 1
analogue (the layer chosen on validation accuracy and its test top-1, and
pre_logits), the verdict of each of the paper's findings by its stated rule,
the seed spreads, what training added over the untrained network at the
late layers and the linear probe's diagnostics; the pilot's budgets, the
hand-written context of OUT/study/notes.md if it exists, the captioned
plots, each finding's rule, power and evidence, and the cells with their
cost. With --readme, it also replaces the README's summary block (between
`README_BEGIN` and `README_END`). Each --plan (a study config, repeatable)
adds a line saying how many of its cells are done with today's code and
which are missing, and the verdict table's header says how many of a
budget's planned cells have run while not all have. The tables are built by
`tfrevisit.study.tables`.
"""
import argparse
import collections
import csv
import glob
import json
import os
import sys
from typing import Collection, Dict, List, Optional, Sequence, Tuple

import gin

from tfrevisit import cli
from tfrevisit.study import findings as findings_lib
from tfrevisit.study import grid
from tfrevisit.study import plots
from tfrevisit.study import stats
from tfrevisit.study import tables
from tfrevisit.study.tables import markdown_table
from tfrevisit.study.results import (Results, budget_views, flat_rows,
                                     load_cells, normalise_cell)

DEFAULT_OUT_DIR = os.path.join(
    os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))),
    "docs")
README_BEGIN = "<!-- study summary: written by tfrevisit.study.report -->"
README_END = "<!-- end of study summary -->"
NOTES_FILE = "study/notes.md"  # under the output directory
STUDY_COMMANDS = (
    "python -m tfrevisit.study --gin configs/study/fashion_mnist.gin --workdir DIR",
    "python -m tfrevisit.study --gin configs/study/fashion_mnist_short.gin --workdir DIR",
    "python -m tfrevisit.study --gin configs/study/fashion_mnist_pilot.gin --workdir DIR",
    "python -m tfrevisit.study --gin configs/study/fashion_mnist_converged.gin --workdir DIR")


def _done_names(cells: Sequence[Dict]) -> set:
  """Names of the cells with results of today's code (the first edition's
  cells do not count)."""
  return {cell["cell"] for cell in cells
          if cell["budget"] != grid.FIRST_EDITION}


def coverage(cells: Sequence[Dict], planned: Optional[Collection[str]],
             label: str = "Grid") -> str:
  """One line: how many of the `planned` cell names have results of today's
  code (the first edition's cells do not count), and which have not; ""
  without a plan."""
  if planned is None:
    return ""
  done_names = _done_names(cells)
  missing = [name for name in planned if name not in done_names]
  done = len(planned) - len(missing)
  if not missing:
    return f"{label}: all {done} cells done."
  shown = ", ".join(f"`{name}`" for name in missing[:30])
  more = f" and {len(missing) - 30} more" if len(missing) > 30 else ""
  return (f"{label}: {done} of {len(planned)} cells done; not yet run: "
          f"{shown}{more}.")


def budget_coverage(cells: Sequence[Dict],
                    plans: Optional[Dict[str, Dict[str, grid.Cell]]]
                    ) -> Dict[str, Tuple[int, int]]:
  """{budget label: (done, planned)} over the plans' trained cells (the
  untrained references excluded), by each planned cell's own budget label; a
  cell counts as done as in `coverage`."""
  planned = collections.defaultdict(set)
  for plan in (plans or {}).values():
    for name, cell in plan.items():
      if cell.task != "random_init":
        planned[cell.budget].add(name)
  done_names = _done_names(cells)
  return {budget: (len(names & done_names), len(names))
          for budget, names in planned.items()}


def study_markdown(cells: Sequence[Dict], plot_paths: Dict[str, str],
                   notes: str = "",
                   plans: Optional[Dict[str, Dict[str, grid.Cell]]] = None
                   ) -> str:
  """docs/study.md (see the module docstring)."""
  views = {b: Results(c) for b, c in budget_views(cells).items()}
  findings = {b: findings_lib.all_findings(r) for b, r in views.items()}
  parts = _introduction(cells, views, plans)
  parts += _tables(views, findings, budget_coverage(cells, plans))
  parts += _spreads_and_gains(views)
  parts += _diagnostics(views)
  pilot = tables.pilot_table(cells)
  if pilot:
    parts += ["## Training budgets per model", "",
              "Each run's held-out pretext accuracy gained over its last 25% "
              "of epochs and its linear top-1 on test at the layer chosen on "
              "val; the picked budget, which a model's seeds share, is the "
              "smallest at which every seed converged (gained less than 1 "
              "point) with every longer rung converged too. The "
              "last learning-rate decay falls inside those 25% in every "
              "recipe, so where the curve shows it, the "
              "entry also gives the gain from the first checkpoint after that "
              "decay to the end: what the run gained once the jump the decay "
              "causes was over.", "", markdown_table(pilot), ""]
  for note in tables.rung_notes(cells):
    parts += [note, ""]
  if notes:
    parts += [f"## Context (hand-written, {NOTES_FILE})", "", notes.strip(), ""]
  parts += _plots(plot_paths)
  parts += _findings(findings)
  parts += _cells_section(cells)
  return "\n".join(parts)


def curve_split_note(cells: Sequence[Dict]) -> str:
  """Which split each task's held-out pretext curve was read on; a curve on
  `test` (a task trained on trainval) decides its rung on test images."""
  tasks_by_split = {}
  for cell in cells:
    for split in {p.get("split") for p in cell.get("pretext_curve", [])}:
      tasks_by_split.setdefault(split, set()).add(cell["task"])
  if "test" not in tasks_by_split:
    return ""
  on_test = ", ".join(sorted(tasks_by_split["test"]))
  return (f" One decision reads the test split: {on_test} trains on trainval "
          "(as the release), so its held-out pretext curve, which decides only "
          "whether a model trains a longer rung, is measured on test"
          + ("" if "val" not in tasks_by_split else
             f" (the other tasks' curves on val: "
             f"{', '.join(sorted(tasks_by_split['val']))})") + ".")


def patch_size_note(cells: Sequence[Dict]) -> str:
  """The patch tasks' patch size, and the cells that cut another (cells
  that record none are left out)."""
  sizes = {c["cell"]: c["patch_size"] for c in cells if c.get("patch_size")}
  if len(set(sizes.values())) < 2:
    return ""
  usual = collections.Counter(sizes.values()).most_common(1)[0][0]
  others = ", ".join(f"`{name}` ({size}x{size})"
                     for name, size in sorted(sizes.items()) if size != usual)
  return (f" The patch tasks cut {usual}x{usual}-pixel patches, except "
          f"{others} (see the notes).")


def _introduction(cells, views, plans) -> List[str]:
  """The title, what the numbers are, and each grid's coverage."""
  budgets = " · ".join(views)
  parts = [
      "# The study on Fashion-MNIST",
      "",
      "Produced by " + ", ".join(f"`{c}`" for c in STUDY_COMMANDS)
      + " (seeds in the cell names, `-sN`; training budgets `-eE`, in "
      "epochs), then `python -m tfrevisit.study.report`. Accuracies: top-1 % "
      "on the Fashion-MNIST test split; mean ± std over n seeds where a model "
      "has several. Training budgets: `first edition` is the first "
      "edition's cells (0.5-1 epoch, its code and linear probe); `short` the "
      "same recipes rerun with today's backbones and probe; `converged` "
      "trains each model until its held-out pretext accuracy stops rising "
      "(a budget per task picked by the pilot, a longer rung for a model "
      "still rising). Entries give the budgets side by side in this order: "
      f"{budgets}. Nothing is chosen on the test split: the best layer is "
      "the one with the best validation top-1." + curve_split_note(cells)
      + patch_size_note(cells),
      "",
  ]
  for config, planned in (plans or {}).items():
    parts += [coverage(cells, planned, f"Grid `{config}`"), ""]
  return parts


def _tables(views, findings, budgets_run) -> List[str]:
  """The Table 1 analogues (best layer on val, pre_logits) and the verdicts."""
  budgets = " · ".join(views)
  return [
      f"## Table 1 analogue (k=1): the layer chosen on val, its test top-1 ({budgets})",
      "", markdown_table(tables.table1(views, tables.best_layer_entry)), "",
      f"## pre_logits linear top-1 (k=1; {budgets})", "",
      markdown_table(tables.table1(views, tables.pre_logits_entry)), "",
      tables.STOPPED_NOTE, "",
      "## Verdicts", "",
      "Each finding's rule, its power and its evidence are under "
      "[Findings](#findings).", "",
      markdown_table(tables.verdict_table(findings, budgets_run)), ""]


def _spreads_and_gains(views) -> List[str]:
  """The seed spreads per budget and the gains over the untrained networks."""
  parts = [
      "## Seed spreads", "",
      "Per-cell std over training seeds of pre_logits linear top-1, pooled "
      "within architecture family and task type (patch tasks apart); a model "
      "without seeds uses its group's, else its family's, else all seeded "
      "models'. A group's std is floored at the 5% quantile of what its df "
      "would show under the spread of all seeded models (keeping its df), so "
      "that a near-zero std by chance does not make every difference count "
      "(`tfrevisit.study.stats`).", ""]
  for budget, results in views.items():
    table = stats.SpreadTable({m: results.top1(*m) for m in results.models()})
    parts += [f"- {budget}: " + ("; ".join(table.describe()) or "no seeds")]
  parts += ["", "## What training added over the untrained network (k=1)", "",
            "Linear top-1 of each trained model minus that of the same "
            "architecture untrained (`random_init`), in pp, at the late "
            "layers (finding 2).", ""]
  for budget, results in views.items():
    gains = tables.gain_table(results)
    if gains:
      parts += [f"{budget}:", "", markdown_table(gains), ""]
  return parts


def _diagnostics(views) -> List[str]:
  """The linear probe's diagnostics counted per budget, and the rows of each
  (the first edition's: only where a fit stopped early)."""
  parts = ["## Linear probe diagnostics", "",
           "Rows of the L-BFGS linear probe whose fit stopped before its 3rd "
           "iteration, hit the iteration cap, did not converge or chose an "
           "L2 at the edge of its grid. The first edition's rows predate the "
           "recorded diagnostics (issue 25): for them stopped early is "
           "derived from the final fit's iteration count (a refit warm-"
           "started from the chosen train fit; newer rows count from zero, "
           "warm starts included), the cap and the grid's edge are "
           "unknown.", "",
           markdown_table(tables.diagnostics_table(views)), ""]
  for budget, results in views.items():
    found = results.diagnostics()
    # The first edition's other diagnostics are unknown or its old probe's.
    names = (["stopped_early"] if budget == grid.FIRST_EDITION
             else list(_DIAGNOSTIC_NAMES))
    for name in names:
      if found[name]["where"]:
        parts += [f"{_DIAGNOSTIC_NAMES[name]} ({budget}): "
                  + ", ".join(found[name]["where"]) + ".", ""]
  return parts


_DIAGNOSTIC_NAMES = {"stopped_early": "Stopped early",
                     "hit_max_iterations": "Hit the iteration cap",
                     "not_converged": "Not converged",
                     "l2_at_edge": "L2 at the grid's edge"}


def _plots(plot_paths: Dict[str, str]) -> List[str]:
  """The figures, grouped by plot, each group with its caption."""
  parts = ["## Plots", "",
           "One figure per training budget (`NAME-BUDGET.png`), each group "
           "with its caption.", ""]
  for stem in [*plots.PLOTS, *plots.ALL_BUDGETS_PLOTS]:
    names = [n for n in plot_paths if n.rsplit(".", 1)[0].split("-")[0] == stem]
    if names:
      parts += [f"![{n}](study/{os.path.basename(plot_paths[n])})" for n in names]
      parts += ["", f"*{', '.join(names)}.* {plots.CAPTIONS[stem]}", ""]
  return parts


def _findings(findings) -> List[str]:
  """Each finding's rule, and its verdict, power and evidence per budget."""
  parts = ["## Findings", "", findings_lib.__doc__.split("\n\n", 1)[1].strip(),
           ""]
  for index, finding in enumerate(next(iter(findings.values()))):
    parts += [f"### {finding.title}", "", f"Rule: {finding.rule}", ""]
    for budget, found in findings.items():
      parts += [f"**{budget}: {found[index].verdict}.** Power: "
                f"{found[index].power}", "", found[index].evidence, ""]
  return parts


def _cells_section(cells) -> List[str]:
  """The table of cells and the time each budget took."""
  parts = ["## Cells", "",
           "Pretext accuracy: the training accuracy of the last logged "
           "interval and, for cells with a budget, the held-out accuracy at "
           "the last checkpoint; converged by the rule of the pilot.", "",
           tables.cells_table(cells), ""]
  for budget in sorted({c["budget"] for c in cells}):
    chosen = [c for c in cells if c["budget"] == budget]
    parts.append(f"- {budget}: {len(chosen)} cells, "
                 f"{tables.hours(chosen, 'wall'):.1f} h wall, "
                 f"{tables.cpu_hours(chosen)}" + tables.machines(chosen))
  parts += ["", f"Total: {len(cells)} cells, "
            f"{tables.hours(cells, 'wall'):.1f} hours of wall time, "
            f"{tables.cpu_hours(cells)} (user + system, all "
            "threads) in the train and evaluation stages."
            + tables.unrecorded_cpu(cells), ""]
  return parts


def readme_summary(cells: Sequence[Dict],
                   plans: Optional[Dict[str, Dict[str, grid.Cell]]] = None
                   ) -> str:
  """The README's study block: the Table 1 analogue (pre_logits, budgets
  side by side), the verdicts per budget and the grids' coverage."""
  views = {b: Results(c) for b, c in budget_views(cells).items()}
  findings = {b: findings_lib.all_findings(r) for b, r in views.items()}
  lines = [markdown_table(tables.table1(views, tables.pre_logits_entry)),
           "",
           f"{len(cells)} cells; pre_logits linear probe top-1 % on the "
           f"Fashion-MNIST test split per training budget ({' · '.join(views)}; "
           f"{tables.STOPPED_NOTE.rstrip('.')}). "
           "Verdicts on the paper's findings (rules, power and evidence in "
           "[docs/study.md](docs/study.md)):", "",
           markdown_table(tables.verdict_table(
               findings, budget_coverage(cells, plans)))]
  for config, planned in (plans or {}).items():
    lines += ["", coverage(cells, planned, f"Grid `{config}`")]
  return "\n".join(lines)


def update_readme(path: str, cells: Sequence[Dict],
                  plans: Optional[Dict[str, Dict[str, grid.Cell]]] = None
                  ) -> None:
  """Replaces the text between README_BEGIN and README_END in `path`."""
  with open(path) as f:
    text = f.read()
  begin, end = text.find(README_BEGIN), text.find(README_END)
  if begin < 0 or end < begin:
    raise cli.UserError(
        f"{path} has no study summary block; add the lines {README_BEGIN!r} "
        f"and {README_END!r} where the summary goes.")
  text = (text[:begin + len(README_BEGIN)] + "\n" + readme_summary(cells, plans)
          + "\n" + text[end:])
  with open(path, "w") as f:
    f.write(text)


def write_csv(rows: Sequence[Dict], path: str) -> None:
  columns = list(dict.fromkeys(k for row in rows for k in row))
  with open(path, "w", newline="") as f:
    writer = csv.DictWriter(f, fieldnames=columns, restval="", lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)


def workdir_cells(workdir: str) -> List[Dict]:
  cells = []
  for path in sorted(glob.glob(os.path.join(workdir, "*", "cell.json"))):
    with open(path) as f:
      cells.append(normalise_cell(json.load(f)))
  return cells


def write_plots(cells: Sequence[Dict], study_dir: str) -> Dict[str, str]:
  """NAME-BUDGET.png per budget and plot, then the all-budget plots;
  {file name: path} of those drawn. Stale PNGs of the report are removed."""
  for stale in glob.glob(os.path.join(study_dir, "*.png")):
    os.remove(stale)
  written = {}
  views = {b: Results(c) for b, c in budget_views(cells).items()}
  for stem, plot in plots.PLOTS.items():
    for budget, results in views.items():
      name = f"{stem}-{budget.replace(' ', '_')}.png"
      if plot(results, os.path.join(study_dir, name)):
        written[name] = os.path.join(study_dir, name)
  for stem, plot in plots.ALL_BUDGETS_PLOTS.items():
    name = f"{stem}.png"
    if plot(Results(cells), os.path.join(study_dir, name)):
      written[name] = os.path.join(study_dir, name)
  return written


def write_report(cells: Sequence[Dict], out_dir: str,
                 plans: Optional[Dict[str, Dict[str, grid.Cell]]] = None
                 ) -> Dict[str, str]:
  """Writes results.csv, the plots and study.md (with the coverage of each
  plan's cell names); returns {name: path}."""
  cells = [normalise_cell(c) for c in cells]
  study_dir = os.path.join(out_dir, "study")
  os.makedirs(study_dir, exist_ok=True)
  written = {"results.csv": os.path.join(study_dir, "results.csv")}
  write_csv(flat_rows(cells), written["results.csv"])
  plot_paths = write_plots(cells, study_dir)
  written.update(plot_paths)
  notes_path = os.path.join(out_dir, NOTES_FILE)
  notes = open(notes_path).read() if os.path.exists(notes_path) else ""
  written["study.md"] = os.path.join(out_dir, "study.md")
  with open(written["study.md"], "w") as f:
    f.write(study_markdown(cells, plot_paths, notes, plans))
  return written


def planned_cells(configs: Sequence[str]) -> Dict[str, Dict[str, grid.Cell]]:
  """{config: {cell name: cell} of its grid}, each config parsed on its own."""
  plans = {}
  for config in configs:
    gin.clear_config()
    grid.parse_config([config])
    plans[config] = {cell.name: cell for cell in grid.study().cells}
  gin.clear_config()
  return plans


@cli.entry_point
def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--results_dir",
                      default=os.path.join(DEFAULT_OUT_DIR, "study", "cells"),
                      help="committed cell results (CELL.json files).")
  parser.add_argument("--workdir", default=None,
                      help="read DIR/*/cell.json of a study workdir instead.")
  parser.add_argument("--out_dir", default=DEFAULT_OUT_DIR,
                      help="writes OUT/study.md and OUT/study/.")
  parser.add_argument("--readme", default=None,
                      help="also update this README's study summary block.")
  parser.add_argument("--plan", "--gin", dest="plans", action="append",
                      default=[], metavar="CONFIG",
                      help="a study config whose cells not yet run are named; "
                      "repeatable (one per grid).")
  cli.add_verbose_flag(parser)
  args = parser.parse_args(argv)
  cells = workdir_cells(args.workdir) if args.workdir else load_cells(args.results_dir)
  if not cells:
    raise cli.UserError(f"No cell results in {args.workdir}; run "
                        "`python -m tfrevisit.study --workdir ...` first.")
  if args.readme and not os.path.isfile(args.readme):
    raise cli.UserError(f"--readme {args.readme}: no such file.")
  plans = planned_cells(args.plans) if args.plans else None
  cli.begin_work()
  for name, path in write_report(cells, args.out_dir, plans).items():
    print(f"{name}: {path}")
  if args.readme:
    update_readme(args.readme, cells, plans)
    print(f"README summary: {args.readme}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
