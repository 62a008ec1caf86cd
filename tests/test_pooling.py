"""Tests for pooling end points to ~9000 features and combining patches."""
import math

import numpy as np
import pytest

from tfrevisit.evaluation import pooling


def random_map(shape, seed=0):
  return np.random.default_rng(seed).normal(size=shape).astype(np.float32)


@pytest.mark.parametrize("shape, kernel, size", [
    # ResNet50 (k=4) at 224: block1 56x56x256 = 802,816 values,
    # sqrt(802816 / 9000) = 9.44 -> kernel 10 -> 5x5x256.
    ((56, 56, 256), 10, 5 * 5 * 256),
    # block2 28x28x512: sqrt(44.6) = 6.68 -> 7 -> 4x4x512.
    ((28, 28, 512), 7, 4 * 4 * 512),
    # block3 14x14x1024: sqrt(22.3) = 4.72 -> 5 -> 2x2x1024 (VALID).
    ((14, 14, 1024), 5, 2 * 2 * 1024),
    # block4 7x7x2048: sqrt(11.2) = 3.34 -> 4 -> 1x1x2048.
    ((7, 7, 2048), 4, 2048),
])
@pytest.mark.parametrize("mode", ["max", "avg"])
def test_strided_pooling_sizes(shape, kernel, size, mode):
  assert pooling.pooling_kernel_size(*shape, target=9000) == kernel
  pooled = pooling.pool_to_size(random_map((2,) + shape), mode)
  assert pooled.shape == (2, size)


@pytest.mark.parametrize("channels, grid", [
    (256, 6),   # 9000 / 256 = 35.2 cells: 6 x 6 = 36.
    (64, 12),   # 140.6: 12 x 12 = 144 beats 11 x 11 = 121.
    (1024, 3),  # 8.8: 3 x 3 = 9.
    (2048, 2),  # 4.4: 2 x 2 = 4.
])
def test_adaptive_grid_is_closest_square(channels, grid):
  assert pooling.adaptive_grid_size(channels, 9000) == grid
  pooled = pooling.pool_to_size(random_map((1, 56, 56, channels)),
                                "adaptive_max")
  assert pooled.shape == (1, grid * grid * channels)


def test_small_maps_and_vectors_are_only_flattened():
  feature_map = random_map((2, 7, 7, 128))  # 6272 <= 9000 values.
  for mode in pooling.POOLING.names():
    np.testing.assert_array_equal(pooling.pool_to_size(feature_map, mode),
                                  feature_map.reshape(2, -1))
  vectors = random_map((3, 2048))
  np.testing.assert_array_equal(pooling.pool_to_size(vectors), vectors)


def test_strided_max_matches_numpy():
  feature_map = random_map((2, 7, 7, 3))
  # 147 values over a target of 20: kernel ceil(sqrt(7.35)) = 3, output 2x2.
  pooled = pooling.pool_to_size(feature_map, "max", target=20).numpy()
  blocks = feature_map[:, :6, :6].reshape(2, 2, 3, 2, 3, 3).max(axis=(2, 4))
  np.testing.assert_array_equal(pooled, blocks.reshape(2, -1))


def numpy_adaptive_pool(feature_map, grid, reduce_fn):
  """Loop reference with torch's bins: [floor(i*H/g), ceil((i+1)*H/g))."""
  batch, height, width, channels = feature_map.shape
  out = np.zeros((batch, grid, grid, channels), feature_map.dtype)
  for i in range(grid):
    for j in range(grid):
      rows = slice(math.floor(i * height / grid),
                   math.ceil((i + 1) * height / grid))
      cols = slice(math.floor(j * width / grid),
                   math.ceil((j + 1) * width / grid))
      out[:, i, j] = reduce_fn(feature_map[:, rows, cols], axis=(1, 2))
  return out.reshape(batch, -1)


@pytest.mark.parametrize("mode, reduce_fn", [("adaptive_max", np.max),
                                             ("adaptive_avg", np.mean)])
def test_adaptive_pooling_matches_numpy_and_is_deterministic(mode, reduce_fn):
  feature_map = random_map((2, 7, 5, 3))  # Bins overlap: 7 and 5 rows over 3.
  # 105 values over a target of 20: 20 / 3 = 6.7 cells, closest square 3 x 3.
  pooled = pooling.pool_to_size(feature_map, mode, target=20).numpy()
  np.testing.assert_allclose(
      pooled, numpy_adaptive_pool(feature_map, 3, reduce_fn), atol=1e-6)
  again = pooling.pool_to_size(feature_map, mode, target=20).numpy()
  np.testing.assert_array_equal(pooled, again)


def test_adaptive_bins_follow_torch():
  assert pooling.adaptive_bins(7, 3) == [(0, 3), (2, 5), (4, 7)]
  assert pooling.adaptive_bins(6, 3) == [(0, 2), (2, 4), (4, 6)]


def test_unknown_mode_lists_choices():
  with pytest.raises(ValueError, match="adaptive_avg, adaptive_max, avg, max"):
    pooling.pool_to_size(random_map((1, 56, 56, 256)), "median")


@pytest.mark.parametrize("mode, expected", [
    ("avg", lambda p: p.mean(1)),
    ("max", lambda p: p.max(1)),
    ("concat", lambda p: p.reshape(len(p), -1)),
])
def test_combine_patches(mode, expected):
  patches = random_map((4, 9, 16))
  combined = pooling.combine_patches(patches, mode).numpy()
  assert combined.shape == ((4, 9 * 16) if mode == "concat" else (4, 16))
  np.testing.assert_allclose(combined, expected(patches), rtol=1e-6)
  # Each image's nine patches as consecutive rows give the same result.
  np.testing.assert_allclose(
      pooling.combine_patches(patches.reshape(36, 16), mode), combined,
      rtol=1e-6)


def test_combine_patches_rejects_partial_images():
  with pytest.raises(ValueError, match="multiple of num_patches=9"):
    pooling.combine_patches(random_map((10, 16)))
