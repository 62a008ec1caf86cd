"""ResNet50 v1 and v2 (pre-activation) with widening factor k.

End points for images [B, H, W, 3] with the default strides (patch mode, for
64x64 patches: root stride 1 and stage strides (1, 2, 2, 1), so after_root and
block1 are H/2, block2 H/4, block3 and block4 H/8):
  after_root  [B, H/4,  W/4,  16k]  root conv (+BN+ReLU in v1) and max-pool
  block1      [B, H/4,  W/4,  64k]
  block2      [B, H/8,  W/8,  128k]
  block3      [B, H/16, W/16, 256k]
  block4      [B, H/32, W/32, 512k]  stage output (in v2 before the final BN)
  pre_logits  [B, 512k]              global average pool
  logits      [B, num_classes]       only if num_classes is set
Spatial sizes round up (ceil) for sizes not divisible by the stride.
"""
import functools

import keras

from tfrevisit.models import layers
from tfrevisit.models.factory import BACKBONES, require_last_relu

UNITS_PER_STAGE = (3, 4, 6, 3)
DEFAULT_WEIGHT_DECAY = 1e-4


def _projection_needed(x, depth: int, stride: int) -> bool:
  return stride > 1 or x.shape[-1] != depth


def _bottleneck(x, depth: int, stride: int, weight_decay, name: str, numerics):
  """The residual branch up to its last conv: 1x1(depth/4)-BN-ReLU,
  3x3(depth/4, stride)-BN-ReLU, 1x1(depth)."""
  x = layers.conv2d_fixed_padding(x, depth // 4, 1, 1, weight_decay,
                                  f"{name}_conv1", numerics)
  x = layers.batch_norm_relu(x, f"{name}_conv1", numerics=numerics)
  x = layers.conv2d_fixed_padding(x, depth // 4, 3, stride, weight_decay,
                                  f"{name}_conv2", numerics)
  x = layers.batch_norm_relu(x, f"{name}_conv2", numerics=numerics)
  return layers.conv2d_fixed_padding(x, depth, 1, 1, weight_decay,
                                     f"{name}_conv3", numerics)


def _unit_v1(x, depth: int, stride: int, weight_decay, name: str, numerics):
  """1x1-BN-ReLU, 3x3(stride)-BN-ReLU, 1x1-BN, add shortcut, ReLU."""
  shortcut = x
  if _projection_needed(x, depth, stride):
    shortcut = layers.conv2d_fixed_padding(
        x, depth, 1, stride, weight_decay, f"{name}_shortcut", numerics)
    shortcut = layers.batch_norm_relu(shortcut, f"{name}_shortcut", relu=False,
                                      numerics=numerics)
  residual = _bottleneck(x, depth, stride, weight_decay, name, numerics)
  residual = layers.batch_norm_relu(residual, f"{name}_conv3", relu=False,
                                    numerics=numerics)
  x = keras.layers.Add(name=f"{name}_add")([shortcut, residual])
  return keras.layers.ReLU(name=f"{name}_out")(x)


def _unit_v2(x, depth: int, stride: int, weight_decay, name: str, numerics):
  """Pre-activation: BN-ReLU, then 1x1, BN-ReLU, 3x3(stride), BN-ReLU, 1x1; add."""
  preact = layers.batch_norm_relu(x, f"{name}_preact", numerics=numerics)
  shortcut = x
  if _projection_needed(x, depth, stride):
    shortcut = layers.conv2d_fixed_padding(
        preact, depth, 1, stride, weight_decay, f"{name}_shortcut", numerics)
  residual = _bottleneck(preact, depth, stride, weight_decay, name, numerics)
  return keras.layers.Add(name=f"{name}_add")([shortcut, residual])


_UNITS = {1: _unit_v1, 2: _unit_v2}


def resnet50(*, version: int, filters_factor: int, last_relu: bool,
             patch_mode: bool, num_classes, weight_decay, input_shape,
             numerics: layers.Numerics) -> keras.Model:
  """Builds ResNet50 v1 or v2; arguments as in `tfrevisit.models.backbone`."""
  name = f"resnet50_v{version}"
  if version == 1:
    require_last_relu(name, last_relu)
  if weight_decay is None:
    weight_decay = DEFAULT_WEIGHT_DECAY
  unit = _UNITS[version]
  root_stride, stage_strides = layers.strides(patch_mode)

  images = keras.Input(input_shape, name="images")
  x = layers.conv2d_fixed_padding(
      images, 16 * filters_factor, 7, root_stride, weight_decay, "root_conv",
      numerics)
  if version == 1:
    x = layers.batch_norm_relu(x, "root", numerics=numerics)
  x = layers.root_max_pool(x)
  end_points = {"after_root": x}
  for stage, (num_units, stride) in enumerate(
      zip(UNITS_PER_STAGE, stage_strides), start=1):
    depth = 64 * filters_factor * 2**(stage - 1)
    for unit_index in range(num_units):
      x = unit(x, depth, stride if unit_index == 0 else 1, weight_decay,
               f"block{stage}_unit{unit_index + 1}", numerics)
    end_points[f"block{stage}"] = x
  if version == 2:
    x = layers.batch_norm_relu(x, "postnorm", relu=last_relu, numerics=numerics)
  end_points["pre_logits"] = keras.layers.GlobalAveragePooling2D(
      name="pre_logits")(x)
  return layers.end_points_model(
      images, end_points, num_classes, weight_decay, name, numerics)


BACKBONES.register("resnet50_v1")(functools.partial(resnet50, version=1))
BACKBONES.register("resnet50_v2")(functools.partial(resnet50, version=2))
