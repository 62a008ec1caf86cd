"""Tests for tfrevisit.pretext.permutations."""
import itertools

import numpy as np
import pytest
import tensorflow as tf

from tfrevisit.pretext import permutations


def _hamming(a, b):
  return int(np.count_nonzero(np.asarray(a) != np.asarray(b)))


def _pairwise_hamming(perms):
  return [_hamming(perms[i], perms[j])
          for i in range(len(perms)) for j in range(i + 1, len(perms))]


def test_default_set_properties():
  perms = permutations.max_hamming_permutations()
  assert perms.shape == (100, 9) and perms.dtype == np.int32
  for row in perms:
    assert sorted(row) == list(range(9))
  assert len({tuple(row) for row in perms}) == 100
  distances = _pairwise_hamming(perms)
  assert min(distances) >= 6
  assert np.mean(distances) > 8.0


def test_deterministic_and_seeded():
  first = permutations.max_hamming_permutations(n=30, seed=3)
  permutations.max_hamming_permutations.cache_clear()
  again = permutations.max_hamming_permutations(n=30, seed=3)
  np.testing.assert_array_equal(first, again)
  assert permutations.max_hamming_permutations(n=30, seed=3) is again
  other_seed = permutations.max_hamming_permutations(n=30, seed=4)
  assert not np.array_equal(first, other_seed)


def test_result_is_read_only():
  perms = permutations.max_hamming_permutations(n=10, num_patches=4)
  with pytest.raises(ValueError):
    perms[0, 0] = 1


@pytest.mark.parametrize("num_patches,n", [(4, 12), (5, 25)])
def test_each_row_is_the_greedy_choice(num_patches, n):
  perms = [tuple(p) for p in
           permutations.max_hamming_permutations(n, num_patches, seed=1)]
  candidates = list(itertools.permutations(range(num_patches)))
  for k in range(1, n):
    def score(candidate, chosen=perms[:k]):
      distances = [_hamming(candidate, c) for c in chosen]
      return min(distances), sum(distances)
    best = max(score(c) for c in candidates if c not in perms[:k])
    first_best = next(c for c in candidates
                      if c not in perms[:k] and score(c) == best)
    assert perms[k] == first_best, f"row {k}"


@pytest.mark.parametrize("kwargs,match", [
    (dict(n=25, num_patches=4), "n=25"),
    (dict(n=0), "n=0"),
    (dict(num_patches=11), "num_patches=11"),
])
def test_bad_arguments(kwargs, match):
  with pytest.raises(ValueError, match=match):
    permutations.max_hamming_permutations(**kwargs)


@pytest.mark.parametrize("patch_shape", [(4, 4, 3), (16,)])
def test_gather_permuted(patch_shape):
  rng = np.random.default_rng(0)
  perm_set = permutations.max_hamming_permutations()
  perm = perm_set[rng.integers(0, 100, size=5)]
  patches = rng.normal(size=(5, 9) + patch_shape).astype(np.float32)
  expected = np.empty_like(patches)
  for b in range(5):
    for i in range(9):
      expected[b, i] = patches[b, perm[b, i]]
  out = permutations.gather_permuted(tf.constant(patches), tf.constant(perm))
  np.testing.assert_array_equal(out.numpy(), expected)


def test_gather_permuted_places_patch_p_i_at_slot_i():
  perm = permutations.max_hamming_permutations()[:4]
  patch_ids = np.broadcast_to(np.arange(9, dtype=np.float32), (4, 9))
  out = permutations.gather_permuted(tf.constant(patch_ids), tf.constant(perm))
  np.testing.assert_array_equal(out.numpy(), perm)
