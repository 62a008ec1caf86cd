r"""Runs the study's grid, one cell at a time.

`python -m tfrevisit.study --gin configs/study/fashion_mnist.gin --workdir DIR
 [--only PATTERN] [--list] [--results_dir docs/study/cells]`

Each cell trains (`python -m tfrevisit.train`, DIR/CELL/train), then runs its
evaluation jobs (`python -m tfrevisit.evaluate` on the export, DIR/CELL/eval),
then writes its result to DIR/CELL/cell.json and to the committed results
directory. A cell whose committed result exists is skipped; an interrupted one
resumes (training from its checkpoint, evaluation from the feature cache).
`--list` prints each cell's state and the estimated remaining CPU time.
"""
import argparse
import logging
import os
import subprocess
import sys
from typing import List

from tfrevisit import gin_config
from tfrevisit.study import cells as cells_lib
from tfrevisit.study import grid

DEFAULT_RESULTS_DIR = os.path.join(os.path.dirname(gin_config.CONFIG_DIR),
                                   "docs", "study", "cells")


def _measured_minutes(results_dir: str, cell: grid.Cell) -> float:
  result = cells_lib.read_json(cells_lib.result_path(results_dir, cell), {})
  return ((result.get("train_wall_time_s") or 0)
          + (result.get("eval_wall_time_s") or 0)) / 60


def listing(study: grid.Study, cells: List[grid.Cell], workdir: str,
            results_dir: str) -> str:
  """A table of cells with state and minutes (measured if done, else the
  config's estimate), and the remaining time: the estimates of unfinished
  cells scaled by measured / estimated over the finished ones."""
  lines = [f"{'cell':<48} {'state':<8} {'minutes':>8}  evals"]
  measured = estimated_done = remaining = 0.0
  for cell in cells:
    state = cells_lib.state_of(cell, workdir, results_dir)
    estimate = study.estimated_minutes(cell)
    minutes = estimate
    if state == "done":
      minutes = _measured_minutes(results_dir, cell)
      measured += minutes
      estimated_done += estimate
    else:
      remaining += estimate
    mark = "" if state == "done" else "~"
    lines.append(f"{cell.name:<48} {state:<8} {mark + format(minutes, '.0f'):>8}  "
                 f"{','.join(cell.evals)}")
  scale = measured / estimated_done if measured and estimated_done else 1.0
  basis = ("measured/estimated of done cells: "
           f"{scale:.2f}" if measured else "config estimates")
  lines.append(f"{len(cells)} cells; done in {measured / 60:.1f} h; remaining "
               f"~{scale * remaining / 60:.1f} CPU h ({basis}).")
  return "\n".join(lines)


def run(study: grid.Study, cells: List[grid.Cell], workdir: str,
        results_dir: str, keep_features: bool = False) -> List[str]:
  """Runs the unfinished `cells` in order; returns the names that failed."""
  failed = []
  for cell in cells:
    if cells_lib.state_of(cell, workdir, results_dir) == "done":
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
  parser.add_argument("--list", action="store_true",
                      help="print the cells, their state and the remaining time.")
  return parser.parse_args(argv)


def main(argv=None) -> int:
  args = parse_args(argv)
  logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
  gin_config.parse_gin(args.gin, args.gin_param)
  study = grid.study()
  cells = study.select(args.only)
  if not cells:
    raise SystemExit(f"No cell matches --only {args.only!r}.")
  if args.list:
    print(listing(study, cells, args.workdir, args.results_dir))
    return 0
  failed = run(study, cells, args.workdir, args.results_dir, args.keep_features)
  if failed:
    logging.error("Failed cells: %s", ", ".join(failed))
  return 1 if failed else 0


if __name__ == "__main__":
  sys.exit(main())
