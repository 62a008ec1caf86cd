"""RevNet50: reversible ResNet50 without the G function, widening factor k.

Each reversible unit splits its channels into halves x1, x2 and computes
y1 = x1 + F(x2), y2 = x2, output concat(y2, y1); F is a pre-activation
bottleneck without shortcut. The unit is exactly invertible (x2 = y2,
x1 = y1 - F(y2)), which is what memory-efficient backprop builds on.

Memory-efficient backprop (Gomez et al. 2017, "The Reversible Residual
Network"): in training, a `ReversibleStage` keeps only its input and output for
the backward pass, which walks the units in reverse, reconstructing each
unit's input from its output and recomputing F under a local tape; so the
activation memory of a stage does not grow with its number of units. The
non-reversible root (`RevNetRoot`), whose conv output is the largest tensor of
the network (4x any block1 tensor), instead computes its forward pass in batch
chunks, keeping only the pooled output, and recomputes each chunk's conv
output in the backward pass. The model, its weights and its outputs are the
same with and without it.

End points for images [B, H, W, 3] (patch mode as in ResNet: H/2, H/2, H/4, H/8,
H/8 for after_root, block1..block4):
  after_root  [B, H/4,  W/4,  64k]  7x7 conv (no BN, no weight decay), max-pool
  block1      [B, H/4,  W/4,  64k]
  block2      [B, H/8,  W/8,  128k]  each later stage starts with average pooling
  block3      [B, H/16, W/16, 256k]  (stage stride) and zero channel padding
                                     (C/2 zeros before and C/2 after C channels)
  block4      [B, H/32, W/32, 512k]  stage output, before the final BN
  pre_logits  [B, 512k]              final BN, ReLU unless "(-)", average pool
  logits      [B, num_classes]       only if num_classes is set
"""
from typing import Optional, Sequence

import keras
import tensorflow as tf

from tfrevisit.models import layers
from tfrevisit.models.factory import BACKBONES
from tfrevisit.models.resnet import DEFAULT_WEIGHT_DECAY, UNITS_PER_STAGE

ROOT_KERNEL_SIZE = 7
DEFAULT_ROOT_CHUNKS = 4


@keras.saving.register_keras_serializable(package="tfrevisit")
class ReversibleUnit(keras.layers.Layer):
  """One reversible unit: [B, H, W, C] -> [B, H, W, C], C even.

  F (the `residual_layers`) is BN-ReLU-1x1(C/8), BN-ReLU-3x3(C/8),
  BN-ReLU-1x1(C/2) on the second half of the channels; `numerics` sets their
  BatchNorms and kernel initializer (a `layers.Numerics`, or its dict in
  configs; None: the defaults, as in files saved before configs recorded it).
  """

  def __init__(self, weight_decay: Optional[float], numerics=None, **kwargs):
    super().__init__(**kwargs)
    self.weight_decay = weight_decay
    self.numerics = layers.as_numerics(numerics)
    self.residual_layers = []

  def build(self, input_shape):
    half = input_shape[-1] // 2
    for index, filters, kernel_size in ((1, half // 4, 1), (2, half // 4, 3),
                                        (3, half, 1)):
      self.residual_layers += [
          layers.batch_norm(f"bn{index}", dtype=self.dtype_policy,
                            numerics=self.numerics),
          keras.layers.ReLU(name=f"relu{index}", dtype=self.dtype_policy),
          layers.conv2d(filters, kernel_size, 1, self.weight_decay,
                        f"conv{index}", dtype=self.dtype_policy,
                        numerics=self.numerics)]
    x_shape = (*input_shape[:-1], half)
    for layer in self.residual_layers:
      # Also an attribute: tf.train.Checkpoint does not follow Keras' list
      # tracking, so layers held only in a list are left out of checkpoints.
      setattr(self, layer.name, layer)
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

  def backward(self, x2, dy, variables: Sequence[tf.Variable]):
    """Backpropagates dy through the unit, recomputing F from x2.

    F is recomputed in training mode (BatchNorm on the batch statistics of x2,
    as in the forward pass) inside a `keras.StatelessScope`, which discards the
    moving-average updates: the forward pass made them already.

    Args:
      x2: the second half [B, H, W, C/2] of the unit's input in a training-mode
        call; it is also the first half of the unit's output.
      dy: the gradient of the loss w.r.t. the unit's output, [B, H, W, C].
      variables: the variables to differentiate, as `tf.custom_gradient` lists
        them; they may include other units' variables.

    Returns:
      (residual, dx, variable_grads): F(x2) [B, H, W, C/2], the gradient
      w.r.t. the unit's input [B, H, W, C], and one gradient per variable (None
      for the variables that F does not read).
    """
    # Without this dependency the executor would run every unit's recomputation
    # as soon as the forward pass ends and keep all of it until the backward.
    with tf.control_dependencies([dy]):
      x2 = tf.identity(x2)
    dy2, dy1 = keras.ops.split(dy, 2, axis=-1)
    with tf.GradientTape() as tape:
      tape.watch(x2)
      with keras.StatelessScope():
        residual = self.residual(x2, training=True)
    dx2_through_f, *variable_grads = tape.gradient(
        residual, [x2, *variables], output_gradients=dy1)
    dx = keras.ops.concatenate([dy1, dy2 + dx2_through_f], axis=-1)
    return residual, dx, variable_grads

  def compute_output_shape(self, input_shape):
    return input_shape

  def get_config(self):
    return {**super().get_config(), "weight_decay": self.weight_decay,
            "numerics": self.numerics.to_config()}


@keras.saving.register_keras_serializable(package="tfrevisit")
class ReversibleStage(keras.layers.Layer):
  """A sequence of `num_units` reversible units: [B, H, W, C] -> [B, H, W, C].

  With `memory_efficient`, a training-mode call keeps no activation inside the
  stage for the backward pass (see the module docstring); its outputs, and the
  BatchNorm moving averages (updated once, by the forward pass), are the same.
  Inference-mode calls are plain forward passes either way. `numerics` as in
  `ReversibleUnit`.
  """

  def __init__(self, num_units: int, weight_decay: Optional[float],
               memory_efficient: bool = True, numerics=None, **kwargs):
    super().__init__(**kwargs)
    self.num_units = num_units
    self.weight_decay = weight_decay
    self.memory_efficient = memory_efficient
    self.numerics = layers.as_numerics(numerics)
    self.units = [
        ReversibleUnit(weight_decay, self.numerics, dtype=self.dtype_policy,
                       name=f"unit{index + 1}")
        for index in range(num_units)]

  def build(self, input_shape):
    for unit in self.units:
      setattr(self, unit.name, unit)  # For checkpoints, see ReversibleUnit.
      unit.build(input_shape)

  def call(self, x, training=None):
    if training and self.memory_efficient:
      return self._reversible_forward(x)
    return self._forward(x, training)

  def _forward(self, x, training):
    for unit in self.units:
      x = unit(x, training=training)
    return x

  def _reversible_forward(self, x):
    """Training-mode forward pass whose gradient recomputes instead of storing."""

    @tf.custom_gradient
    def forward(x):
      y = self._forward(x, training=True)
      return y, lambda dy, variables: self._backward(x, y, dy, variables)

    return forward(x)

  def _backward(self, x, y, dy, variables):
    """The gradient of `_reversible_forward`, in `tf.custom_gradient` form.

    Walks the units in reverse; each unit's input is reconstructed from its
    output (x2 = y2, x1 = y1 - F(y2)), except the first unit's, which is the
    stage input x: reconstructing it would turn the exact zeros of a
    zero-padded half into rounding noise, which the BatchNorms of F (batch
    variance 0) amplify by 1/sqrt(epsilon) into the gradients.

    Args:
      x: the stage input [B, H, W, C].
      y: the stage output [B, H, W, C] of the training-mode forward pass.
      dy: the gradient of the loss w.r.t. y.
      variables: the variables the forward pass read.

    Returns:
      (dx, variable_grads), the latter aligned with `variables`.
    """
    variable_grads = [None] * len(variables)
    for unit in reversed(self.units[1:]):
      x2, y1 = keras.ops.split(y, 2, axis=-1)  # a unit's y2 is its x2
      residual, dy, unit_grads = unit.backward(x2, dy, variables)
      y = keras.ops.concatenate([y1 - residual, x2], axis=-1)
      variable_grads = _merge_grads(variable_grads, unit_grads)
    _, dy, unit_grads = self.units[0].backward(
        keras.ops.split(x, 2, axis=-1)[1], dy, variables)
    return dy, _merge_grads(variable_grads, unit_grads)

  def inverse(self, y, training=None):
    """Recovers the stage's input x from its output y = self(x)."""
    for unit in reversed(self.units):
      y = unit.inverse(y, training=training)
    return y

  def compute_output_shape(self, input_shape):
    return input_shape

  def get_config(self):
    return {**super().get_config(), "num_units": self.num_units,
            "weight_decay": self.weight_decay,
            "memory_efficient": self.memory_efficient,
            "numerics": self.numerics.to_config()}


def _merge_grads(totals, grads):
  """Fills the None entries of `totals` from `grads` (one unit reads a variable)."""
  return [total if grad is None else grad for total, grad in zip(totals, grads)]


@keras.saving.register_keras_serializable(package="tfrevisit")
class RevNetRoot(keras.layers.Layer):
  """RevNet's non-reversible root: images [B, H, W, C] -> [B, H', W', filters].

  A 7x7 conv with stride `stride` (TF-slim fixed padding: 3 zero pixels on
  each side, then VALID; no bias, no weight decay, the kernel initializer of
  `numerics`, as in `ReversibleUnit`),
  then zero padding by 1 and the 3x3, stride-2, VALID max-pool, as
  `layers.conv2d_fixed_padding` and
  `layers.root_max_pool` build it. H' = ceil(ceil(H / stride) / 2), W' alike.

  With `memory_efficient`, a training-mode call keeps no conv output for the
  backward pass. Its forward pass runs conv and pool on `num_chunks`
  consecutive batch chunks, one after another, keeping only the pooled output
  (a quarter of the conv output's size); its gradient recomputes each
  chunk's conv output from the chunk's images and backpropagates through pool
  and conv, again one chunk at a time, summing the kernel gradient. So at most
  one chunk's conv output and its gradient, each 1/num_chunks of the batch's,
  are alive at a time, instead of both for the whole batch. The cost is one
  more conv per step. Outputs and gradients are the same as without it, up to
  float rounding; inference-mode calls are plain forward passes either way.

  The default of 4 chunks cuts those conv-sized buffers to a quarter (enough
  to halve RevNet50's training-step memory, see `tfrevisit.bench.revnet_memory`)
  while chunks of a usual per-replica batch (16 images or more) keep 4 or more
  images each, for an efficient conv. A batch of static size smaller than
  `num_chunks` runs in one chunk per image.
  """

  def __init__(self, filters: int, stride: int, memory_efficient: bool = True,
               num_chunks: int = DEFAULT_ROOT_CHUNKS, numerics=None, **kwargs):
    super().__init__(**kwargs)
    if num_chunks < 1 or int(num_chunks) != num_chunks:
      raise ValueError(
          f"num_chunks must be an integer >= 1, got {num_chunks!r}.")
    self.filters = filters
    self.stride = stride
    self.memory_efficient = memory_efficient
    self.num_chunks = int(num_chunks)
    self.numerics = layers.as_numerics(numerics)

  def build(self, input_shape):
    self.kernel = self.add_weight(
        name="kernel",
        shape=(ROOT_KERNEL_SIZE, ROOT_KERNEL_SIZE, input_shape[-1],
               self.filters),
        initializer=layers.kernel_initializer(self.numerics))

  def call(self, x, training=None):
    kernel = keras.ops.cast(self.kernel, self.compute_dtype)
    if training and self.memory_efficient:
      return self._chunked_root(x, kernel)
    return self._root(x, kernel)

  def _root(self, x, kernel):
    """Conv and pool of images x [b, H, W, C] with `kernel` of x's dtype."""
    pad = ROOT_KERNEL_SIZE // 2
    x = tf.pad(x, [[0, 0], [pad, pad], [pad, pad], [0, 0]])
    x = tf.nn.conv2d(x, kernel, self.stride, "VALID")
    x = tf.pad(x, [[0, 0], [1, 1], [1, 1], [0, 0]])
    return tf.nn.max_pool2d(x, 3, 2, "VALID")

  def _chunk_bounds(self, x):
    """[(start, stop)] of the batch chunks of x: consecutive, sizes differing
    by at most 1; Python ints if x's batch size is static (then no chunk is
    empty), else scalar tensors (then a batch smaller than `num_chunks` gives
    empty chunks, see `_if_nonempty`)."""
    batch_size = x.shape[0]
    if batch_size is None:
      batch_size, num_chunks = tf.shape(x)[0], self.num_chunks
    else:
      num_chunks = max(1, min(self.num_chunks, batch_size))
    return [(index * batch_size // num_chunks,
             (index + 1) * batch_size // num_chunks)
            for index in range(num_chunks)]

  def _chunked_root(self, x, kernel):
    """Training-mode root whose gradient recomputes instead of storing."""
    bounds = self._chunk_bounds(x)

    @tf.custom_gradient
    def root(x, kernel):
      # stop_gradient keeps an eager tape from recording (and so keeping) the
      # chunks' conv outputs; tf.custom_gradient records only root itself.
      x_const, kernel_const = tf.stop_gradient(x), tf.stop_gradient(kernel)
      outputs = []
      for start, stop in bounds:
        with tf.control_dependencies(outputs[-1:]):  # one chunk at a time
          chunk = tf.identity(x_const[start:stop])
        outputs.append(_if_nonempty(
            chunk, lambda chunk=chunk: self._root(chunk, kernel_const),
            lambda chunk=chunk: self._empty_output(chunk)))
      return (tf.concat(outputs, axis=0),
              lambda dy: self._chunked_backward(x, kernel, dy, bounds))

    return root(x, kernel)

  def _chunked_backward(self, x, kernel, dy, bounds):
    """The gradient of `_chunked_root`, in `tf.custom_gradient` form.

    Args:
      x: the images [B, H, W, C].
      kernel: the conv kernel [7, 7, C, filters], x's dtype.
      dy: the gradient of the loss w.r.t. the root's output
        [B, H', W', filters].
      bounds: the batch chunks, as `_chunk_bounds` gives them.

    Returns:
      (dx, dkernel): [B, H, W, C] and [7, 7, C, filters], x's dtype; the kernel
      gradient is summed over the chunks in float32. Under `tf.function` an
      unused dx is pruned: no chunk waits for another's dx.
    """
    dxs = []
    dkernel = tf.zeros(kernel.shape, tf.float32)
    # Without the dependency on dy the executor would recompute the first chunk
    # as soon as the forward pass ends; each later chunk waits for the kernel
    # gradient of the one before, so one chunk's conv output lives at a time.
    for index, (start, stop) in enumerate(bounds):
      with tf.control_dependencies([dkernel if index else dy]):
        chunk = tf.identity(x[start:stop])
      dx, dkernel_chunk = _if_nonempty(
          chunk,
          lambda chunk=chunk, dy=dy[start:stop]: self._chunk_grads(
              chunk, kernel, dy),
          lambda chunk=chunk: (tf.zeros_like(chunk), tf.zeros_like(kernel)))
      dxs.append(dx)
      dkernel += tf.cast(dkernel_chunk, tf.float32)
    return tf.concat(dxs, axis=0), tf.cast(dkernel, kernel.dtype)

  def _chunk_grads(self, chunk, kernel, dy):
    """(d chunk, d kernel) of the root's output on `chunk`, given its gradient
    dy; recomputes the chunk's conv output."""
    with tf.GradientTape() as tape:
      tape.watch([chunk, kernel])
      output = self._root(chunk, kernel)
    return tuple(tape.gradient(output, [chunk, kernel], output_gradients=dy))

  def _empty_output(self, images):
    """The root's output [0, H', W', filters] for an empty batch of images."""
    height, width = tf.unstack(tf.shape(images)[1:3])
    size = lambda side: _ceil_div(_ceil_div(side, self.stride), 2)
    return tf.zeros([0, size(height), size(width), self.filters], images.dtype)

  def compute_output_shape(self, input_shape):
    def size(side):
      if side is None:
        return None
      return _ceil_div(_ceil_div(side, self.stride), 2)

    return (input_shape[0], size(input_shape[1]), size(input_shape[2]),
            self.filters)

  def get_config(self):
    return {**super().get_config(), "filters": self.filters,
            "stride": self.stride, "memory_efficient": self.memory_efficient,
            "num_chunks": self.num_chunks, "numerics": self.numerics.to_config()}


def _ceil_div(a: int, b: int) -> int:
  return -(-a // b)


def _if_nonempty(chunk, true_fn, empty_fn):
  """true_fn() if the batch chunk has images, else empty_fn().

  Chunks with a static size are never empty (see `_chunk_bounds`). Chunks of a
  dynamic batch can be; running conv on one gives, on some CPUs' oneDNN
  kernels, an empty output with the input's channel count rather than the
  conv's, which breaks the concatenation of the chunks, so the conv never
  sees one.
  """
  if chunk.shape[0] is not None:
    return true_fn()
  return tf.cond(tf.shape(chunk)[0] > 0, true_fn, empty_fn)


@BACKBONES.register("revnet50", layout_changes={
    2: "stage transitions pad C/2 zero channels before and after the tensor, "
       "not after each half"})
def revnet50(*, filters_factor: int, last_relu: bool, patch_mode: bool,
             num_classes, weight_decay, input_shape, numerics: layers.Numerics,
             memory_efficient: bool = True) -> keras.Model:
  """Builds RevNet50; arguments as in `tfrevisit.models.backbone`.

  `memory_efficient` (`Backbone.options`; the binding
  `backbone.memory_efficient` on the command line) turns on reversible
  backprop in every stage (see `ReversibleStage`) and the chunked, recomputing
  root (see `RevNetRoot`); it changes the memory and time of a training step,
  not the model or its weights.
  """
  if weight_decay is None:
    weight_decay = DEFAULT_WEIGHT_DECAY
  root_stride, stage_strides = layers.strides(patch_mode)

  images = keras.Input(input_shape, name="images")
  x = RevNetRoot(64 * filters_factor, root_stride, memory_efficient,
                 numerics=numerics, name="root")(images)
  end_points = {"after_root": x}
  for stage, (num_units, stride) in enumerate(
      zip(UNITS_PER_STAGE, stage_strides), start=1):
    if stage > 1:
      if stride > 1:
        x = keras.layers.AveragePooling2D(
            stride, stride, padding="same", name=f"block{stage}_pool")(x)
      x = layers.ChannelZeroPadding(x.shape[-1], name=f"block{stage}_pad")(x)
    x = ReversibleStage(num_units, weight_decay, memory_efficient, numerics,
                        name=f"block{stage}")(x)
    end_points[f"block{stage}"] = x
  x = layers.batch_norm_relu(x, "postnorm", relu=last_relu, numerics=numerics)
  end_points["pre_logits"] = keras.layers.GlobalAveragePooling2D(
      name="pre_logits")(x)
  return layers.end_points_model(
      images, end_points, num_classes, weight_decay, "revnet50", numerics)
