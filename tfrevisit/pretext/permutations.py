"""Jigsaw permutation sets with large Hamming distance (Noroozi & Favaro 2016)."""
import functools
import itertools
import math

import numpy as np
import tensorflow as tf

# Every candidate permutation is enumerated: 10! rows is the most that fits
# comfortably in memory.
_MAX_PATCHES = 10


@functools.lru_cache(maxsize=None)
def max_hamming_permutations(n=100, num_patches=9, seed=0):
  """Greedily picks `n` permutations that are far apart in Hamming distance.

  Starts from a seeded random permutation, then repeatedly adds the candidate
  (among all `num_patches!`) with the largest minimum Hamming distance to the
  chosen set, ties broken by the larger sum of distances, then by the first in
  lexicographic order. For the defaults this takes about a second and reaches
  a minimum pairwise distance of 6 and a mean above 8.

  Args:
    n: number of permutations.
    num_patches: length of each permutation.
    seed: seed of the first permutation.

  Returns:
    Read-only int32 [n, num_patches]; each row is a permutation of
    range(num_patches), all rows distinct. Cached per argument tuple.
  """
  if not 1 <= num_patches <= _MAX_PATCHES:
    raise ValueError(
        f"num_patches={num_patches} is unsupported: all num_patches! "
        f"permutations are enumerated; use 1..{_MAX_PATCHES}.")
  num_candidates = math.factorial(num_patches)
  if not 1 <= n <= num_candidates:
    raise ValueError(f"n={n} must be in 1..{num_candidates} "
                     f"(= {num_patches}!, the number of distinct permutations).")
  candidates = np.array(
      list(itertools.permutations(range(num_patches))), dtype=np.int8)
  chosen = [int(np.random.default_rng(seed).integers(num_candidates))]
  min_distance = np.full(num_candidates, num_patches, dtype=np.int64)
  sum_distance = np.zeros(num_candidates, dtype=np.int64)
  # Chosen rows have min_distance 0, so they are never picked again.
  for _ in range(n - 1):
    distance = np.count_nonzero(candidates != candidates[chosen[-1]], axis=1)
    np.minimum(min_distance, distance, out=min_distance)
    sum_distance += distance
    # Lexicographic (min, sum) key; argmax takes the first of equal keys.
    key = min_distance * (n * num_patches + 1) + sum_distance
    chosen.append(int(np.argmax(key)))
  permutations = candidates[chosen].astype(np.int32)
  permutations.setflags(write=False)
  return permutations


def gather_permuted(patches, permutation):
  """Reorders each example's patches: output slot i holds patch permutation[i].

  Args:
    patches: [B, P, ...] patches (or their embeddings) in grid order.
    permutation: int [B, P], one permutation of range(P) per example.

  Returns:
    [B, P, ...] with `output[b, i] = patches[b, permutation[b, i]]`.
  """
  return tf.gather(patches, permutation, axis=1, batch_dims=1)
