"""Tests for tfrevisit.losses against a brute-force NumPy triplet loss."""
import numpy as np
import pytest
import tensorflow as tf

from tfrevisit import losses


def brute_force_triplet_semihard(labels, embeddings, margin):
  """Loop-by-loop FaceNet semi-hard triplet loss in float64."""
  x = np.asarray(embeddings, np.float64)
  size = len(labels)
  dist = [[float(np.sum((x[i] - x[j]) ** 2)) for j in range(size)]
          for i in range(size)]
  hinges = []
  for a in range(size):
    negatives = [dist[a][n] for n in range(size) if labels[n] != labels[a]]
    for p in range(size):
      if p == a or labels[p] != labels[a]:
        continue
      farther = [d for d in negatives if d > dist[a][p]]
      negative = min(farther) if farther else max(negatives, default=0.0)
      hinges.append(max(margin + dist[a][p] - negative, 0.0))
  return float(np.mean(hinges)) if hinges else 0.0


def _unit_rows(rng, size, dim):
  x = rng.normal(size=(size, dim))
  return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def test_pairwise_squared_distances():
  # Large, duplicated rows: the norm expansion cancels badly on duplicates.
  rng = np.random.default_rng(0)
  x = (10.0 + 10.0 * rng.normal(size=(8, 32))).astype(np.float32)
  x = np.concatenate([x, x[::-1]])
  distances = losses.pairwise_squared_distances(tf.constant(x)).numpy()
  direct = np.sum((x[:, None].astype(np.float64) - x[None]) ** 2, axis=-1)
  assert distances.min() >= 0.0
  np.testing.assert_array_equal(np.diag(distances), 0.0)
  np.testing.assert_allclose(distances, direct, rtol=1e-5, atol=0.01)


LAYOUTS = {
    "pairs": np.repeat(np.arange(8), 2),
    "groups_of_8": np.repeat(np.arange(6), 8),
    "unbalanced": np.repeat(np.arange(6), [1, 2, 7, 3, 12, 1]),
    "shuffled": np.random.default_rng(7).integers(0, 5, size=24),
}


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
@pytest.mark.parametrize("margin", [0.5, 1.0])
@pytest.mark.parametrize("normalise", [True, False])
def test_matches_brute_force(layout, margin, normalise):
  labels = LAYOUTS[layout]
  rng = np.random.default_rng(len(labels))
  if normalise:
    embeddings = _unit_rows(rng, len(labels), 16)
  else:
    embeddings = rng.normal(size=(len(labels), 16)).astype(np.float32)
  loss = losses.triplet_semihard_loss(labels, embeddings, margin=margin)
  assert loss.dtype == tf.float32
  np.testing.assert_allclose(
      loss.numpy(), brute_force_triplet_semihard(labels, embeddings, margin),
      rtol=1e-5, atol=1e-5)


def test_every_anchor_has_semihard_negative():
  # Tight, far-apart clusters: every positive is closer than every negative,
  # so the semi-hard negative is the anchor's closest negative.
  rng = np.random.default_rng(0)
  labels = np.repeat(np.arange(4), 4)
  centres = 10.0 * rng.normal(size=(4, 8))
  embeddings = (centres[labels] + 0.1 * rng.normal(size=(16, 8))).astype(
      np.float32)
  dist = np.sum((embeddings[:, None] - embeddings[None]) ** 2, axis=-1)
  same = labels[:, None] == labels[None]
  closest_negative = np.where(same, np.inf, dist).min(axis=1, keepdims=True)
  assert np.where(same, dist, -np.inf).max() < closest_negative.min()
  margin = 2.0 * closest_negative.max()  # Keeps every hinge active.
  pairs = same & ~np.eye(16, dtype=bool)
  expected = np.mean((margin + dist - closest_negative)[pairs])

  loss = losses.triplet_semihard_loss(labels, embeddings, margin=margin)
  np.testing.assert_allclose(loss.numpy(), expected, rtol=1e-5)


def test_no_anchor_has_semihard_negative():
  # Each class is {v, -v} for a unit v: positives are at distance 4, every
  # negative is closer, so the farthest negative is used.
  angles = np.linspace(0.0, np.pi, 6, endpoint=False)
  directions = np.stack([np.cos(angles), np.sin(angles)], axis=1)
  embeddings = np.concatenate([directions, -directions]).astype(np.float32)
  labels = np.tile(np.arange(6), 2)
  dist = np.sum((embeddings[:, None] - embeddings[None]) ** 2, axis=-1)
  same = labels[:, None] == labels[None]
  farthest_negative = np.where(same, -np.inf, dist).max(axis=1)
  assert farthest_negative.max() < 4.0 - 1e-3
  margin = 1.0
  expected = np.mean(np.maximum(margin + 4.0 - farthest_negative, 0.0))

  loss = losses.triplet_semihard_loss(labels, embeddings, margin=margin)
  np.testing.assert_allclose(loss.numpy(), expected, rtol=1e-5)


def test_negative_at_equal_distance_is_not_semihard():
  # Integer grid points give many exact distance ties; a negative exactly as
  # far as the positive must not count as semi-hard.
  rng = np.random.default_rng(6)
  embeddings = rng.integers(-2, 3, size=(20, 2)).astype(np.float32)
  labels = rng.integers(0, 4, size=20)
  loss = losses.triplet_semihard_loss(labels, embeddings, margin=1.0)
  np.testing.assert_allclose(
      loss.numpy(), brute_force_triplet_semihard(labels, embeddings, 1.0),
      rtol=1e-6)


def test_no_positive_pairs_gives_zero():
  embeddings = _unit_rows(np.random.default_rng(0), 6, 4)
  loss = losses.triplet_semihard_loss(np.arange(6), embeddings)
  assert loss.numpy() == 0.0


def test_single_label_uses_zero_negative_distance():
  # Contrib behaviour without negatives: the hinge is margin + d(a, p).
  embeddings = _unit_rows(np.random.default_rng(1), 5, 4)
  labels = np.zeros(5, np.int32)
  loss = losses.triplet_semihard_loss(labels, embeddings, margin=0.5)
  np.testing.assert_allclose(
      loss.numpy(), brute_force_triplet_semihard(labels, embeddings, 0.5),
      rtol=1e-5)


def test_gradient_is_finite_and_nonzero():
  labels = LAYOUTS["groups_of_8"]
  embeddings = tf.constant(_unit_rows(np.random.default_rng(2), 48, 16))
  # Duplicate rows make zero distances, where a sqrt would give NaN gradients.
  embeddings = tf.concat([embeddings[:1], embeddings[:47]], axis=0)
  with tf.GradientTape() as tape:
    tape.watch(embeddings)
    loss = losses.triplet_semihard_loss(labels, embeddings, margin=0.5)
  grad = tape.gradient(loss, embeddings)
  assert np.all(np.isfinite(grad.numpy()))
  assert np.abs(grad.numpy()).max() > 0.0


@pytest.mark.parametrize("dtype", [tf.bfloat16, tf.float16])
def test_low_precision_input_computes_in_float32(dtype):
  labels = LAYOUTS["pairs"]
  embeddings = tf.cast(_unit_rows(np.random.default_rng(3), 16, 8), dtype)
  loss = losses.triplet_semihard_loss(labels, embeddings, margin=0.5)
  assert loss.dtype == tf.float32
  rounded = tf.cast(embeddings, tf.float32).numpy()
  np.testing.assert_allclose(
      loss.numpy(), brute_force_triplet_semihard(labels, rounded, 0.5),
      rtol=1e-5, atol=1e-5)


def test_tf_function_with_unknown_batch_size():
  loss_fn = tf.function(
      losses.triplet_semihard_loss,
      input_signature=[tf.TensorSpec([None], tf.int32),
                       tf.TensorSpec([None, 8], tf.float32)])
  rng = np.random.default_rng(4)
  for labels in (LAYOUTS["pairs"], LAYOUTS["unbalanced"]):
    embeddings = _unit_rows(rng, len(labels), 8)
    np.testing.assert_allclose(
        loss_fn(labels.astype(np.int32), embeddings).numpy(),
        brute_force_triplet_semihard(labels, embeddings, 1.0),
        rtol=1e-5, atol=1e-5)


def test_per_replica_under_mirrored_strategy(two_cpu_strategy):
  strategy = two_cpu_strategy
  rng = np.random.default_rng(5)
  labels = [np.repeat(np.arange(3), 8), np.repeat(np.arange(4), 4)]
  embeddings = [_unit_rows(rng, len(y), 8) for y in labels]

  def replica_inputs(context):
    i = context.replica_id_in_sync_group
    return tf.constant(labels[i]), tf.constant(embeddings[i])

  inputs = strategy.experimental_distribute_values_from_function(replica_inputs)

  @tf.function
  def step(replica_labels, replica_embeddings):
    return strategy.run(losses.triplet_semihard_loss,
                        args=(replica_labels, replica_embeddings,
                              tf.constant(0.5)))

  per_replica = strategy.experimental_local_results(step(*inputs))
  assert len(per_replica) == 2
  for i, loss in enumerate(per_replica):
    np.testing.assert_allclose(
        loss.numpy(), brute_force_triplet_semihard(labels[i], embeddings[i], 0.5),
        rtol=1e-5, atol=1e-5)
