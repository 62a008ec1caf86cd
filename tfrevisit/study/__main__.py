r"""Runs the study's grid, one cell at a time.

`python -m tfrevisit.study --gin configs/study/fashion_mnist.gin --workdir DIR
 [--only PATTERN] [--list] [--redo JOB] [--results_dir docs/study/cells]`

Each cell trains (`python -m tfrevisit.train`, DIR/CELL/train), then runs its
evaluation jobs (`python -m tfrevisit.evaluate` on the export, DIR/CELL/eval),
then writes its result to DIR/CELL/cell.json and to the committed results
directory. A cell whose committed result exists is skipped; an interrupted one
resumes (training from its checkpoint, evaluation from the feature cache).
`--list` prints each cell's state and the estimated remaining CPU time.
`--redo JOB` runs evaluation job JOB again on the selected cells that have it,
finished ones included (after its recipe in configs/study/eval changed); it
needs their workdirs.
"""
import argparse
import logging
import os
import subprocess
import sys
from typing import List, Sequence

from tfrevisit import cli
from tfrevisit import gin_config
from tfrevisit.study import cells as cells_lib
from tfrevisit.study import grid
from tfrevisit.study.results import STAGES, stage_seconds

DEFAULT_RESULTS_DIR = os.path.join(os.path.dirname(gin_config.CONFIG_DIR),
                                   "docs", "study", "cells")


def listing(study: grid.Study, cells: List[grid.Cell], workdir: str,
            results_dir: str) -> str:
  """A table of cells with state and minutes (measured wall time if done,
  else the config's CPU estimate, marked ~), and the remaining time: the
  estimates of unfinished cells, in CPU hours and, once cells that train are
  done, scaled by measured / estimated over those (CPU per stage, training
  and evaluation; wall time in all)."""
  lines = [f"{'cell':<48} {'state':<8} {'minutes':>8}  evals"]
  estimated = {s: 0.0 for s in STAGES}  # minutes of the done cells
  measured = {s: 0.0 for s in STAGES}  # their CPU minutes
  wall = 0.0  # their wall minutes
  remaining = {s: 0.0 for s in STAGES}
  for cell in cells:
    state = cells_lib.state_of(cell, workdir, results_dir)
    estimate = study.estimated_stage_minutes(cell)
    minutes = f"~{sum(estimate.values()):.0f}"
    if state == "done":
      result = cells_lib.read_json(cells_lib.result_path(results_dir, cell), {})
      cell_wall = stage_seconds(result, "wall") / 60
      if cell.task != "random_init":  # no training: its cost is start-up
        wall += cell_wall
        for stage in STAGES:
          estimated[stage] += estimate[stage]
          measured[stage] += stage_seconds(result, "cpu", [stage]) / 60
      minutes = f"{cell_wall:.0f}"
    else:
      for stage in STAGES:
        remaining[stage] += estimate[stage]
    lines.append(f"{cell.name:<48} {state:<8} {minutes:>8}  {','.join(cell.evals)}")
  summary = (f"{len(cells)} cells; done: {wall / 60:.1f} h wall, "
             f"{sum(measured.values()) / 60:.1f} CPU h (training "
             f"{measured['train'] / 60:.1f}, evaluation {measured['eval'] / 60:.1f})"
             "; remaining ")
  if all(estimated.values()) and all(measured.values()):
    scale = {s: measured[s] / estimated[s] for s in STAGES}
    cpu = {s: scale[s] * remaining[s] / 60 for s in STAGES}
    wall_scale = wall / sum(estimated.values())
    summary += (f"~{sum(cpu.values()):.1f} CPU h (training ~{cpu['train']:.1f}, "
                f"evaluation ~{cpu['eval']:.1f}), "
                f"~{wall_scale * sum(remaining.values()) / 60:.1f} h wall "
                "(config estimates x measured/estimated of the done cells: "
                f"CPU training {scale['train']:.2f}, evaluation "
                f"{scale['eval']:.2f}; wall {wall_scale:.2f}).")
  else:
    summary += f"~{sum(remaining.values()) / 60:.1f} CPU h (config estimates)."
  lines.append(summary)
  return "\n".join(lines)


def forget_jobs(cells: List[grid.Cell], workdir: str, results_dir: str,
                redo: Sequence[str]) -> None:
  """Marks the evaluation jobs named in `redo` unfinished in the started
  `cells` (see `cells_lib.forget_job`).

  Raises:
    ValueError: a finished cell has no workdir here (a user error before
      `cli.begin_work`).
  """
  for cell in cells:
    if cells_lib.state_of(cell, workdir, results_dir) != "todo":
      for job in set(redo) & set(cell.evals):
        cells_lib.forget_job(cell, workdir, job)


def run(study: grid.Study, cells: List[grid.Cell], workdir: str,
        results_dir: str, keep_features: bool = False,
        redo: Sequence[str] = ()) -> List[str]:
  """Runs the unfinished `cells` in order, and the finished ones that have an
  evaluation job named in `redo` (see `forget_jobs`); returns the names that
  failed."""
  failed = []
  for cell in cells:
    if (cells_lib.state_of(cell, workdir, results_dir) == "done"
        and not set(redo) & set(cell.evals)):
      continue
    try:
      cells_lib.run_cell(study, cell, workdir, results_dir, keep_features)
      logging.info("%s: done.", cell.name)
    except subprocess.CalledProcessError as error:
      logging.error("%s failed (%s); see %s. Continuing with the next cell.",
                    cell.name, error, os.path.join(workdir, cell.name, "logs"))
      failed.append(cell.name)
  return failed


def parse_args(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  gin_config.add_gin_flags(parser)
  parser.add_argument("--workdir", required=True,
                      help="where the cells' workdirs go; reruns resume.")
  parser.add_argument("--results_dir", default=DEFAULT_RESULTS_DIR,
                      help="committed results, one CELL.json per finished cell.")
  parser.add_argument("--only", default="*",
                      help="shell pattern on cell names, e.g. 'rotation-*-k1-*'.")
  parser.add_argument("--keep_features", action="store_true",
                      help="keep each finished cell's feature cache (GBs).")
  parser.add_argument("--redo", action="append", default=[], metavar="JOB",
                      help="run evaluation job JOB (e.g. mlp) again on the "
                      "selected cells, finished ones included; repeatable.")
  parser.add_argument("--list", action="store_true",
                      help="print the cells, their state and the remaining time.")
  return parser.parse_args(argv)


@cli.entry_point
def main(argv=None) -> int:
  args = parse_args(argv)
  logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
  grid.parse_config(args.gin, args.gin_param)
  study = grid.study()
  cells = study.select(args.only)
  if not cells:
    raise cli.UserError(f"No cell matches --only {args.only!r}; see --list.")
  if args.list:
    print(listing(study, cells, args.workdir, args.results_dir))
    return 0
  unknown = set(args.redo) - {job for cell in cells for job in cell.evals}
  if unknown:
    raise cli.UserError(f"--redo {', '.join(sorted(unknown))}: no selected "
                        "cell has that evaluation job; see --list.")
  forget_jobs(cells, args.workdir, args.results_dir, args.redo)
  cli.begin_work()
  failed = run(study, cells, args.workdir, args.results_dir,
               args.keep_features, args.redo)
  if failed:
    logging.error("Failed cells: %s", ", ".join(failed))
  return 1 if failed else 0


if __name__ == "__main__":
  sys.exit(main())
