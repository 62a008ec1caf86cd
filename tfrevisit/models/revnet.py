"""RevNet50: reversible ResNet50 without the G function, widening factor k.

Each reversible unit splits its channels into halves x1, x2 and computes
y1 = x1 + F(x2), y2 = x2, output concat(y2, y1); F is a pre-activation
bottleneck without shortcut. The unit is exactly invertible (x2 = y2,
x1 = y1 - F(y2)), which is what memory-efficient backprop builds on.

End points for images [B, H, W, 3] (patch mode as in ResNet: H/2, H/2, H/4, H/8,
H/8 for after_root, block1..block4):
  after_root  [B, H/4,  W/4,  64k]  7x7 conv (no BN, no weight decay), max-pool
  block1      [B, H/4,  W/4,  64k]
  block2      [B, H/8,  W/8,  128k]  each later stage starts with average pooling
  block3      [B, H/16, W/16, 256k]  (stage stride) and zero channel padding
  block4      [B, H/32, W/32, 512k]  stage output, before the final BN
  pre_logits  [B, 512k]              final BN, ReLU unless "(-)", average pool
  logits      [B, num_classes]       only if num_classes is set
"""
from typing import Optional

import keras

from tfrevisit.models import layers
from tfrevisit.models.factory import BACKBONES
from tfrevisit.models.resnet import DEFAULT_WEIGHT_DECAY, UNITS_PER_STAGE


@keras.saving.register_keras_serializable(package="tfrevisit")
class ReversibleUnit(keras.layers.Layer):
  """One reversible unit: [B, H, W, C] -> [B, H, W, C], C even.

  F (the `residual_layers`) is BN-ReLU-1x1(C/8), BN-ReLU-3x3(C/8),
  BN-ReLU-1x1(C/2) on the second half of the channels.
  """

  def __init__(self, weight_decay: Optional[float], **kwargs):
    super().__init__(**kwargs)
    self.weight_decay = weight_decay
    self.residual_layers = []

  def build(self, input_shape):
    half = input_shape[-1] // 2
    for index, filters, kernel_size in ((1, half // 4, 1), (2, half // 4, 3),
                                        (3, half, 1)):
      self.residual_layers += [
          layers.batch_norm(f"bn{index}", dtype=self.dtype_policy),
          keras.layers.ReLU(name=f"relu{index}", dtype=self.dtype_policy),
          layers.conv2d(filters, kernel_size, 1, self.weight_decay,
                        f"conv{index}", dtype=self.dtype_policy)]
    x_shape = (*input_shape[:-1], half)
    for layer in self.residual_layers:
      layer.build(x_shape)
      x_shape = layer.compute_output_shape(x_shape)

  def residual(self, x, training=None):
    """F: [B, H, W, C/2] -> [B, H, W, C/2]."""
    for layer in self.residual_layers:
      if isinstance(layer, keras.layers.BatchNormalization):
        x = layer(x, training=training)
      else:
        x = layer(x)
    return x

  def call(self, x, training=None):
    x1, x2 = keras.ops.split(x, 2, axis=-1)
    y1 = x1 + self.residual(x2, training)
    return keras.ops.concatenate([x2, y1], axis=-1)

  def inverse(self, y, training=None):
    """Recovers the unit's input x from its output y = self(x)."""
    y2, y1 = keras.ops.split(y, 2, axis=-1)
    x1 = y1 - self.residual(y2, training)
    return keras.ops.concatenate([x1, y2], axis=-1)

  def compute_output_shape(self, input_shape):
    return input_shape

  def get_config(self):
    return {**super().get_config(), "weight_decay": self.weight_decay}


@keras.saving.register_keras_serializable(package="tfrevisit")
class ReversibleStage(keras.layers.Layer):
  """A sequence of `num_units` reversible units: [B, H, W, C] -> [B, H, W, C]."""

  def __init__(self, num_units: int, weight_decay: Optional[float], **kwargs):
    super().__init__(**kwargs)
    self.num_units = num_units
    self.weight_decay = weight_decay
    self.units = [
        ReversibleUnit(weight_decay, dtype=self.dtype_policy,
                       name=f"unit{index + 1}")
        for index in range(num_units)]

  def build(self, input_shape):
    for unit in self.units:
      unit.build(input_shape)

  def call(self, x, training=None):
    for unit in self.units:
      x = unit(x, training=training)
    return x

  def inverse(self, y, training=None):
    """Recovers the stage's input x from its output y = self(x)."""
    for unit in reversed(self.units):
      y = unit.inverse(y, training=training)
    return y

  def compute_output_shape(self, input_shape):
    return input_shape

  def get_config(self):
    return {**super().get_config(), "num_units": self.num_units,
            "weight_decay": self.weight_decay}


@BACKBONES.register("revnet50")
def revnet50(*, filters_factor: int, last_relu: bool, patch_mode: bool,
             num_classes, weight_decay, input_shape) -> keras.Model:
  """Builds RevNet50; arguments as in `tfrevisit.models.backbone`."""
  if weight_decay is None:
    weight_decay = DEFAULT_WEIGHT_DECAY
  root_stride, stage_strides = layers.strides(patch_mode)

  images = keras.Input(input_shape, name="images")
  x = layers.conv2d_fixed_padding(
      images, 64 * filters_factor, 7, root_stride, None, "root_conv")
  x = layers.root_max_pool(x)
  end_points = {"after_root": x}
  for stage, (num_units, stride) in enumerate(
      zip(UNITS_PER_STAGE, stage_strides), start=1):
    if stage > 1:
      if stride > 1:
        x = keras.layers.AveragePooling2D(
            stride, stride, padding="same", name=f"block{stage}_pool")(x)
      x = layers.ZeroPadChannels(x.shape[-1], name=f"block{stage}_pad")(x)
    x = ReversibleStage(num_units, weight_decay, name=f"block{stage}")(x)
    end_points[f"block{stage}"] = x
  x = layers.batch_norm_relu(x, "postnorm", relu=last_relu)
  end_points["pre_logits"] = keras.layers.GlobalAveragePooling2D(
      name="pre_logits")(x)
  return layers.end_points_model(
      images, end_points, num_classes, weight_decay, "revnet50")
