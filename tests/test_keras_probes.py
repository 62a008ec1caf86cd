"""Tests for the SGD-trained MLP / linear probes (Keras `fit`)."""
import gin
import numpy as np
import pytest

from tfrevisit import gin_config
from tfrevisit.evaluation import keras_probes
from tfrevisit.evaluation.inputs import ProbeInputs


def rings(num_examples, seed):
  """Two concentric noisy rings in 2-D: not linearly separable."""
  rng = np.random.default_rng(seed)
  labels = rng.integers(0, 2, num_examples)
  angles = rng.uniform(0, 2 * np.pi, num_examples)
  radii = 1.0 + labels + 0.15 * rng.normal(size=num_examples)
  features = np.stack([radii * np.cos(angles), radii * np.sin(angles)], 1)
  return features.astype(np.float32), labels


@pytest.fixture(scope="module")
def ring_splits():
  return rings(1000, seed=0), rings(500, seed=1)


SHORT_SCHEDULE = dict(epochs=8, decay_epochs=(6,), batch_size=50,
                      learning_rate=0.1)
# The same learning rate for the linear probe, given per 256 examples.
SHORT_LINEAR_SCHEDULE = dict(epochs=8, decay_epochs=(6,), batch_size=50,
                             base_learning_rate=0.1 * 256 / 50)


def test_mlp_beats_linear_on_rings(ring_splits):
  (train_x, train_y), (test_x, test_y) = ring_splits
  mlp = keras_probes.train_mlp(train_x, train_y, test_x, test_y, num_classes=2,
                               hidden_units=64, dropout=0.1, **SHORT_SCHEDULE)
  linear = keras_probes.train_linear_sgd(train_x, train_y, test_x, test_y,
                                         num_classes=2, **SHORT_LINEAR_SCHEDULE)
  assert mlp.top1 > 0.95
  assert linear.top1 < 0.7
  predicted = mlp.model.predict(test_x, verbose=0).argmax(1)
  assert mlp.top1 == pytest.approx(np.mean(predicted == test_y), abs=1e-6)
  assert mlp.top5 == 1.0  # Two classes: top-5 is top-2.


def test_history_has_one_entry_per_epoch(ring_splits):
  (train_x, train_y), (test_x, test_y) = ring_splits
  result = keras_probes.train_linear_sgd(train_x, train_y, test_x, test_y, 2,
                                         epochs=3, decay_epochs=(1, 2),
                                         batch_size=512)
  for key in ("loss", "top1", "top5", "val_loss", "val_top1", "val_top5"):
    assert len(result.history[key]) == 3
  assert result.top1 == result.history["val_top1"][-1]
  # 0.1 x 512 / 256 = 0.2, then two decays: 0.02, 0.002.
  assert float(result.model.optimizer.learning_rate) == pytest.approx(2e-3)
  assert not result.model.losses  # the release: no weight decay


def test_weight_decay_is_half_squared_norm(ring_splits):
  (train_x, train_y), (test_x, test_y) = ring_splits
  result = keras_probes.train_mlp(train_x, train_y, test_x, test_y, 2,
                                  hidden_units=8, weight_decay=0.01, epochs=1)
  kernels = [layer.kernel.numpy() for layer in result.model.layers
             if hasattr(layer, "kernel")]
  expected = 0.01 / 2 * sum(np.sum(kernel**2) for kernel in kernels)
  assert float(sum(result.model.losses)) == pytest.approx(expected, rel=1e-5)


def test_same_seed_same_history(ring_splits):
  (train_x, train_y), (test_x, test_y) = ring_splits
  runs = [
      keras_probes.train_mlp(train_x, train_y, test_x, test_y, 2,
                             hidden_units=8, epochs=2, seed=3).history
      for _ in range(2)
  ]
  assert runs[0]["loss"] == runs[1]["loss"]


def test_probe_rejects_bad_labels(ring_splits):
  (train_x, train_y), (test_x, test_y) = ring_splits
  with pytest.raises(ValueError, match="num_classes"):
    keras_probes.train_linear_sgd(train_x, train_y + 5, test_x, test_y, 2,
                                  epochs=1)


def test_mlp_recipe_is_chosen_on_val_then_refitted_on_trainval(ring_splits):
  (train_x, train_y), (test_x, test_y) = ring_splits
  (val_x, val_y) = rings(300, seed=2)
  splits = {"train": (train_x, train_y), "val": (val_x, val_y),
            "trainval": (np.concatenate([train_x, val_x]),
                         np.concatenate([train_y, val_y])),
            "test": (test_x, test_y)}
  # One epoch at a vanishing rate leaves the MLP near chance; the second
  # recipe learns the rings (see test_mlp_beats_linear_on_rings).
  stalled = dict(epochs=1, decay_epochs=[1], learning_rate=1e-7)
  learns = dict(epochs=6, decay_epochs=[5], learning_rate=0.1)
  row = keras_probes.mlp_probe(ProbeInputs(2, features=splits),
                               recipes=[stalled, learns])
  assert row["val_top1_per_recipe"][0] < 0.75 < 0.95 < row[
      "val_top1_per_recipe"][1]
  assert row["recipe"] == "decay_epochs=[5], epochs=6, learning_rate=0.1"
  assert row["val_top1"] == pytest.approx(row["val_top1_per_recipe"][1],
                                          abs=1e-5)
  # The test fit ran the chosen recipe (6 epochs) on trainval.
  assert row["epochs"] == 6 and len(row["test_top1_per_epoch"]) == 6
  assert row["top1"] > 0.95
  # Without recipes: the configured one on trainval, nothing chosen on val.
  with gin.unlock_config():
    gin.bind_parameter("train_mlp.epochs", 2)
    gin.bind_parameter("train_mlp.decay_epochs", [1])
  try:
    plain = gin_config.configured_probe("mlp")(ProbeInputs(2, features=splits))
  finally:
    gin.clear_config()
  assert "val_top1" not in plain and plain["epochs"] == 2
