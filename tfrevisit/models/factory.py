"""The public backbone constructor and the registry of architectures."""
import inspect
from typing import Optional, Sequence

import gin
import keras

from tfrevisit.registry import Registry

BACKBONES = Registry("backbone")
# Architectures whose input size is fixed at build time.
FIXED_INPUT_SIZE = ("vgg19",)


@gin.configurable("backbone")
def backbone(name: str, *, filters_factor: int, last_relu: bool = True,
             patch_mode: bool = False, num_classes: Optional[int] = None,
             weight_decay: Optional[float] = None,
             input_shape: Sequence[Optional[int]] = (None, None, 3),
             input_size: Optional[int] = None,
             **kwargs) -> keras.Model:
  """Builds one of the paper's backbones as a Keras model of named end points.

  Args:
    name: one of `BACKBONES.names()`: resnet50_v1, resnet50_v2, revnet50, vgg19.
    filters_factor: widening factor k >= 1 (an integer); k=4 is the usual
      ResNet50, k=8 the usual VGG19. `pre_logits` has 512k dims.
    last_relu: False builds the paper's "(-)" variants, whose last BatchNorm is not
      followed by a ReLU; only resnet50_v2 and revnet50 have one.
    patch_mode: the stride variant of the patch tasks (jigsaw, relative patch
      location) on 64x64 patches: root stride 1 and stage strides (1, 2, 2, 1).
    num_classes: if set, adds a float32 dense head on `pre_logits`, end point
      `logits` [B, num_classes].
    weight_decay: kernel L2 decay: adds `weight_decay * tf.nn.l2_loss(kernel)` =
      `weight_decay / 2 * sum(kernel**2)` per decayed kernel to `model.losses`.
      None means the family default: 1e-4 for ResNet/RevNet, 5e-4 for VGG.
    input_shape: (H, W, 3) of the float32 images; ResNet/RevNet accept None for
      H and W, VGG needs them fixed (fc6 covers the last feature map).
    input_size: side of the training images, in pixels: fills an open H, W
      of `input_shape` for architectures that need a fixed size (VGG); others
      keep their input size dynamic.
    **kwargs: family-specific options, forwarded to the family's builder:
      revnet50's `memory_efficient` (default True: reversible backprop). An
      option the family lacks raises ValueError.

  Returns:
    A functional keras.Model mapping images [B, H, W, 3] to a dict of end points
    (see the family modules for names and shapes). Call it with
    `training=True/False` to choose BatchNorm's mode.

  Raises:
    ValueError: for an unknown name, filters_factor < 1 or not an integer, or
      last_relu=False on an architecture without a "(-)" variant.
  """
  build = BACKBONES.get(name)
  if filters_factor < 1 or int(filters_factor) != filters_factor:
    raise ValueError(
        f"filters_factor must be an integer >= 1 (k=4 is the usual ResNet50), "
        f"got {filters_factor!r}.")
  if input_size is not None and name in FIXED_INPUT_SIZE and None in input_shape[:2]:
    input_shape = (input_size, input_size, input_shape[2])
  extra = set(kwargs) - set(inspect.signature(build).parameters)
  if extra:
    raise ValueError(f"{name} has no option {sorted(extra)}; its options: "
                     f"{inspect.signature(build)}.")
  return build(filters_factor=int(filters_factor), last_relu=last_relu,
               patch_mode=patch_mode, num_classes=num_classes,
               weight_decay=weight_decay, input_shape=tuple(input_shape),
               **kwargs)


def require_last_relu(name: str, last_relu: bool):
  """Raises for last_relu=False on an architecture that always ends in ReLU."""
  if not last_relu:
    raise ValueError(
        f"{name} always ends in a ReLU; last_relu=False (the paper's \"(-)\" "
        f"variant) exists only for resnet50_v2 and revnet50. Use last_relu=True "
        f"or one of those.")
