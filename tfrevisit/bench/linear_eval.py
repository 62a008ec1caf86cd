r"""Benchmark: our L-BFGS linear probe vs scikit-learn's LogisticRegression.

Both fit the same penalised multinomial logistic regression (scikit-learn's
C = 1 / (l2 * N)) on the same synthetic float32 features (Gaussian class means
plus unit noise, with a decaying spectrum, see `make_features`), starting from
zeros, with the same iteration cap; ours stops on its scale-free test (the
preconditioned gradient, see
`logistic_regression.fit_logistic_regression_grid`) at `--tolerance`,
scikit-learn on its gradient at `--sklearn_tolerance` (default
the same). Ours runs with each of `--optimizers` (our L-BFGS, tfp's). scikit-learn
gets a float64 copy (its fast path) made outside the timing. Each solver runs
`--repeats` times, interleaved (scikit-learn once per BLAS thread count), and
its fastest run counts; our one-time graph tracing is printed separately, our
preconditioner's set-up is included. Prints wall time, iterations and held-out
top-1 side by side, the speed-up (scikit-learn time / ours), the top-1
difference and that of the final objective values (negative: ours is closer
to the optimum).

  python -m tfrevisit.bench.linear_eval [--num_classes 10 100] [--num_train N]
  python -m tfrevisit.bench.linear_eval --num_classes 100 --spectrum_decay 0 \
      --sklearn_tolerance 1e-6   # isotropic features, scikit-learn to 1e-6
"""
import argparse
import os
import time
import warnings

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # pylint: disable=g-import-not-at-top
from sklearn import exceptions
from sklearn import linear_model
import threadpoolctl

from tfrevisit.evaluation import logistic_regression


def make_features(num_train, num_test, dim, num_classes, separation,
                  spectrum_decay, seed):
  """Gaussian class means plus unit Gaussian noise, with a decaying spectrum.

  Dimension j is scaled by (j + 1) ** -spectrum_decay, so that, like real
  network features, a few directions carry most of the variance and the
  problem is ill-conditioned (hundreds of L-BFGS iterations, as on real
  features, instead of a handful).

  Returns:
    ((train features [num_train, dim] float32, labels), (test ..., labels)).
  """
  rng = np.random.default_rng(seed)
  means = separation * rng.standard_normal((num_classes, dim), np.float32)
  scales = np.arange(1, dim + 1, dtype=np.float32) ** -spectrum_decay

  def sample(num):
    labels = rng.integers(0, num_classes, num)
    noise = rng.standard_normal((num, dim), np.float32)
    return (means[labels] + noise) * scales, labels
  return sample(num_train), sample(num_test)


def trace_ours(jit_compile):
  """Fits a tiny problem so that the one-time graph tracing is done; seconds."""
  start = time.perf_counter()
  logistic_regression.fit_logistic_regression(np.eye(2, dtype=np.float32),
                                              np.arange(2), 2, l2=1.0,
                                              jit_compile=jit_compile)
  return time.perf_counter() - start


def objective(weights, bias, features, labels, l2):
  """Mean cross-entropy + l2 / 2 ||W||^2 in float64, the objective of both."""
  logits = features @ weights.astype(np.float64) + bias
  logits -= logits.max(axis=1, keepdims=True)
  log_normaliser = np.log(np.exp(logits).sum(axis=1))
  cross_entropy = log_normaliser - logits[np.arange(len(labels)), labels]
  return float(np.mean(cross_entropy) + 0.5 * l2 * np.sum(np.square(weights)))


def run_ours(train, test, num_classes, l2, tolerance, max_iterations,
             precondition=None, jit_compile=False, optimizer="ours"):
  """Returns (seconds, iterations, test top-1, weights, bias)."""
  start = time.perf_counter()
  fit = logistic_regression.fit_logistic_regression(
      *train, num_classes=num_classes, l2=l2, tolerance=tolerance,
      max_iterations=max_iterations, precondition=precondition,
      jit_compile=jit_compile, optimizer=optimizer)
  wall_time = time.perf_counter() - start
  top1 = logistic_regression.top_k_accuracy(fit.predict(test[0]), test[1], 1)
  return wall_time, fit.iterations, top1, fit.weights, fit.bias


def run_sklearn(train, test, l2, tolerance, max_iterations, blas_threads):
  """scikit-learn in float64, its fast path (float32 is upcast every step).

  Returns (seconds, iterations, test top-1, weights, bias).
  """
  features = train[0].astype(np.float64)
  start = time.perf_counter()
  model = linear_model.LogisticRegression(
      C=1.0 / (l2 * len(features)), tol=tolerance, max_iter=max_iterations)
  with warnings.catch_warnings(), threadpoolctl.threadpool_limits(blas_threads):
    warnings.simplefilter("ignore", exceptions.ConvergenceWarning)
    model.fit(features, train[1])
  wall_time = time.perf_counter() - start
  top1 = float(np.mean(model.predict(test[0]) == test[1]))
  return (wall_time, int(model.n_iter_[0]), top1, model.coef_.T,
          model.intercept_)


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--num_classes", type=int, nargs="+", default=[10, 100])
  parser.add_argument("--num_train", type=int, default=50_000)
  parser.add_argument("--num_test", type=int, default=10_000)
  parser.add_argument("--dim", type=int, default=2048)
  parser.add_argument("--separation", type=float, default=0.08)
  parser.add_argument("--spectrum_decay", type=float, default=0.5,
                      help="0: isotropic features")
  parser.add_argument("--l2", type=float, default=1e-4)
  parser.add_argument("--tolerance", type=float, default=2e-5)
  parser.add_argument("--sklearn_tolerance", type=float, default=None,
                      help="scikit-learn's tol; default --tolerance")
  parser.add_argument("--max_iterations", type=int, default=500)
  parser.add_argument("--sklearn_blas_threads", type=int, nargs="+",
                      default=[1, 2],
                      help="BLAS thread counts to run scikit-learn with; its "
                      "fastest run counts (OpenBLAS's threads can stall when "
                      "the cores are shared).")
  parser.add_argument("--precondition",
                      choices=logistic_regression.PRECONDITIONERS, default=None,
                      help="ours; default: full when N > D")
  parser.add_argument("--optimizers", nargs="+", default=["ours", "tfp"],
                      choices=["ours", "tfp"])
  parser.add_argument("--jit_compile", action="store_true",
                      help="XLA-compile our loss and gradient.")
  parser.add_argument("--repeats", type=int, default=2,
                      help="Fits per solver, interleaved; the fastest counts "
                      "(the machine's load varies).")
  args = parser.parse_args()
  sklearn_tolerance = args.sklearn_tolerance or args.tolerance

  print(f"{args.num_train} x {args.dim} features, l2={args.l2:g} "
        f"(C={1 / (args.l2 * args.num_train):g}), tolerance={args.tolerance:g}"
        f" (scikit-learn {sklearn_tolerance:g}), max_iterations="
        f"{args.max_iterations}, preconditioning "
        f"{args.precondition or 'default'}, scikit-learn BLAS threads "
        f"{args.sklearn_blas_threads} (fastest counts)")
  print(f"Ours: one-time graph tracing {trace_ours(args.jit_compile):.1f} s "
        "(shared by all fits of a process, excluded below).")
  header = (f"{'classes':>7} {'optim.':>6} | {'ours s':>7} {'iters':>5} "
            f"{'top1 %':>7} | {'sklearn s':>9} {'thr':>3} {'iters':>5} "
            f"{'top1 %':>7} | {'speed-up':>8} {'d top1':>7} "
            f"{'rel. d objective':>16}")
  print(header)
  print("-" * len(header))
  for num_classes in args.num_classes:
    train, test = make_features(args.num_train, args.num_test, args.dim,
                                num_classes, args.separation,
                                args.spectrum_decay, seed=num_classes)
    options = dict(l2=args.l2, max_iterations=args.max_iterations)
    ours_runs = {optimizer: [] for optimizer in args.optimizers}
    their_runs = []
    for _ in range(args.repeats):
      for optimizer, runs in ours_runs.items():
        runs.append(run_ours(
            train, test, num_classes, tolerance=args.tolerance,
            precondition=args.precondition, jit_compile=args.jit_compile,
            optimizer=optimizer, **options))
      for threads in args.sklearn_blas_threads:
        their_runs.append(
            (*run_sklearn(train, test, blas_threads=threads,
                          tolerance=sklearn_tolerance, **options), threads))
    theirs = min(their_runs, key=lambda run: run[0])
    their_objective = objective(*theirs[3:5], *train, args.l2)
    for optimizer, runs in ours_runs.items():
      ours = min(runs, key=lambda run: run[0])
      gap = objective(*ours[3:5], *train, args.l2) / their_objective - 1
      print(f"{num_classes:>7} {optimizer:>6} | {ours[0]:>7.1f} {ours[1]:>5} "
            f"{100 * ours[2]:>7.2f} | {theirs[0]:>9.1f} {theirs[5]:>3} "
            f"{theirs[1]:>5} {100 * theirs[2]:>7.2f} | "
            f"{theirs[0] / ours[0]:>7.2f}x "
            f"{100 * (ours[2] - theirs[2]):>+7.2f} {gap:>+16.1e}", flush=True)


if __name__ == "__main__":
  main()
