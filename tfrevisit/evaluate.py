r"""Evaluates every layer of an exported encoder with the paper's probes.

`python -m tfrevisit.evaluate --hub_module PATH --gin configs/eval/linear.gin
 [--gin_param ...] --workdir DIR`

Features of `train`, `val` and `test` are extracted once (cached in
DIR/features; `trainval` = train + val), then each probe runs on each end point
and label fraction. The linear probe reads the cached (memory-mapped) features
in chunks when `select_l2_and_fit.chunk_size` is set, so splits larger than
memory work; the Keras probes load one end point's features into memory.
Results go to DIR/results.json and DIR/results.csv after every finished row; a
table is printed at the end, and the accuracies go to TensorBoard (DIR/tb, at
the export's global step). `--plots` also draws DIR/plots/*.png
(`evaluation.plots`).

Probes are looked up by name in `tfrevisit.evaluation.probes.PROBES`, which
also defines their one interface: `linear` (the paper's protocol: L-BFGS
logistic regression, L2 chosen on train -> val, refit on trainval, top-1/top-5
on test), `mlp` and `linear_sgd` (Keras `fit` on trainval, evaluated on test
every epoch), `linear_sgd_images` (the release's SGD evaluation: the
linear layer trained on the fly on randomly cropped images through the frozen
encoder, `sgd_images`), `knn`, `fewshot`, and `finetune` (the encoder and a
linear head trained end to end, `evaluation.finetune`). Features are fed raw,
as in the paper's release (`evaluate.standardize = True` standardises them with the training
split's statistics). `evaluate.protocol` picks the paper's Table 2 protocol
(default) or its Table 1 protocol; rows never report the split that chose
the hyper-parameters.
"""
import argparse
import dataclasses
import functools
import logging
import os
from typing import Dict, List, Optional, Sequence

import gin
import numpy as np

from tfrevisit import artifacts
from tfrevisit import cli
from tfrevisit import data
from tfrevisit import gin_config
from tfrevisit.evaluation import features as features_lib
from tfrevisit.evaluation import finetune  # pylint: disable=unused-import
from tfrevisit.evaluation import linear
from tfrevisit.evaluation import plots as plots_lib
from tfrevisit.evaluation import probes as probes_lib
from tfrevisit.evaluation import results as results_lib
from tfrevisit.evaluation import sgd_images

log = logging.getLogger("tfrevisit.evaluate")

Split = probes_lib.Split


def standardized_splits(splits: Dict[str, Split]) -> Dict[str, Split]:
  """Scales every split's features by the train split's mean and std.

  The features are `features_lib.StackedRows`, and so are the results: they
  are standardised as they are read.
  """
  mean, std = features_lib.column_mean_std(splits["train"][0])
  # A unit constant on train (a dead ReLU) keeps its scale: dividing by ~0
  # would blow up its values on the other splits.
  std = np.where(std > 1e-6, std, 1.0)
  return {name: (x.standardized(mean, std), y)
          for name, (x, y) in splits.items()}


def _stack(first, second):
  """Rows of `first` then `second` (StackedRows or NumPy arrays)."""
  if hasattr(first, "stack"):
    return first.stack(second)
  return np.concatenate([first, second])


def label_subset(splits: Dict[str, Split], fraction: float, seed: int,
                 num_classes: int) -> Dict[str, Split]:
  """The low-data setting: a class-balanced `fraction` of the labels of
  train and of val (the split that chooses hyper-parameters gets no more
  labels than the fraction either), and trainval = those two subsets, the
  labels the fit may use. Test stays whole."""
  if fraction >= 1:
    return splits
  subset = dict(splits)
  for name in ("train", "val"):
    x, y = splits[name]
    index = probes_lib.balanced_subset(y, fraction, seed, num_classes)
    subset[name] = (x[index], y[index])
  (train_x, train_y), (val_x, val_y) = subset["train"], subset["val"]
  subset["trainval"] = (_stack(train_x, val_x), np.concatenate([train_y, val_y]))
  return subset


# The splits each protocol reads, and the one its rows report on.
PROTOCOL_SPLITS = {"table2": ("train", "val", "test"), "table1": ("train", "val")}
REPORTED_SPLIT = {"table2": "test", "table1": "val"}
# The source splits an image probe trains on: the features' "trainval".
IMAGE_TRAIN_SPLITS = {"table2": ("train", "val"), "table1": ("train",)}


def protocol_splits(per_split: Dict[str, Split], protocol: str,
                    held_out_fraction: float, seed: int) -> Dict[str, Split]:
  """The probes' {"train", "val", "trainval", "test"} under a protocol.

  "table2" (the paper's Table 2): choose hyper-parameters on train -> val,
  fit on trainval (train + val), report test. "table1" (Table 1): choose on
  train minus a seeded held-out part -> that part, fit on train, report val;
  the test split is never read.
  """
  (train_x, train_y), (val_x, val_y) = per_split["train"], per_split["val"]
  if protocol == "table2":
    return {"train": per_split["train"], "val": per_split["val"],
            "trainval": (train_x.stack(val_x), np.concatenate([train_y, val_y])),
            "test": per_split["test"]}
  order = np.random.RandomState(seed).permutation(len(train_y))
  num_held_out = max(1, round(held_out_fraction * len(train_y)))
  held_out, rest = np.sort(order[:num_held_out]), np.sort(order[num_held_out:])
  return {"train": (train_x[rest], train_y[rest]),
          "val": (train_x[held_out], train_y[held_out]),
          "trainval": per_split["train"], "test": per_split["val"]}


@gin.configurable("evaluate", denylist=["hub_module", "workdir", "model_name"])
def evaluate(hub_module: str, workdir: str,
             probes: Sequence[str] = ("linear",),
             end_points: Optional[Sequence[str]] = None,
             label_fractions: Sequence[float] = (1.0,),
             pooling: str = "max",
             feature_target: int = 9000,
             patch_combine: str = "avg",
             preprocess: Optional[str] = None,
             batch_size: int = 64,
             max_examples: Optional[int] = None,
             seed: int = 0,
             standardize: bool = False,
             protocol: str = "table2",
             held_out_fraction: float = 0.1,
             label_subset_seeds: Optional[Sequence[int]] = None,
             model_name: Optional[str] = None) -> List[dict]:
  """Runs `probes` on every end point; returns the result rows.

  Args:
    hub_module: an exported SavedModel directory.
    workdir: where features are cached and results written.
    probes: names in `probes_lib.PROBES`: linear, mlp, linear_sgd, knn,
      fewshot, linear_sgd_images, finetune (no feature cache is made when
      only probes on images run).
    end_points: the end points to evaluate (default: all).
    label_fractions: fractions of the training labels (class-balanced).
    pooling: `max`, `avg`, `adaptive_max` or `adaptive_avg`.
    feature_target: spatial end points larger than this are pooled to about it.
    patch_combine: `avg`, `max` or `concat` of patch models' nine features.
    preprocess: evaluation preprocessing spec; default: the export's own.
    batch_size: feature-extraction batch size.
    max_examples: keep only the first examples of each split (quick runs).
    seed: seed of the label subsets, the Keras probes and table1's held-out
      part.
    standardize: scale features by the train split's mean and std
      first; off by default, as in the paper's release (raw pooled features).
    protocol: "table2" (choose on val, fit on trainval, report test) or
      "table1" (choose on a held-out part of train, fit on train, report
      val); see `protocol_splits`. Each row says which.
    held_out_fraction: table1's held-out part of train.
    label_subset_seeds: the seeds of the label subsets of each fraction < 1
      (one row per subset, with its `subset_seed`); default (`seed`,).
    model_name: a `model` column for the rows (e.g. to compare models).
  """
  for probe in probes:
    probes_lib.PROBES.get(probe)
  if protocol not in PROTOCOL_SPLITS:
    raise ValueError(f"Unknown evaluate.protocol {protocol!r}; valid choices: "
                     f"{', '.join(PROTOCOL_SPLITS)}.")
  module, metadata = features_lib.load_module(hub_module)
  preprocess = preprocess or metadata.get("preprocess")
  if not preprocess:
    raise ValueError(f"{hub_module} carries no preprocessing spec (not exported "
                     "by tfrevisit); set evaluate.preprocess.")
  source = data.get_source()
  splits = None
  if not all(map(_needs_images, probes)):
    splits = {}
    for split in PROTOCOL_SPLITS[protocol]:
      splits[split] = features_lib.cached_features(
          module, source, split, preprocess,
          os.path.join(workdir, "features", split), batch_size=batch_size,
          max_examples=max_examples, pooling_mode=pooling,
          target=feature_target, patch_combine=patch_combine,
          settings={"hub_module": os.path.realpath(hub_module)})
  names = end_points or (sorted(splits["train"][0]) if splits
                         else sgd_images.end_point_names(module))
  context = functools.partial(
      sgd_images.ImageProbeContext, module=module, source=source,
      preprocess=preprocess, train_splits=IMAGE_TRAIN_SPLITS[protocol],
      eval_split=REPORTED_SPLIT[protocol], pooling_mode=pooling,
      feature_target=feature_target, patch_combine=patch_combine,
      max_examples=max_examples, eval_batch_size=batch_size, seed=seed,
      hub_module=hub_module)
  rows = []
  for name in names:
    per_split = None
    if splits:
      per_split = {s: (f[name], y) for s, (f, y) in splits.items()}
      if standardize:
        per_split = standardized_splits(per_split)
      per_split = protocol_splits(per_split, protocol, held_out_fraction, seed)
    for fraction in label_fractions:
      subset_seeds = [seed] if fraction >= 1 else list(
          label_subset_seeds or [seed])
      for subset_seed in subset_seeds:
        subset = per_split and label_subset(per_split, fraction, subset_seed,
                                            source.num_classes)
        for probe in probes:
          log.info("Evaluating %s with the %s probe on %g of the labels "
                   "(subset seed %d).", name, probe, fraction, subset_seed)
          if _needs_images(probe):
            row = probes_lib.PROBES.get(probe)(
                _image_context(context(end_point=name), per_split, fraction,
                               subset_seed), source.num_classes)
          else:
            row = probes_lib.PROBES.get(probe)(subset, source.num_classes)
            row = {"num_features": per_split["test"][0].shape[1], **row}
          rows.append({**({"model": model_name} if model_name else {}),
                       "end_point": name, "probe": probe,
                       "label_fraction": fraction,
                       **({"subset_seed": subset_seed} if fraction < 1 else {}),
                       "protocol": protocol,
                       "reported_split": REPORTED_SPLIT[protocol], **row})
          results_lib.write_results(rows, workdir)
  return rows


def _needs_images(probe: str) -> bool:
  return probes_lib.PROBES.properties(probe).get("needs_images", False)


def _image_context(context: sgd_images.ImageProbeContext,
                   per_split: Optional[Dict[str, Split]], fraction: float,
                   seed: int) -> sgd_images.ImageProbeContext:
  """`context` restricted to a label fraction: a class-balanced, seeded
  subset of trainval's indices into the training examples (train then val,
  table2); image probes have fixed hyper-parameters, so no split chooses."""
  if fraction >= 1:
    return context
  if per_split:
    labels = per_split["trainval"][1]
  else:
    labels = sgd_images.training_labels(context)
  return dataclasses.replace(context, train_index=probes_lib.balanced_subset(
      labels, fraction, seed, context.source.num_classes))


def fit_warnings(rows: Sequence[dict]) -> List[str]:
  """One "WARNING: ..." line per fit problem of a row (`linear.fit_problems`:
  stopped early, hit max_iterations, L2 at the grid's edge), naming its end
  point, probe and label fraction."""
  return [f"WARNING: {row['model'] + ' ' if 'model' in row else ''}"
          f"{row['end_point']} ({row['probe']} probe, "
          f"{row['label_fraction']:g} of the labels): {problem}."
          for row in rows for problem in linear.fit_problems(row)]


def parse_args(argv=None):
  parser = argparse.ArgumentParser(
      description="Evaluate every layer of an exported encoder (linear, MLP "
                  "and SGD probes).")
  parser.add_argument("--hub_module", required=True,
                      help="exported SavedModel directory (WORKDIR/export/latest).")
  gin_config.add_gin_flags(parser)
  parser.add_argument("--workdir", required=True,
                      help="feature cache and results directory; reruns resume.")
  parser.add_argument("--plots", action="store_true",
                      help="also draw WORKDIR/plots/*.png: top-1 per layer "
                           "per probe, a t-SNE of one end point's features.")
  return parser.parse_args(argv)


@cli.entry_point
def main(argv=None):
  args = parse_args(argv)
  logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
  gin_config.parse_gin(args.gin, args.gin_param)
  rows = evaluate(args.hub_module, args.workdir)
  results_lib.write_tensorboard(
      rows, artifacts.summary_dir(args.workdir),
      step=artifacts.read_metadata(args.hub_module).get("global_step", 0))
  if args.plots:
    plots_lib.write_plots(rows, args.workdir)
  print(results_lib.format_table(rows))
  for line in fit_warnings(rows):
    print(line)
  return rows


if __name__ == "__main__":
  main()
