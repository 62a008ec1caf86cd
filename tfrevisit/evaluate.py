r"""Evaluates every layer of an exported encoder with the paper's probes.

`python -m tfrevisit.evaluate --hub_module PATH --gin configs/eval/linear.gin
 [--gin_param ...] --workdir DIR`

Features of `train`, `val` and `test` are extracted once (cached in
DIR/features; `trainval` = train + val), then each probe runs on each end point
and label fraction. The linear probe reads the cached (memory-mapped) features
in chunks when `select_l2_and_fit.chunk_size` is set, so splits larger than
memory work; the Keras probes load one end point's features into memory.
Results go to DIR/results.json and DIR/results.csv after every finished row (a
rerun with the same export and gin configuration keeps them and runs only the
rest; other settings start over); a table is printed at the end, and the
accuracies go to TensorBoard (DIR/tb, at the export's global step). `--plots`
also draws DIR/plots/*.png (`evaluation.layer_plots`).

Probes are looked up by name in `tfrevisit.evaluation.probes.PROBES`, which also
defines their one interface (`probe(inputs) -> row`, the inputs what the probe
needs: feature splits or images): `linear` (the paper's protocol: L-BFGS
logistic regression, L2 chosen on train -> val, refit on trainval, top-1/top-5
on test), `mlp` and `linear_sgd` (Keras `fit` on trainval, evaluated on test
every epoch), `linear_sgd_images` (the release's SGD evaluation: the linear
layer trained on the fly on randomly cropped images through the frozen encoder,
`evaluation.linear_on_images`), `knn`, `fewshot`, and `finetune` (the encoder
and a linear head trained end to end, `evaluation.finetune`). Features are fed
raw, as in the paper's release (`evaluate.standardize = True` standardises them
with the training split's statistics). `evaluate.protocol` picks the paper's
Table 2 protocol (default) or its Table 1 protocol; rows never report the split
that chose the hyper-parameters.
"""
import argparse
import functools
import logging
import os
from typing import Dict, List, Optional, Sequence

import gin

from tfrevisit import artifacts
from tfrevisit import cli
from tfrevisit import data
from tfrevisit import gin_config
from tfrevisit.evaluation import features as features_lib
from tfrevisit.evaluation import inputs as inputs_lib
from tfrevisit.evaluation import layer_plots
from tfrevisit.evaluation import linear
from tfrevisit.evaluation import probes as probes_lib
from tfrevisit.evaluation import result_files
from tfrevisit.evaluation import splits as splits_lib

log = logging.getLogger("tfrevisit.evaluate")


@gin.configurable("evaluate",
                  denylist=["export_dir", "workdir", "source", "model_name",
                            "finished_rows"])
def evaluate(export_dir: str, workdir: str, source: data.Source,
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
             model_name: Optional[str] = None,
             finished_rows: Sequence[dict] = ()) -> List[dict]:
  """Runs `probes` on every end point; returns the result rows.

  Args:
    export_dir: an exported SavedModel directory (`--hub_module`).
    workdir: where features are cached and results written.
    source: the labelled images (`data.get_source`; the command line's comes
      from the `source.*` bindings).
    probes: names in `probes.PROBES`: linear, mlp, linear_sgd, knn,
      fewshot, linear_sgd_images, finetune (no feature cache is made when
      only probes on images run); each runs with its gin bindings
      (`gin_config.configured_probe`).
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
      val); see `splits.protocol_splits`. Each row says which.
    held_out_fraction: table1's held-out part of train.
    label_subset_seeds: the seeds of the label subsets of each fraction < 1
      (one row per subset, with its `subset_seed`); default (`seed`,).
    model_name: a `model` column for the rows (e.g. to compare models).
    finished_rows: rows of an interrupted run with these settings
      (`result_files.resumable_rows`): a row of the same end point, probe,
      label fraction and subset is kept instead of rerun.
  """
  _check_choices(probes, protocol)
  module, preprocess = _load_export(export_dir, preprocess)
  splits = None
  if any(probes_lib.needs(probe) == inputs_lib.FEATURES for probe in probes):
    splits = _cached_features(
        module, source, preprocess, export_dir, workdir,
        splits_lib.PROTOCOL_SPLITS[protocol], batch_size=batch_size,
        max_examples=max_examples, pooling_mode=pooling,
        target=feature_target, patch_combine=patch_combine)
  names = end_points or (sorted(splits["train"][0]) if splits
                         else inputs_lib.end_point_names(module))
  image_context = functools.partial(
      inputs_lib.ImageProbeContext, module=module, source=source,
      preprocess=preprocess,
      train_splits=splits_lib.IMAGE_TRAIN_SPLITS[protocol],
      eval_split=splits_lib.REPORTED_SPLIT[protocol], pooling_mode=pooling,
      feature_target=feature_target, patch_combine=patch_combine,
      max_examples=max_examples, eval_batch_size=batch_size, seed=seed,
      export_dir=export_dir)
  configured = {probe: gin_config.configured_probe(probe) for probe in probes}
  finished = {_row_key(row.get("model"), row["end_point"], row["probe"],
                      row["label_fraction"], row.get("subset_seed")): row
              for row in finished_rows}
  rows = []
  for name in names:
    per_split = None
    if splits:
      per_split = {s: (f[name], y) for s, (f, y) in splits.items()}
      if standardize:
        per_split = splits_lib.standardized_splits(per_split)
      per_split = splits_lib.protocol_splits(per_split, protocol,
                                             held_out_fraction, seed)
    for fraction in label_fractions:
      subset_seeds = [seed] if fraction >= 1 else list(
          label_subset_seeds or [seed])
      for subset_seed in subset_seeds:
        subset = per_split and splits_lib.label_subset(
            per_split, fraction, subset_seed, source.num_classes)
        for probe in probes:
          key = _row_key(model_name, name, probe, fraction, subset_seed)
          if key in finished:
            log.info("Kept %s with the %s probe on %g of the labels (subset "
                     "seed %d) from the interrupted run.", name, probe,
                     fraction, subset_seed)
            rows.append(finished[key])
            continue
          log.info("Evaluating %s with the %s probe on %g of the labels "
                   "(subset seed %d).", name, probe, fraction, subset_seed)
          row = _probe_row(probe, configured[probe], source.num_classes,
                           subset, lambda: inputs_lib.with_label_fraction(
                               image_context(end_point=name), per_split,
                               fraction, subset_seed))
          rows.append({**({"model": model_name} if model_name else {}),
                       "end_point": name, "probe": probe,
                       "label_fraction": fraction,
                       **({"subset_seed": subset_seed} if fraction < 1 else {}),
                       "protocol": protocol,
                       "reported_split": splits_lib.REPORTED_SPLIT[protocol],
                       **row})
          result_files.write_results(rows, workdir)
  return rows


def _row_key(model: Optional[str], end_point: str, probe: str,
             fraction: float, subset_seed: Optional[int]):
  """What a row evaluated; the subset seed counts only below all labels (rows
  with all labels carry none)."""
  return (model, end_point, probe, fraction,
          subset_seed if fraction < 1 else None)


def _check_choices(probes: Sequence[str], protocol: str) -> None:
  """Raises a ValueError for an unknown probe or protocol, before any work."""
  for probe in probes:
    probes_lib.PROBES.get(probe)
  if protocol not in splits_lib.PROTOCOL_SPLITS:
    raise ValueError(f"Unknown evaluate.protocol {protocol!r}; valid choices: "
                     f"{', '.join(splits_lib.PROTOCOL_SPLITS)}.")


def _load_export(export_dir: str, preprocess: Optional[str]):
  """(the loaded export, `preprocess` or else the export's own spec)."""
  module, metadata = features_lib.load_module(export_dir)
  preprocess = preprocess or metadata.get("preprocess")
  if not preprocess:
    raise ValueError(f"{export_dir} carries no preprocessing spec (not "
                     "exported by tfrevisit); set evaluate.preprocess.")
  return module, preprocess


def _cached_features(module, source: data.Source, preprocess: str,
                     export_dir: str, workdir: str, split_names: Sequence[str],
                     **options) -> Dict[str, splits_lib.Split]:
  """{split: (features by end point, labels)} of `split_names`, cached in
  WORKDIR/features (`features.cached_features`; `options` are its)."""
  return {split: features_lib.cached_features(
      module, source, split, preprocess,
      os.path.join(workdir, "features", split),
      settings={"hub_module": os.path.realpath(export_dir)}, **options)
          for split in split_names}


def _probe_row(name: str, probe: probes_lib.Probe, num_classes: int,
               features: Optional[Dict[str, splits_lib.Split]],
               image_context) -> Dict:
  """Runs probe `name` (`probe`, configured) on what it needs: `features`
  (the label subset of the protocol splits) or the `image_context()`."""
  if probes_lib.needs(name) == inputs_lib.IMAGES:
    return probe(inputs_lib.ProbeInputs(num_classes, images=image_context()))
  row = probe(inputs_lib.ProbeInputs(num_classes, features=features))
  return {"num_features": features["test"][0].shape[1], **row}


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
                      help="feature cache and results directory; a rerun with "
                           "the same settings resumes after the last row.")
  parser.add_argument("--plots", action="store_true",
                      help="also draw WORKDIR/plots/*.png: top-1 per layer "
                           "per probe, a t-SNE of one end point's features.")
  return parser.parse_args(argv)


@cli.entry_point
def main(argv=None):
  args = parse_args(argv)
  logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
  gin_config.parse_gin(args.gin, args.gin_param)
  global_step = artifacts.read_metadata(args.hub_module).get("global_step", 0)
  settings = {"hub_module": os.path.realpath(args.hub_module),
              "global_step": global_step, "gin": gin.config_str()}
  rows = evaluate(args.hub_module, args.workdir,
                  gin_config.configured_source(),
                  finished_rows=result_files.resumable_rows(args.workdir,
                                                            settings))
  result_files.write_tensorboard(
      rows, artifacts.summary_dir(args.workdir), step=global_step)
  if args.plots:
    gin.get_configurable(layer_plots.write_plots)(rows, args.workdir)
  print(result_files.format_table(rows))
  for line in fit_warnings(rows):
    print(line)
  return rows


if __name__ == "__main__":
  main()
