"""Tests for the probes' splits under the protocols and the label subsets."""
import numpy as np
import pytest

from tfrevisit.evaluation import features as features_lib
from tfrevisit.evaluation import splits as splits_lib


def test_protocol_splits_hold_out_part_of_train():
  rows = np.arange(40, dtype=np.float32).reshape(20, 2)
  x = features_lib.StackedRows([rows])
  splits = {"train": (x, np.arange(20)),
            "val": (features_lib.StackedRows([rows[:5]]), np.arange(5)),
            "test": (features_lib.StackedRows([rows[:3]]), np.arange(3))}
  table1 = splits_lib.protocol_splits(splits, "table1", 0.25, seed=0)
  held_out, rest = table1["val"][1], table1["train"][1]
  assert len(held_out) == 5 and len(rest) == 15
  assert sorted(np.concatenate([held_out, rest])) == list(range(20))
  np.testing.assert_array_equal(table1["train"][0][:, 0], 2 * rest)
  assert table1["trainval"][0] is x and table1["test"][1].tolist() == [
      0, 1, 2, 3, 4
  ]
  table2 = splits_lib.protocol_splits(splits, "table2", 0.25, seed=0)
  assert table2["test"][1].tolist() == [0, 1, 2]
  assert table2["trainval"][1].tolist() == list(range(20)) + list(range(5))
  assert table2["trainval"][0].shape == (25, 2)


def test_standardize_keeps_the_scale_of_units_constant_on_train():
  """A ReLU unit dead on train (all zeros) but alive on test is shifted, not
  divided by ~0."""
  train = np.array([[0.0, 1.0], [0.0, 3.0]], np.float32)
  test = np.array([[5.0, 2.0]], np.float32)
  splits = splits_lib.standardized_splits({
      "train": (features_lib.StackedRows([train]), np.zeros(2)),
      "test": (features_lib.StackedRows([test]), np.zeros(1))})
  np.testing.assert_allclose(splits["train"][0][:], [[0, -1], [0, 1]])
  np.testing.assert_allclose(splits["test"][0][:], [[5, 0]])


def test_low_data_subsets_val_to_the_label_fraction_too():
  def split(n):  # features that name their row, balanced labels
    return (np.arange(n, dtype=np.float32)[:, None] + 1000 * n,
            np.arange(n) % 5)
  per_split = {"train": split(400), "val": split(100), "test": split(50)}
  per_split["trainval"] = (
      np.concatenate([per_split["train"][0], per_split["val"][0]]),
      np.concatenate([per_split["train"][1], per_split["val"][1]]))
  subset = splits_lib.label_subset(per_split, 0.1, seed=3, num_classes=5)
  # 10%: 40 train and 10 val labels, class-balanced (8 and 2 per class).
  for name, size in (("train", 40), ("val", 10)):
    x, y = subset[name]
    assert len(y) == size and np.all(np.bincount(y, minlength=5) == size // 5)
    assert set(x[:, 0]) <= set(per_split[name][0][:, 0])
  # The fit sees exactly those labels: trainval = train subset + val subset.
  np.testing.assert_array_equal(
      subset["trainval"][0],
      np.concatenate([subset["train"][0], subset["val"][0]]))
  np.testing.assert_array_equal(
      subset["trainval"][1],
      np.concatenate([subset["train"][1], subset["val"][1]]))
  assert subset["test"] is per_split["test"]
  other = splits_lib.label_subset(per_split, 0.1, seed=4, num_classes=5)
  assert set(other["val"][0][:, 0]) != set(subset["val"][0][:, 0])
  assert splits_lib.label_subset(per_split, 1.0, seed=3,
                                 num_classes=5) is per_split


def test_balanced_subset_has_exact_per_class_counts():
  labels = np.repeat(np.arange(4), [50, 80, 120, 150])  # 400 examples.
  indices = splits_lib.balanced_subset(labels, fraction=0.1, seed=0)
  # 10% of 400 over 4 classes: 10 per class.
  np.testing.assert_array_equal(np.bincount(labels[indices]), [10] * 4)
  assert len(np.unique(indices)) == len(indices)
  np.testing.assert_array_equal(
      indices, splits_lib.balanced_subset(labels, fraction=0.1, seed=0))
  assert not np.array_equal(
      indices, splits_lib.balanced_subset(labels, fraction=0.1, seed=1))


def test_balanced_subset_errors():
  labels = np.repeat(np.arange(3), [2, 50, 50])
  with pytest.raises(ValueError, match="Class 0 has 2 examples"):
    splits_lib.balanced_subset(labels, fraction=0.5, seed=0)
  with pytest.raises(ValueError, match="fraction"):
    splits_lib.balanced_subset(labels, fraction=0.0, seed=0)
