r"""Benchmark: the whole linear protocol, ours against scikit-learn's.

The protocol (`linear.linear_protocol`): an L2 grid fitted on `train`, the L2
with the best `val` top-1 refitted on `trainval`, top-1 on `test`. Ours fits
the grid as one batched, preconditioned L-BFGS (ours, and tfp's with
`--optimizers`) and warm-starts the refit. The grid is relative to the train
features' mean square (ours), and scikit-learn gets the same absolute values;
ours is not extended here, so that both fit the same grid.
scikit-learn's `LogisticRegression` (lbfgs, float64 copies made outside the
timing, its fastest of the given BLAS thread counts) sweeps the grid from
strong to weak L2 with `warm_start` and warm-starts the refit from the chosen
fit. Both use the same objective (scikit-learn's C = 1 / (l2 * N)), tolerance
and iteration cap. The solvers run `--repeats` times, interleaved, and each
one's fastest run counts; our one-time graph tracing is excluded.

The features are real: one end point of a quick-start rotation model on
Fashion-MNIST (train 54k rows after the held-out val, val 6k, test 10k),
raw and standardised with the training split's mean and standard deviation.
Without `--hub_module`, a model is trained first (minutes) under `--workdir`;
features are cached there.

  python -m tfrevisit.bench.linear_protocol [--hub_module DIR] [--end_point X]
"""
import argparse
import os
import subprocess
import sys
import time
import warnings

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # pylint: disable=g-import-not-at-top
from sklearn import exceptions
from sklearn import linear_model
import threadpoolctl

from tfrevisit import data
from tfrevisit.bench import linear_eval
from tfrevisit.evaluation import features as features_lib
from tfrevisit.evaluation import linear
from tfrevisit.evaluation import logistic_regression
from tfrevisit.evaluation import preconditioning

_REPO = os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))))
_SPLITS = ("train", "val", "test")


def train_quickstart(workdir):
  """Trains the quick-start rotation model; returns its export directory."""
  export = os.path.join(workdir, "model", "export", "latest")
  if not os.path.isdir(export):
    subprocess.run(
        [sys.executable, "-m", "tfrevisit.train", "--gin",
         os.path.join(_REPO, "configs", "quickstart", "rotation.gin"),
         "--workdir", os.path.join(workdir, "model")], check=True)
  return export


def load_features(export_dir, workdir, end_point, max_examples):
  """Cached max-pooled features of one end point for train, val and test.

  Returns:
    {split: (features [N, D] float32, labels [N])}.
  """
  module, metadata = features_lib.load_module(export_dir)
  source = data.get_source("fashion_mnist")
  splits = {}
  for split in _SPLITS:
    features, labels = features_lib.cached_features(
        module, source, split, metadata["preprocess"],
        os.path.join(workdir, "features", split), batch_size=256,
        max_examples=max_examples,
        settings={"hub_module": os.path.realpath(export_dir)})
    splits[split] = (np.asarray(features[end_point]), labels)
  return splits


def standardized(splits):
  """The splits standardised with the train split's mean and std."""
  mean = splits["train"][0].mean(0)
  std = splits["train"][0].std(0) + 1e-8
  return {name: ((features - mean) / std, labels)
          for name, (features, labels) in splits.items()}


def with_trainval(splits):
  """Adds `trainval`, the concatenation of train and val."""
  return dict(splits, trainval=tuple(
      np.concatenate(pair) for pair in zip(splits["train"], splits["val"])))


def run_ours(splits, num_classes, l2_grid, tolerance, max_iterations,
             optimizer):
  """Our protocol on the relative grid, not extended (scikit-learn's is not).

  Returns (seconds, chosen L2, test top-1, fits: {name: (W, b)}, iters).
  """
  start = time.perf_counter()
  result = linear.linear_protocol(
      splits["train"], splits["val"], splits["trainval"], num_classes,
      l2_grid, max_extra_decades=0, tolerance=tolerance,
      max_iterations=max_iterations, optimizer=optimizer)
  top1 = logistic_regression.top_k_accuracy(
      result.final.predict(splits["test"][0]), splits["test"][1], 1)
  seconds = time.perf_counter() - start
  fits = {f"train l2={l2:g}": (fit.weights, fit.bias)
          for l2, fit in zip(result.l2_grid, result.grid_fits)}
  fits["trainval"] = (result.final.weights, result.final.bias)
  iterations = (f"{max(fit.iterations for fit in result.grid_fits)} (grid) + "
                f"{result.final.iterations}")
  return seconds, result.l2_grid[result.best], top1, fits, iterations


def _sklearn_fit(model, features, labels, l2):
  model.set_params(C=1.0 / (l2 * len(labels)))
  model.fit(features, labels)
  return model.coef_.T.copy(), model.intercept_.copy(), int(model.n_iter_[0])


def run_sklearn(splits64, l2_grid, unit, tolerance, max_iterations,
                blas_threads):
  """The same protocol with scikit-learn, warm-started along the grid: the
  relative L2 values `l2_grid` times `unit` (the train features' mean square).

  Returns (seconds, chosen L2, test top-1, fits: {name: (W, b)}, iters).
  """
  start = time.perf_counter()
  model = linear_model.LogisticRegression(tol=tolerance,
                                          max_iter=max_iterations,
                                          warm_start=True)
  fits, val_top1, iterations = {}, [], []
  l2_grid = sorted(l2_grid, reverse=True)
  with warnings.catch_warnings(), threadpoolctl.threadpool_limits(blas_threads):
    warnings.simplefilter("ignore", exceptions.ConvergenceWarning)
    for l2 in l2_grid:
      *fit, steps = _sklearn_fit(model, *splits64["train"], l2 * unit)
      fits[f"train l2={l2:g}"] = fit
      iterations.append(steps)
      val_top1.append(model.score(*splits64["val"]))
    best_l2 = l2_grid[int(np.argmax(val_top1))]
    weights, bias = fits[f"train l2={best_l2:g}"]
    model.coef_, model.intercept_ = weights.T.copy(), bias.copy()
    *fits["trainval"], steps = _sklearn_fit(model, *splits64["trainval"],
                                            best_l2 * unit)
    top1 = model.score(*splits64["test"])
  seconds = time.perf_counter() - start
  return (seconds, best_l2, top1, fits,
          f"{'+'.join(map(str, iterations))} + {steps}")


def print_single_fit(name, splits, num_classes, unit, args):
  """One fit from zeros on train at --single_fit_l2 (relative), as
  `linear_eval`."""
  l2 = args.single_fit_l2 * unit
  options = dict(l2=l2, tolerance=args.tolerance,
                 max_iterations=args.max_iterations)
  ours, theirs = [], []
  for _ in range(args.repeats):
    ours.append(linear_eval.run_ours(
        splits["train"], splits["test"], num_classes, **options))
    theirs += [linear_eval.run_sklearn(splits["train"], splits["test"],
                                       blas_threads=threads, **options)
               for threads in args.sklearn_blas_threads]
  ours, theirs = (min(runs, key=lambda run: run[0]) for runs in (ours, theirs))
  gap = (linear_eval.objective(*ours[3:5], *splits["train"], l2)
         - linear_eval.objective(*theirs[3:5], *splits["train"], l2))
  print(f"{name}, one fit at relative l2={args.single_fit_l2:g}: ours "
        f"{ours[0]:.1f} s ({ours[1]} iterations), scikit-learn "
        f"{theirs[0]:.1f} s ({theirs[1]} iterations): speed-up "
        f"{theirs[0] / ours[0]:.2f}x, d top-1 "
        f"{100 * (ours[2] - theirs[2]):+.2f} points, d objective {gap:+.1e}")


def compare(name, splits, num_classes, args):
  """Runs both protocols on `splits`, prints the timings and the checks."""
  splits = with_trainval(splits)
  splits64 = {k: (f.astype(np.float64), y) for k, (f, y) in splits.items()}
  unit = preconditioning.mean_square(
      preconditioning.feature_second_moment(splits["train"][0], diagonal=True))
  print(f"{name}: mean square of the train features {unit:.4g} (the unit "
        "of the relative L2)")
  options = dict(l2_grid=args.l2_grid, tolerance=args.tolerance,
                 max_iterations=args.max_iterations)
  ours_runs = {optimizer: [] for optimizer in args.optimizers}
  their_runs = []
  for _ in range(args.repeats):
    for optimizer, runs in ours_runs.items():
      runs.append(run_ours(splits, num_classes, optimizer=optimizer,
                           **options))
    for threads in args.sklearn_blas_threads:
      their_runs.append((*run_sklearn(splits64, unit=unit,
                                      blas_threads=threads, **options),
                         threads))
    print(f"  {name}: "
          + ", ".join(f"{optimizer} {runs[-1][0]:.1f} s"
                      for optimizer, runs in ours_runs.items())
          + ", scikit-learn "
          + ", ".join(f"{run[0]:.1f} s ({run[5]} thr)"
                      for run in their_runs[-len(args.sklearn_blas_threads):]),
          flush=True)
  theirs = min(their_runs, key=lambda run: run[0])
  print_single_fit(name, splits, num_classes, unit, args)
  for optimizer, runs in ours_runs.items():
    ours = min(runs, key=lambda run: run[0])
    print(f"{name}, {optimizer}: {ours[0]:.1f} s (iterations {ours[4]}), "
          f"scikit-learn {theirs[0]:.1f} s ({theirs[5]} BLAS threads, "
          f"iterations {theirs[4]}): speed-up {theirs[0] / ours[0]:.2f}x")
    print(f"  chosen relative l2: ours {ours[1]:g}, scikit-learn "
          f"{theirs[1]:g}; test top-1: ours {100 * ours[2]:.2f}%, "
          f"scikit-learn {100 * theirs[2]:.2f}% "
          f"(d {100 * (ours[2] - theirs[2]):+.2f} points)")
    for fit_name, fit in ours[3].items():
      refit = fit_name == "trainval"
      split = splits64["trainval" if refit else "train"]
      l2 = unit * (ours[1] if refit else float(fit_name.split("=")[1]))
      ours_value = linear_eval.objective(*fit, *split, l2)
      line = f"  objective {fit_name}: {ours_value:.7f}"
      if not refit or ours[1] == theirs[1]:
        their_value = linear_eval.objective(*theirs[3][fit_name], *split, l2)
        line += f", ours / scikit-learn - 1: {ours_value / their_value - 1:+.1e}"
      print(line)


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--hub_module", help="exported encoder; default: train "
                      "the quick-start rotation model under --workdir")
  parser.add_argument("--workdir", default="/tmp/tfrevisit_linear_protocol")
  parser.add_argument("--end_point", default="pre_logits")
  parser.add_argument("--max_examples", type=int, default=None,
                      help="first examples of each split only")
  parser.add_argument("--l2_grid", type=float, nargs="+",
                      default=[1e-1, 1e-2, 1e-3, 1e-4, 1e-5],
                      help="relative L2 values (x the features' mean square)")
  parser.add_argument("--single_fit_l2", type=float, default=1e-4,
                      help="relative L2 of the single-fit comparison")
  parser.add_argument("--optimizers", nargs="+", default=["ours", "tfp"],
                      choices=["ours", "tfp"])
  parser.add_argument("--tolerance", type=float, default=2e-5)
  parser.add_argument("--max_iterations", type=int, default=1000)
  parser.add_argument("--sklearn_blas_threads", type=int, nargs="+",
                      default=[1, 2])
  parser.add_argument("--repeats", type=int, default=2)
  parser.add_argument("--variants", nargs="+", default=["raw", "standardized"])
  args = parser.parse_args()

  export_dir = args.hub_module or train_quickstart(args.workdir)
  splits = load_features(export_dir, args.workdir, args.end_point,
                         args.max_examples)
  num_classes = int(splits["train"][1].max()) + 1
  print(f"{export_dir}, end point {args.end_point}: "
        + ", ".join(f"{k} {v[0].shape}" for k, v in splits.items())
        + f"; l2 grid {args.l2_grid}, tolerance {args.tolerance:g}, "
        f"max_iterations {args.max_iterations}")
  print(f"Ours: one-time graph tracing {linear_eval.trace_ours(False):.1f} s "
        "(excluded).", flush=True)
  for variant in args.variants:
    compare(variant, splits if variant == "raw" else standardized(splits),
            num_classes, args)


if __name__ == "__main__":
  main()
