r"""Writes the study's report from the committed cell results alone.

`python -m tfrevisit.study.report [--results_dir docs/study/cells]
 [--workdir DIR] [--out_dir docs] [--readme README.md]
 [--gin configs/study/fashion_mnist.gin]`

Reads results_dir/*.json (or, with --workdir, DIR/*/cell.json of a study
workdir) and writes OUT/study/results.csv (one row per cell x end point x
probe x label fraction, with the cell's pretext accuracy and wall times), the
PNG plots in OUT/study/, and OUT/study.md: the Table 1 analogue, what
training added over the untrained network, the hand-written context of
OUT/study/notes.md if it exists (code versions, caveats), the plots and the
evidence and verdict for each of the paper's findings. With --readme, it also
replaces the README's summary block (between `README_BEGIN` and `README_END`)
with the Table 1 analogue and the verdicts. With --gin (the study's config),
both say how many of the grid's cells are done and name the missing ones.
"""
import argparse
import csv
import glob
import json
import os
import sys
from typing import Dict, List, Optional, Sequence

from tfrevisit import cli
from tfrevisit import gin_config
from tfrevisit.study import findings as findings_lib
from tfrevisit.study import grid
from tfrevisit.study import plots
from tfrevisit.study.results import (Results, chance, flat_rows, load_cells,
                                     mean_std, seed_mean)

DEFAULT_OUT_DIR = os.path.join(
    os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))),
    "docs")
README_BEGIN = "<!-- study summary: written by tfrevisit.study.report -->"
README_END = "<!-- end of study summary -->"
NOTES_FILE = "study/notes.md"  # under the output directory
STUDY_COMMAND = ("python -m tfrevisit.study --gin configs/study/fashion_mnist.gin "
                 "--workdir DIR")


def _cell(seeds: Dict[int, float]) -> str:
  """'mean ± std, n=seeds' in percent, or the value alone for one seed."""
  if not seeds:
    return "-"
  mean, std = mean_std(list(seeds.values()))
  if std is None:
    return f"{100 * mean:.1f}"
  return f"{100 * mean:.1f} ± {100 * std:.1f}, n={len(seeds)}"


def coverage(results: Results, planned: Optional[Sequence[str]]) -> str:
  """One line: how many of the `planned` cell names have results, and which
  have not; "" without a plan."""
  if planned is None:
    return ""
  done_names = {cell["cell"] for cell in results.cells}
  missing = [name for name in planned if name not in done_names]
  done = len(planned) - len(missing)
  if not missing:
    return f"Grid: all {done} cells done."
  return (f"Grid: {done} of {len(planned)} cells done; not yet run: "
          + ", ".join(f"`{name}`" for name in missing) + ".")


def table1(results: Results, k: int = 1) -> List[List[str]]:
  """Rows of the Table 1 analogue: per task, per architecture at width k,
  "best layer top-1 (layer) / pre_logits top-1" (linear, all labels)."""
  architectures = [a for a in grid.ARCHITECTURES
                   if any(m[1:] == (a, k) for m in results.models())]
  table = [["task"] + [grid.ARCHITECTURES[a].title for a in architectures]]
  for task in results.tasks():
    row = [task]
    for architecture in architectures:
      best = results.best_layer(task, architecture, k)
      row.append("-" if best is None else
                 f"{_cell(results.top1(task, architecture, k, best))} ({best}) / "
                 f"{_cell(results.top1(task, architecture, k))}")
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
  """Rows of what training added over the untrained network (random_init),
  per task and architecture at width k: "pre_logits gain / largest gain
  (its layer)", in pp; [] without random_init cells."""
  architectures = [a for a in grid.ARCHITECTURES
                   if results.layers("random_init", a, k)]
  if not architectures:
    return []
  table = [["task"] + [grid.ARCHITECTURES[a].title for a in architectures]]
  for task in results.tasks():
    if task == "random_init":
      continue
    row = [task]
    for architecture in architectures:
      gains = {e: _gain(results, task, architecture, k, e)
               for e in results.layers(task, architecture, k)}
      gains = {e: g for e, g in gains.items() if g is not None}
      if "pre_logits" not in gains:
        row.append("-")
        continue
      largest = max(gains, key=gains.get)
      row.append(f"{100 * gains['pre_logits']:+.1f} / "
                 f"{100 * gains[largest]:+.1f} ({largest})")
    table.append(row)
  return table


def markdown_table(rows: Sequence[Sequence[str]]) -> str:
  lines = ["| " + " | ".join(rows[0]) + " |",
           "|" + "---|" * len(rows[0])]
  return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows[1:]])


def _hours(cells, kind: str) -> float:
  """Total train + evaluation `kind` ("wall" or "cpu") time, in hours."""
  return sum((c.get(f"train_{kind}_time_s") or 0)
             + (c.get(f"eval_{kind}_time_s") or 0) for c in cells) / 3600


def _cells_table(cells) -> str:
  rows = [["cell", "pretext acc. % (chance)", "steps", "train min",
           "eval min", "CPU h"]]
  for cell in cells:
    pretext = cell.get("pretext_accuracy")
    rows.append([cell["cell"],
                 "-" if pretext is None else
                 f"{100 * pretext:.1f} ({100 * chance(cell):.1f})",
                 str(cell.get("global_step")),
                 f"{(cell.get('train_wall_time_s') or 0) / 60:.1f}",
                 f"{(cell.get('eval_wall_time_s') or 0) / 60:.1f}",
                 f"{_hours([cell], 'cpu'):.2f}"])
  return markdown_table(rows)


def study_markdown(results: Results, plot_paths: Dict[str, str],
                   notes: str = "", planned: Optional[Sequence[str]] = None) -> str:
  """docs/study.md: the grid's coverage (of the `planned` cell names), Table
  1 analogue, the hand-written `notes` (markdown), plots, findings, cells and
  cost."""
  spread = results.seed_spread()
  parts = [
      "# The study on Fashion-MNIST",
      "",
      f"Produced by `{STUDY_COMMAND}` (seeds in the cell names, `-sN`), then "
      "`python -m tfrevisit.study.report`. Accuracies: top-1 % on the "
      "Fashion-MNIST test split; mean ± std over n seeds where a model has "
      "several.",
      "",
  ]
  if planned is not None:
    parts += [coverage(results, planned), ""]
  parts += [
      "## Table 1 analogue (k=1): best layer (which) / pre_logits, linear probe",
      "",
      markdown_table(table1(results)),
      "",
      f"Run-to-run spread s (largest std over seeds at pre_logits): "
      f"{'-' if spread is None else f'{100 * spread:.2f} pp'}.",
      "",
  ]
  gains = gain_table(results)
  if gains:
    parts += ["## What training added over the untrained network (k=1)", "",
              "Linear top-1 of each trained model minus that of the same "
              "architecture untrained (`random_init`), in pp: at pre_logits / "
              "the largest over the layers (which).", "",
              markdown_table(gains), ""]
  if notes:
    parts += [f"## Context (hand-written, {NOTES_FILE})", "", notes.strip(), ""]
  parts += [
      "## Plots",
      "",
  ]
  parts += [f"![{name}](study/{name})\n" for name in plot_paths]
  parts += ["## Findings", "",
            "Rules: a difference counts only if it exceeds 2s "
            f"({'no seeds yet' if spread is None else f'2s = {200 * spread:.2f} pp'}); "
            "each finding states its rule.", ""]
  for finding in findings_lib.all_findings(results):
    parts += [f"### {finding.title}", "", f"Verdict: **{finding.verdict}**.",
              "", f"Rule: {finding.rule}", "", finding.evidence, ""]
  parts += ["## Cells", "",
            "Pretext accuracy is the training accuracy of the last logged "
            "interval (`accuracy` in the cell's TensorBoard log).", "",
            _cells_table(results.cells), "",
            f"Total: {len(results.cells)} cells, "
            f"{_hours(results.cells, 'wall'):.1f} hours of wall time, "
            f"{_hours(results.cells, 'cpu'):.1f} CPU hours (user + system, "
            "all threads) in the train and evaluation stages.", ""]
  return "\n".join(parts)


def readme_summary(results: Results,
                   planned: Optional[Sequence[str]] = None) -> str:
  """The README's study block: the Table 1 analogue, one verdict a line and
  the grid's coverage (of the `planned` cell names)."""
  lines = [markdown_table(table1(results)), "",
           f"{len(results.cells)} cells; linear probe top-1 % on the "
           "Fashion-MNIST test split, best layer (which) / pre_logits. "
           "Verdicts on the paper's findings (evidence and rules in "
           "[docs/study.md](docs/study.md)):", ""]
  lines += [f"- {f.title}: **{f.verdict}**"
            for f in findings_lib.all_findings(results)]
  if planned is not None:
    lines += ["", coverage(results, planned)]
  return "\n".join(lines)


def update_readme(path: str, results: Results,
                  planned: Optional[Sequence[str]] = None) -> None:
  """Replaces the text between README_BEGIN and README_END in `path`."""
  with open(path) as f:
    text = f.read()
  begin, end = text.find(README_BEGIN), text.find(README_END)
  if begin < 0 or end < begin:
    raise cli.UserError(
        f"{path} has no study summary block; add the lines {README_BEGIN!r} "
        f"and {README_END!r} where the summary goes.")
  text = (text[:begin + len(README_BEGIN)] + "\n" + readme_summary(results, planned)
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
      cells.append(json.load(f))
  return cells


def write_report(cells: Sequence[Dict], out_dir: str,
                 planned: Optional[Sequence[str]] = None) -> Dict[str, str]:
  """Writes results.csv, the plots and study.md (with the coverage of the
  `planned` cell names); returns {name: path}."""
  study_dir = os.path.join(out_dir, "study")
  os.makedirs(study_dir, exist_ok=True)
  results = Results(cells)
  written = {"results.csv": os.path.join(study_dir, "results.csv")}
  write_csv(flat_rows(cells), written["results.csv"])
  plot_paths = {}
  for name, plot in plots.PLOTS.items():
    path = plot(results, os.path.join(study_dir, name))
    if path:
      plot_paths[name] = path
  written.update(plot_paths)
  notes_path = os.path.join(out_dir, NOTES_FILE)
  notes = open(notes_path).read() if os.path.exists(notes_path) else ""
  written["study.md"] = os.path.join(out_dir, "study.md")
  with open(written["study.md"], "w") as f:
    f.write(study_markdown(results, plot_paths, notes, planned))
  return written


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
  gin_config.add_gin_flags(parser)  # the study's config: the planned grid
  args = parser.parse_args(argv)
  cells = workdir_cells(args.workdir) if args.workdir else load_cells(args.results_dir)
  if not cells:
    raise cli.UserError(f"No cell results in {args.workdir}; run "
                        "`python -m tfrevisit.study --workdir ...` first.")
  if args.readme and not os.path.isfile(args.readme):
    raise cli.UserError(f"--readme {args.readme}: no such file.")
  planned = None
  if args.gin:
    gin_config.parse_gin(args.gin, args.gin_param)
    planned = [cell.name for cell in grid.study().cells]
  cli.begin_work()
  for name, path in write_report(cells, args.out_dir, planned).items():
    print(f"{name}: {path}")
  if args.readme:
    update_readme(args.readme, Results(cells), planned)
    print(f"README summary: {args.readme}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
