"""The probes' splits under the paper's protocols, and label subsets.

A `Split` is (features [N, D], labels [N] int). The features are NumPy arrays
(memory-mapped ones work) or `features.StackedRows`: anything that slicing
reads, read in chunks, or all at once with `np.asarray`.

`protocol_splits` turns the source's per-split features into the probes'
{"train", "val", "trainval", "test"} under a protocol (`PROTOCOL_SPLITS`:
the paper's Table 2 or Table 1); `standardized_splits` scales them by the
train split's statistics; `label_subset` and `balanced_subset` make the
low-data setting (a class-balanced fraction of the labels).
"""
from typing import Any, Dict, Optional, Tuple

import numpy as np

from tfrevisit.evaluation import features as features_lib

# (features [N, D], labels [N]).
Split = Tuple[Any, np.ndarray]


# The splits each protocol reads, and the one its rows report on.
PROTOCOL_SPLITS = {"table2": ("train", "val", "test"),
                   "table1": ("train", "val")}
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
            "trainval": (train_x.stack(val_x),
                         np.concatenate([train_y, val_y])),
            "test": per_split["test"]}
  order = np.random.RandomState(seed).permutation(len(train_y))
  num_held_out = max(1, round(held_out_fraction * len(train_y)))
  held_out, rest = np.sort(order[:num_held_out]), np.sort(order[num_held_out:])
  return {"train": (train_x[rest], train_y[rest]),
          "val": (train_x[held_out], train_y[held_out]),
          "trainval": per_split["train"], "test": per_split["val"]}



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
    index = balanced_subset(y, fraction, seed, num_classes)
    subset[name] = (x[index], y[index])
  (train_x, train_y), (val_x, val_y) = subset["train"], subset["val"]
  subset["trainval"] = (_stack(train_x, val_x),
                        np.concatenate([train_y, val_y]))
  return subset

def balanced_subset(labels: np.ndarray, fraction: float, seed: int,
                    num_classes: Optional[int] = None) -> np.ndarray:
  """Indices of a class-balanced, seeded fraction of a labelled split.

  Every class gets the same count, round(fraction * N / C), drawn without
  replacement.

  Args:
    labels: [N] int class ids.
    fraction: in (0, 1], e.g. 0.01 or 0.1.
    seed: random seed; the same seed gives the same subset.
    num_classes: C; defaults to max(labels) + 1.

  Returns:
    Sorted [C * per_class] int64 indices into `labels`.

  Raises:
    ValueError: for a fraction outside (0, 1] or a class with too few examples.
  """
  if not 0 < fraction <= 1:
    raise ValueError(f"fraction must be in (0, 1]; got {fraction}.")
  labels = np.asarray(labels)
  num_classes = num_classes or int(labels.max()) + 1
  per_class = max(1, round(fraction * len(labels) / num_classes))
  rng = np.random.default_rng(seed)
  chosen = []
  for label in range(num_classes):
    members = np.flatnonzero(labels == label)
    if len(members) < per_class:
      raise ValueError(
          f"Class {label} has {len(members)} examples, fewer than the "
          f"{per_class} a balanced {fraction:g} subset needs; use a smaller "
          "fraction.")
    chosen.append(rng.choice(members, per_class, replace=False))
  return np.sort(np.concatenate(chosen)).astype(np.int64)
