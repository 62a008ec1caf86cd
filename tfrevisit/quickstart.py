r"""The newcomer's end-to-end run on Fashion-MNIST, about 10 minutes on a CPU.

`python -m tfrevisit.quickstart --workdir DIR` trains the quick-start rotation
model (configs/quickstart/rotation.gin), exports it, exports the same network
at random initialisation, evaluates every end point of both with the paper's
L-BFGS linear probe (configs/eval/quickstart/linear.gin), and prints the
per-layer top-1 side by side. DIR/results.json holds every row of both.
"""
import argparse
import logging
import os
import sys
from typing import Dict, List

import gin

from tfrevisit import cli
from tfrevisit import evaluate as evaluate_lib
from tfrevisit import gin_config
from tfrevisit import train as train_lib
from tfrevisit.evaluation import result_files

TRAIN_CONFIG = os.path.join(gin_config.CONFIG_DIR, "quickstart", "rotation.gin")
EVAL_CONFIG = os.path.join(gin_config.CONFIG_DIR, "eval", "quickstart", "linear.gin")
MODELS = ("rotation", "random_init")


def comparison_table(rows: List[Dict]) -> str:
  """Linear top-1 (%) per end point, one column per model."""
  by_key = {(r["model"], r["end_point"]): r["top1"] for r in rows}
  end_points = list(dict.fromkeys(r["end_point"] for r in rows))
  table = [dict(end_point=e, **{m: by_key.get((m, e)) for m in MODELS})
           for e in end_points]
  lines = [f"{'end point':>12}  {'rotation':>9}  {'random init':>11}"]
  lines += [f"{t['end_point']:>12}  {100 * t['rotation']:9.2f}  "
            f"{100 * t['random_init']:11.2f}" for t in table]
  return "\n".join(lines)


def run(workdir: str, train_bindings=(), eval_bindings=()) -> List[Dict]:
  """Trains, exports and evaluates; returns the result rows of both models."""
  exports = {}
  for model, max_steps in (("rotation", None), ("random_init", 0)):
    gin.clear_config()
    gin_config.parse_gin([TRAIN_CONFIG], list(train_bindings))
    model_dir = os.path.join(workdir, model)
    overrides = {} if max_steps is None else {"max_steps": max_steps}
    train_lib.train_from_gin(model_dir, **overrides)
    exports[model] = os.path.join(model_dir, "export", "latest")

  rows = []
  for model, path in exports.items():
    gin.clear_config()
    gin_config.parse_gin([EVAL_CONFIG], list(eval_bindings))
    rows += evaluate_lib.evaluate(path, os.path.join(workdir, f"eval_{model}"),
                                  gin_config.configured_source(),
                                  model_name=model)
  result_files.write_results(rows, workdir)
  return rows


@cli.entry_point
def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--workdir", required=True,
                      help="output directory; a rerun resumes where it stopped.")
  parser.add_argument("--train_param", action="append", default=[],
                      help="extra gin binding for training, e.g. 'train.epochs = 0.2'.")
  parser.add_argument("--eval_param", action="append", default=[],
                      help="extra gin binding for evaluation.")
  cli.add_verbose_flag(parser)
  args = parser.parse_args(argv)
  logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
  rows = run(args.workdir, args.train_param, args.eval_param)
  print("\nLinear probe (L-BFGS), top-1 % on the Fashion-MNIST test split:")
  print(comparison_table(rows))
  for line in evaluate_lib.fit_warnings(rows):
    print(line)
  pre_logits = {r["model"]: r["top1"] for r in rows if r["end_point"] == "pre_logits"}
  verdict = ("beats" if pre_logits["rotation"] > pre_logits["random_init"]
             else "does NOT beat")
  print(f"\nAt pre_logits the rotation model {verdict} random initialisation. "
        f"All rows: {os.path.join(args.workdir, result_files.JSON_NAME)}")
  return rows


if __name__ == "__main__":
  sys.exit(0 if main() else 1)
