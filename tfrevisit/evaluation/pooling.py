"""Reducing end points to flat feature vectors for the linear and MLP probes.

Spatial end points larger than `target` values are pooled down to about that
many features (the paper uses 9000), then flattened in H, W, C order. Patch
models' per-patch features are combined into one vector per image.
"""
import math

import numpy as np
import tensorflow as tf

from tfrevisit import registry

POOLING = registry.Registry("pooling mode")
PATCH_COMBINERS = registry.Registry("patch combination mode")


def pooling_kernel_size(height: int, width: int, channels: int,
                        target: int) -> int:
  """Kernel = stride of the release's plain pooling: ceil(sqrt(HWC/target))."""
  return math.ceil(math.sqrt(height * width * channels / target))


def adaptive_grid_size(channels: int, target: int) -> int:
  """Side g of the square g x g grid whose cell count is closest to target/C."""
  cells = target / channels
  side = max(1, math.floor(math.sqrt(cells)))
  return min((side, side + 1), key=lambda g: abs(g * g - cells))


def adaptive_bins(size: int, grid: int):
  """[start, end) of each of `grid` bins over `size` positions.

  As torch's adaptive pooling: start = floor(i * size / grid),
  end = ceil((i + 1) * size / grid); bins overlap when size % grid != 0.
  """
  return [(i * size // grid, -(-(i + 1) * size // grid)) for i in range(grid)]


def _strided_pool(pool_fn):
  def pool(feature_map, target):
    _, height, width, channels = feature_map.shape
    # A kernel larger than the map (very many channels, or very unequal
    # sides) would leave nothing; pool over the smaller side instead.
    kernel = min(pooling_kernel_size(height, width, channels, target),
                 height, width)
    return pool_fn(feature_map, ksize=kernel, strides=kernel, padding="VALID")
  return pool


def _adaptive_pool(reduce_fn):
  """Fractional pooling to the grid of `adaptive_grid_size`, separably."""
  def pool_axis(feature_map, axis, grid):
    size = feature_map.shape[axis]
    bins = adaptive_bins(size, min(grid, size))
    cells = [reduce_fn(tf.gather(feature_map, tf.range(start, end), axis=axis),
                       axis=axis, keepdims=True) for start, end in bins]
    return tf.concat(cells, axis=axis)

  def pool(feature_map, target):
    grid = adaptive_grid_size(feature_map.shape[-1], target)
    return pool_axis(pool_axis(feature_map, 1, grid), 2, grid)
  return pool


POOLING.register("max")(_strided_pool(tf.nn.max_pool2d))
POOLING.register("avg")(_strided_pool(tf.nn.avg_pool2d))
POOLING.register("adaptive_max")(_adaptive_pool(tf.reduce_max))
POOLING.register("adaptive_avg")(_adaptive_pool(tf.reduce_mean))


def pool_to_size(feature_map, mode: str = "max", target: int = 9000):
  """Pools a spatial end point to about `target` values and flattens it.

  Args:
    feature_map: [B, H, W, C] spatial end point, or [B, D] vectors (returned
      unchanged).
    mode: `max` or `avg` (kernel = stride = ceil(sqrt(HWC / target)), VALID, as
      the paper's release), or `adaptive_max` / `adaptive_avg` (deterministic
      fractional pooling to the g x g grid with g * g closest to target / C,
      g capped at H and W).
    target: number of values above which a map is pooled.

  Returns:
    [B, F] float tensor, F <= H * W * C (about `target` when pooled).
  """
  pool = POOLING.get(mode)
  feature_map = tf.convert_to_tensor(feature_map)
  if feature_map.shape.rank == 2:
    return feature_map
  if feature_map.shape.rank != 4 or None in feature_map.shape[1:]:
    raise ValueError(f"Expected an end point [B, H, W, C] with known H, W, C, "
                     f"or [B, D]; got shape {feature_map.shape}.")
  if np.prod(feature_map.shape[1:]) > target:
    feature_map = pool(feature_map, target)
  return tf.reshape(feature_map, [tf.shape(feature_map)[0], -1])


PATCH_COMBINERS.register("avg")(lambda patches: tf.reduce_mean(patches, axis=1))
PATCH_COMBINERS.register("max")(lambda patches: tf.reduce_max(patches, axis=1))
PATCH_COMBINERS.register("concat")(
    lambda patches: tf.reshape(patches, [tf.shape(patches)[0], -1]))


def combine_patches(features, mode: str = "avg", num_patches: int = 9):
  """Combines per-patch features into one vector per image.

  Args:
    features: [B * P, D] with each image's P patches consecutive, or [B, P, D].
    mode: `avg` (the paper's default), `max` or `concat`.
    num_patches: P (3 x 3 patches in the paper).

  Returns:
    [B, D] for `avg` / `max`, [B, P * D] for `concat` (patch-major).
  """
  combine = PATCH_COMBINERS.get(mode)
  features = tf.convert_to_tensor(features)
  if features.shape.rank == 2:
    if features.shape[0] is not None and features.shape[0] % num_patches:
      raise ValueError(f"{features.shape[0]} patch rows are not a multiple of "
                       f"num_patches={num_patches}.")
    features = tf.reshape(features, [-1, num_patches, features.shape[-1]])
  if features.shape.rank != 3 or features.shape[1] != num_patches:
    raise ValueError(f"Expected per-patch features [B * {num_patches}, D] or "
                     f"[B, {num_patches}, D]; got shape {features.shape}.")
  return combine(features)
