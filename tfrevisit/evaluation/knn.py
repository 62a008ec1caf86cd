"""Weighted k-nearest-neighbour classification of frozen features.

The common self-supervised kNN monitor (Wu et al. 2018, as in DINO,
solo-learn): features are L2-normalised, neighbours are the k training rows of
highest cosine similarity, and each votes for its class with weight
exp(similarity / temperature); classes are ranked by their summed votes.

The similarities are computed for chunks of test rows against chunks of
training rows, keeping a running top-k per test row, so memory holds
[test_chunk, train_chunk] similarities at most, never [N_test, N_train]:
1.28M x 2048 training features are read once, chunk by chunk.
"""
from typing import Any, Dict, Sequence, Tuple

import numpy as np
import tensorflow as tf

from tfrevisit.evaluation.inputs import ProbeInputs


def _normalized(rows: Any, start: int, stop: int) -> tf.Tensor:
  """Rows [start, stop) of [N, D] features, L2-normalised: [n, D] float32."""
  return tf.math.l2_normalize(tf.constant(rows[start:stop], tf.float32),
                              axis=1)


def nearest_neighbours(train_features: Any, test_features: Any, k: int,
                       train_chunk: int = 16384, test_chunk: int = 1024
                       ) -> Tuple[np.ndarray, np.ndarray]:
  """The k training rows most cosine-similar to each test row.

  Args:
    train_features: [N, D] features (NumPy or `features.StackedRows`).
    test_features: [M, D] features.
    k: neighbours per test row, at most N.
    train_chunk: training rows read at a time (each read once).
    test_chunk: test rows compared with them at a time.

  Returns:
    (similarities [M, k] float32 in decreasing order, indices [M, k] int64
    into the training rows).
  """
  if not 0 < k <= len(train_features):
    raise ValueError(f"k must be in [1, {len(train_features)}]; got {k}.")
  num_test = len(test_features)
  # Placeholders (similarity -inf) until k training rows have been seen.
  similarities = tf.fill([num_test, k], -np.inf)
  indices = tf.fill([num_test, k], tf.constant(-1, tf.int64))
  for train_start in range(0, len(train_features), train_chunk):
    train = _normalized(train_features, train_start, train_start + train_chunk)
    parts = []
    for start in range(0, num_test, test_chunk):
      test = _normalized(test_features, start, start + test_chunk)
      stop = start + len(test)
      parts.append(_merge_top_k(
          similarities[start:stop], indices[start:stop],
          tf.matmul(test, train, transpose_b=True), train_start))
    similarities = tf.concat([p[0] for p in parts], 0)
    indices = tf.concat([p[1] for p in parts], 0)
  return similarities.numpy(), indices.numpy()


def _merge_top_k(similarities, indices, chunk, offset):
  """Merges a running top-k ([m, k] similarities and indices) with a chunk of
  similarities [m, n] to training rows offset, ..., offset + n - 1."""
  k = similarities.shape[1]
  top, position = tf.math.top_k(tf.concat([similarities, chunk], 1), k)
  position = tf.cast(position, tf.int64)
  kept = tf.gather(indices, tf.minimum(position, k - 1), batch_dims=1)
  return top, tf.where(position < k, kept, offset + position - k)


def class_votes(similarities: np.ndarray, neighbour_labels: np.ndarray,
                num_classes: int, temperature: float) -> np.ndarray:
  """Summed exp(similarity / temperature) per class: [M, C] float64.

  Args:
    similarities: [M, k] cosine similarities of the neighbours.
    neighbour_labels: [M, k] their class ids.
    num_classes: C.
    temperature: T of the vote weights exp(similarity / T).
  """
  weights = np.exp(similarities.astype(np.float64) / temperature)
  votes = np.zeros([len(similarities), num_classes])
  np.add.at(votes, (np.arange(len(similarities))[:, None], neighbour_labels),
            weights)
  return votes


def top_k_accuracy(votes: np.ndarray, labels: np.ndarray, k: int) -> float:
  """Fraction of rows whose label is among the k highest-voted classes (ties
  go to the lower class id)."""
  ranked = np.argsort(-votes, axis=1, kind="stable")[:, :k]
  return float(np.mean(np.any(ranked == labels[:, None], axis=1)))


def knn_probe(inputs: ProbeInputs,
              ks: Sequence[int] = (20, 200), temperature: float = 0.07,
              train_chunk: int = 16384, test_chunk: int = 1024
              ) -> Dict[str, Any]:
  """Weighted kNN: neighbours from trainval, accuracy on test.

  Args:
    inputs: the feature splits (`ProbeInputs.features`; reads trainval and
      test) and C.
    ks: the numbers of neighbours to evaluate (each at most N; larger ones
      are clipped to N).
    temperature: T of the vote weights exp(cosine similarity / T).
    train_chunk, test_chunk: rows per chunk (`nearest_neighbours`).

  Returns:
    The row: `top1`, `top5` for the first of `ks`, and `ks`, `top1_per_k`,
    `top5_per_k` for all of them.
  """
  splits, num_classes = inputs.features, inputs.num_classes
  (train_x, train_y), (test_x, test_y) = splits["trainval"], splits["test"]
  ks = [min(int(k), len(train_y)) for k in ks]
  similarities, indices = nearest_neighbours(train_x, test_x, max(ks),
                                             train_chunk, test_chunk)
  neighbour_labels = np.asarray(train_y)[indices]
  top1, top5 = [], []
  for k in ks:
    votes = class_votes(similarities[:, :k], neighbour_labels[:, :k],
                        num_classes, temperature)
    top1.append(top_k_accuracy(votes, test_y, 1))
    top5.append(top_k_accuracy(votes, test_y, 5))
  return {"top1": top1[0], "top5": top5[0], "ks": ks, "top1_per_k": top1,
          "top5_per_k": top5, "temperature": temperature}
