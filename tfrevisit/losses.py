"""Metric-learning losses for the pretext tasks."""
import tensorflow as tf


def pairwise_squared_distances(embeddings):
  """Squared Euclidean distances between all rows.

  Args:
    embeddings: float32 [B, D].

  Returns:
    float32 [B, B], clamped at 0 against cancellation, exactly 0 on the diagonal.
  """
  squared_norms = tf.reduce_sum(tf.square(embeddings), axis=1)
  dots = tf.matmul(embeddings, embeddings, transpose_b=True)
  distances = squared_norms[:, None] - 2.0 * dots + squared_norms[None, :]
  distances = tf.maximum(distances, 0.0)
  return tf.linalg.set_diag(distances, tf.zeros_like(squared_norms))


def triplet_semihard_loss(labels, embeddings, margin=1.0):
  """Triplet loss with semi-hard negative mining (FaceNet, TF 1.x contrib).

  For every anchor-positive pair (a != p, same label) the negative is the one
  closest to the anchor among those strictly farther than the positive; if no
  such negative exists, the anchor's farthest negative (0 if the batch has no
  negative for that anchor, as in contrib). The loss is the mean over all
  anchor-positive pairs of `max(margin + d(a, p) - d(a, n), 0)`, with `d` the
  squared Euclidean distance. Computed in float32 whatever the input dtype.

  Memory is O(B^2): negatives are sorted per anchor and searched, instead of
  contrib's [B * B, B] tile.

  Args:
    labels: int [B], equal labels mark positives.
    embeddings: float [B, D], used as given (normalise them beforehand if wanted).
    margin: hinge margin, in squared-distance units.

  Returns:
    float32 scalar; 0 when the batch has no anchor-positive pair.
  """
  labels = tf.reshape(labels, [-1])
  distances = pairwise_squared_distances(tf.cast(embeddings, tf.float32))
  batch_size = tf.shape(labels)[0]
  same_label = tf.equal(labels[:, None], labels[None, :])
  positive_pairs = tf.logical_and(
      same_label, tf.logical_not(tf.eye(batch_size, dtype=tf.bool)))

  # Per anchor, its negative distances in ascending order, non-negatives (+inf)
  # last; the semi-hard negative is the first entry > d(a, p).
  negative_distances = tf.where(same_label, float("inf"), distances)
  order = tf.argsort(negative_distances, axis=1)
  sorted_negatives = tf.gather(negative_distances, order, batch_dims=1)
  first_farther = tf.searchsorted(sorted_negatives, distances, side="right")
  num_negatives = tf.reduce_sum(
      tf.cast(tf.logical_not(same_label), tf.int32), axis=1, keepdims=True)
  has_semihard = first_farther < num_negatives
  semihard = tf.gather(
      sorted_negatives, tf.minimum(first_farther, batch_size - 1), batch_dims=1)
  farthest = tf.reduce_max(tf.where(same_label, 0.0, distances), axis=1,
                           keepdims=True)
  negatives = tf.where(has_semihard, semihard, farthest)

  hinge = tf.nn.relu(margin + distances - negatives)
  hinge = tf.where(positive_pairs, hinge, 0.0)
  num_pairs = tf.reduce_sum(tf.cast(positive_pairs, tf.float32))
  return tf.math.divide_no_nan(tf.reduce_sum(hinge), num_pairs)
