"""Building blocks shared by the backbones: TF-slim style convs, BatchNorm, heads.

Conventions (all backbones), the defaults of the paper's release (TF1 layers):
  * Conv and dense kernels start from Glorot-uniform
    (`Numerics.kernel_initializer`; "he_normal" is the textbook ResNet init).
  * Convolutions have no bias. A strided conv pads
    the input explicitly and symmetrically ("fixed padding", total kernel-1,
    begin total//2) and then runs VALID, as TF-slim ResNets do; a stride-1 conv
    runs SAME.
  * Weight decay `wd` on a kernel `w` adds `wd * tf.nn.l2_loss(w)` =
    `wd / 2 * sum(w**2)` to the model's losses, i.e. `keras.regularizers.L2(wd/2)`.
  * BatchNorm uses momentum 0.99 and epsilon 1e-3 (`Numerics`; 0.9 and 1e-5
    are the usual TF2 ResNet values), and in training updates its moving
    variance with the unbiased batch variance, as TF1's fused BatchNorm did
    (`BatchNormalization`).
  * The root max-pool pads 1 zero pixel on each side, then runs 3x3 stride 2
    VALID (not SAME, which pads with -inf: they differ where a border
    window's values are all negative, as in ResNet v2's and RevNet's roots).
"""
import dataclasses
from typing import Any, Dict, Mapping, Optional, Sequence, Tuple, Union

import keras

BATCH_NORM_MOMENTUM = 0.99
BATCH_NORM_EPSILON = 1e-3
KERNEL_INITIALIZER = "glorot_uniform"

_ROOT_STRIDE = {False: 2, True: 1}
_STAGE_STRIDES = {False: (1, 2, 2, 2), True: (1, 2, 2, 1)}


def strides(patch_mode: bool) -> Tuple[int, Tuple[int, ...]]:
  """Returns (root conv stride, stage strides); patch tasks keep more resolution."""
  return _ROOT_STRIDE[patch_mode], _STAGE_STRIDES[patch_mode]


@dataclasses.dataclass(frozen=True)
class Numerics:
  """The settings, besides weights and weight decay, that shape what a
  backbone's layers compute and how they start; `models.Backbone` carries
  them (its fields of the same names) and the builders pass them down.

  Attributes:
    batch_norm_momentum: the moving averages' decay per training step.
    batch_norm_epsilon: added to the variance before its square root.
    kernel_initializer: Keras name of the initializer of every conv and dense
      kernel (its distribution, not a seed).
  """
  batch_norm_momentum: float = BATCH_NORM_MOMENTUM
  batch_norm_epsilon: float = BATCH_NORM_EPSILON
  kernel_initializer: str = KERNEL_INITIALIZER

  def to_config(self) -> Dict[str, Any]:
    """The dict a custom layer's `get_config` stores; `as_numerics` reads it."""
    return dataclasses.asdict(self)


DEFAULT_NUMERICS = Numerics()


def as_numerics(value: Union[Numerics, Mapping[str, Any], None]) -> Numerics:
  """`value` as `Numerics`: itself, or the dict of a layer config; None (a
  layer config written before layers recorded it) gives the defaults."""
  if value is None:
    return DEFAULT_NUMERICS
  return value if isinstance(value, Numerics) else Numerics(**value)


def kernel_initializer(numerics: Numerics = DEFAULT_NUMERICS
                       ) -> keras.initializers.Initializer:
  """The initialiser of every conv and dense kernel.

  Raises:
    ValueError: `numerics.kernel_initializer` names no Keras initializer.
  """
  # Made here, per layer, not checked earlier: each unseeded initializer
  # draws its seed when made, so an extra one would change every init.
  try:
    return keras.initializers.get(numerics.kernel_initializer)
  except ValueError as e:
    raise ValueError(
        "kernel_initializer must name a Keras initializer such as "
        "\"glorot_uniform\" (the release's) or \"he_normal\", got "
        f"{numerics.kernel_initializer!r}.") from e


def kernel_regularizer(weight_decay: Optional[float]):
  """`weight_decay * tf.nn.l2_loss(kernel)`, or None when there is no decay."""
  return keras.regularizers.L2(weight_decay / 2) if weight_decay else None


def conv2d(filters: int, kernel_size, stride: int,
           weight_decay: Optional[float], name: str,
           padding: Optional[str] = None, dtype=None,
           numerics: Numerics = DEFAULT_NUMERICS) -> keras.layers.Conv2D:
  """Bias-free conv layer.

  Args:
    filters: output channels.
    kernel_size: int or (height, width).
    stride: int.
    weight_decay: kernel decay (see module docstring); None or 0 for none.
    name: layer name.
    padding: None means SAME at stride 1 and VALID when strided (the caller pads,
      see `conv2d_fixed_padding`); or "valid"/"same" explicitly.
    dtype: dtype policy, for sub-layers of custom layers; None is the global one.
    numerics: its kernel initializer.
  """
  if padding is None:
    padding = "same" if stride == 1 else "valid"
  return keras.layers.Conv2D(
      filters, kernel_size, strides=stride, padding=padding, use_bias=False,
      kernel_initializer=kernel_initializer(numerics),
      kernel_regularizer=kernel_regularizer(weight_decay), name=name,
      dtype=dtype)


def conv2d_fixed_padding(x, filters: int, kernel_size: int, stride: int,
                         weight_decay: Optional[float], name: str,
                         numerics: Numerics = DEFAULT_NUMERICS):
  """Applies a conv with TF-slim's fixed padding to x [B, H, W, C].

  Returns [B, ceil(H/stride), ceil(W/stride), filters].
  """
  if stride > 1 and kernel_size > 1:
    total = kernel_size - 1
    begin = total // 2
    x = keras.layers.ZeroPadding2D(
        ((begin, total - begin), (begin, total - begin)), name=f"{name}_pad")(x)
  return conv2d(filters, kernel_size, stride, weight_decay, name,
                numerics=numerics)(x)


@keras.saving.register_keras_serializable(package="tfrevisit")
class BatchNormalization(keras.layers.BatchNormalization):
  """Keras BatchNorm with the moving-variance update of TF1's fused BatchNorm.

  A training call normalises with the batch mean and the biased batch
  variance, as Keras does, but updates `moving_variance` with the unbiased
  variance, variance * N / (N - 1), N = the number of values per channel in
  the batch (batch x height x width; 1 leaves the variance as it is). Under a
  distribution strategy each replica uses its own batch (N per replica).
  Inference calls, masked calls and renorm are Keras's.
  """

  def call(self, inputs, training=None, mask=None):
    if not (training and self.trainable) or mask is not None or self.renorm:
      return super().call(inputs, training=training, mask=mask)
    dtype = keras.backend.result_type(inputs.dtype, "float32")
    inputs = keras.ops.cast(inputs, dtype)
    rank = len(inputs.shape)
    axes = [i for i in range(rank) if i != self.axis % rank]
    mean, variance = keras.ops.moments(inputs, axes=axes)
    count = (keras.ops.cast(keras.ops.size(inputs), dtype)
             / inputs.shape[self.axis])  # values per channel
    unbiased = variance * count / keras.ops.maximum(count - 1.0, 1.0)
    for moving, batch in ((self.moving_mean, mean),
                          (self.moving_variance, unbiased)):
      moving.assign(keras.ops.cast(moving, dtype) * self.momentum
                    + batch * (1.0 - self.momentum))
    cast = lambda w: None if w is None else keras.ops.cast(w, dtype)
    outputs = keras.ops.batch_normalization(
        inputs, mean, variance, axis=self.axis, offset=cast(self.beta),
        scale=cast(self.gamma), epsilon=self.epsilon)
    return keras.ops.cast(outputs, self.compute_dtype)


def batch_norm(name: str, dtype=None, numerics: Numerics = DEFAULT_NUMERICS
               ) -> BatchNormalization:
  """A BatchNorm layer with `numerics`' momentum and epsilon."""
  return BatchNormalization(
      momentum=numerics.batch_norm_momentum,
      epsilon=numerics.batch_norm_epsilon, name=name, dtype=dtype)


def batch_norm_relu(x, name: str, relu: bool = True,
                    numerics: Numerics = DEFAULT_NUMERICS):
  """BatchNorm (with the model's `training` flag), then ReLU if `relu`."""
  x = batch_norm(f"{name}_bn", numerics=numerics)(x)
  return keras.layers.ReLU(name=f"{name}_relu")(x) if relu else x


def root_max_pool(x):
  """The ResNet root's max-pool: zero-pad 1, then 3x3 stride 2 VALID.

  [B, H, W, C] -> [B, ceil(H/2), ceil(W/2), C].
  """
  x = keras.layers.ZeroPadding2D(1, name="root_pool_pad")(x)
  return keras.layers.MaxPooling2D(3, 2, padding="valid", name="root_pool")(x)


def end_points_model(images, end_points: Dict[str, keras.KerasTensor],
                     num_classes: Optional[int], weight_decay: Optional[float],
                     name: str, numerics: Numerics = DEFAULT_NUMERICS
                     ) -> keras.Model:
  """Wraps the end points into a model, adding `logits` when num_classes is set.

  The head is a dense layer on `pre_logits` computed in float32, so that the
  logits stay float32 under a mixed-precision policy.
  """
  end_points = dict(end_points)
  if num_classes is not None:
    end_points["logits"] = keras.layers.Dense(
        num_classes, kernel_initializer=kernel_initializer(numerics),
        kernel_regularizer=kernel_regularizer(weight_decay),
        dtype="float32", name="logits")(end_points["pre_logits"])
  return keras.Model(images, end_points, name=name)


@keras.saving.register_keras_serializable(package="tfrevisit")
class ChannelZeroPadding(keras.layers.Layer):
  """Zero-pads the channel axis on both sides, as RevNet's stage transitions
  in the release: [B, H, W, C] -> [B, H, W, C + extra], `extra` even, with
  extra/2 zero channels before and extra/2 after x.

  With extra = C, the next reversible unit's halves are [0, first half of x]
  and [second half of x, 0]: both carry signal (appending all zeros at the
  end would feed its F nothing but zeros).
  """

  def __init__(self, extra_channels: int, **kwargs):
    super().__init__(**kwargs)
    if extra_channels % 2:
      raise ValueError(f"extra_channels must be even, got {extra_channels}.")
    self.extra_channels = extra_channels

  def call(self, x):
    side = self.extra_channels // 2
    return keras.ops.pad(x, [[0, 0], [0, 0], [0, 0], [side, side]])

  def compute_output_shape(self, input_shape: Sequence[Optional[int]]):
    return (*input_shape[:-1], input_shape[-1] + self.extra_channels)

  def get_config(self):
    return {**super().get_config(), "extra_channels": self.extra_channels}


@keras.saving.register_keras_serializable(package="tfrevisit")
class ZeroPadChannels(ChannelZeroPadding):
  """Backbone layout 1's RevNet channel padding, zeros after each half:
  [a, b] -> [a, 0, b, 0]. Only for encoder.keras files written before layout
  2, which load and compute as they did; models use `ChannelZeroPadding`."""

  def call(self, x):
    pad = [[0, 0], [0, 0], [0, 0], [0, self.extra_channels // 2]]
    return keras.ops.concatenate(
        [keras.ops.pad(half, pad) for half in keras.ops.split(x, 2, axis=-1)],
        axis=-1)
