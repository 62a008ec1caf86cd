"""The backbone value, its builder and the registry of architectures.

`Backbone` is what configs and callers choose (architecture, width, "(-)"
variant, weight decay, BatchNorm and kernel initializer settings, family
options): everything that decides what the network computes besides its
weights, so that the value alone (recorded in task.json and the export
metadata) rebuilds it. The task that owns it adds what it decides itself
(head size, patch mode, input size) when it calls `build`. The command lines
fill it from the `backbone.*` gin bindings (`tfrevisit.gin_config`); nothing
under `tfrevisit.models` reads gin.
"""
import dataclasses
from typing import Any, Dict, Mapping, Optional, Sequence

import keras

from tfrevisit.models import layers
from tfrevisit.registry import Registry

# Entries take (filters_factor, last_relu, patch_mode, num_classes,
# weight_decay, input_shape, numerics (a `layers.Numerics`), **family
# options); an architecture whose input size is fixed at build time registers
# with `fixed_input_size=True`, one whose computation changed at a layout
# version with `layout_changes={version: what}`.
BACKBONES = Registry("backbone")

# The version of what the backbones compute from their weights, recorded with
# every run and export: 1 before they computed exactly what the paper's release
# computed, 2 since (RevNet's channel padding, VGG's pools and end points).
LAYOUT = 2


@dataclasses.dataclass(frozen=True)
class Backbone:
  """Which backbone a task trains: a frozen value, stored in the metadata.

  Attributes:
    name: one of `BACKBONES.names()`: resnet50_v1, resnet50_v2, revnet50, vgg19.
    filters_factor: widening factor k >= 1 (an integer); k=4 is the usual
      ResNet50, k=8 the usual VGG19. `pre_logits` has 512k dims.
    last_relu: False builds the paper's "(-)" variants, whose last BatchNorm is
      not followed by a ReLU; only resnet50_v2 and revnet50 have one.
    weight_decay: kernel L2 decay: adds `weight_decay * tf.nn.l2_loss(kernel)` =
      `weight_decay / 2 * sum(kernel**2)` per decayed kernel to `model.losses`.
      None means the family default: 1e-4 for ResNet/RevNet, 5e-4 for VGG.
    options: family-specific options, forwarded to the family's builder:
      revnet50's `memory_efficient` (default True: reversible backprop). An
      option the family lacks raises ValueError when building.
    batch_norm_momentum: every BatchNorm's moving-average momentum (the
      release's 0.99; 0.9 is the usual TF2 ResNet value).
    batch_norm_epsilon: every BatchNorm's epsilon (the release's 1e-3; TF2
      ResNets use 1e-5).
    kernel_initializer: Keras name of the initializer of every conv and dense
      kernel (the release's "glorot_uniform"; "he_normal" is the textbook
      ResNet init).
  Records written before the last three existed lack them: the defaults are
  what those runs used unless they bound gin's old `batch_norm.*` or
  `kernel_initializer.name`.
  """
  name: str
  filters_factor: int
  last_relu: bool = True
  weight_decay: Optional[float] = None
  options: Mapping[str, Any] = dataclasses.field(default_factory=dict)
  batch_norm_momentum: float = layers.BATCH_NORM_MOMENTUM
  batch_norm_epsilon: float = layers.BATCH_NORM_EPSILON
  kernel_initializer: str = layers.KERNEL_INITIALIZER

  def __post_init__(self):
    BACKBONES.get(self.name)  # Fails on an unknown name, listing the choices.
    if self.filters_factor < 1 or int(self.filters_factor) != self.filters_factor:
      raise ValueError(
          f"filters_factor must be an integer >= 1 (k=4 is the usual ResNet50), "
          f"got {self.filters_factor!r}.")
    object.__setattr__(self, "filters_factor", int(self.filters_factor))
    object.__setattr__(self, "options", dict(self.options))
    if not 0 <= self.batch_norm_momentum < 1:
      raise ValueError(
          f"batch_norm_momentum must be in [0, 1) (the release's is 0.99), "
          f"got {self.batch_norm_momentum!r}.")
    if not self.batch_norm_epsilon > 0:
      raise ValueError(
          f"batch_norm_epsilon must be > 0 (the release's is 1e-3), got "
          f"{self.batch_norm_epsilon!r}.")
    object.__setattr__(self, "batch_norm_momentum",
                       float(self.batch_norm_momentum))
    object.__setattr__(self, "batch_norm_epsilon",
                       float(self.batch_norm_epsilon))

  @property
  def numerics(self) -> layers.Numerics:
    """The BatchNorm and initializer settings, as the layers take them."""
    return layers.Numerics(self.batch_norm_momentum, self.batch_norm_epsilon,
                           self.kernel_initializer)

  @property
  def layout(self) -> int:
    """The layout version this code builds (`LAYOUT`)."""
    return LAYOUT

  def to_dict(self) -> Dict[str, Any]:
    """A JSON-serialisable dict; `Backbone(**d)` rebuilds the value."""
    return dataclasses.asdict(self)

  def build(self, *, num_classes: Optional[int] = None, patch_mode: bool = False,
            input_shape: Sequence[Optional[int]] = (None, None, 3),
            input_size: Optional[int] = None) -> keras.Model:
    """Builds the backbone as a Keras model of named end points.

    Args:
      num_classes: if set, adds a float32 dense head on `pre_logits`, end point
        `logits` [B, num_classes].
      patch_mode: the stride variant of the patch tasks (jigsaw, relative patch
        location) on 64x64 patches: root stride 1 and stage strides (1, 2, 2, 1).
      input_shape: (H, W, 3) of the float32 images; ResNet/RevNet accept None
        for H and W, VGG needs them fixed (fc6 covers the last feature map).
      input_size: side of the training images, in pixels: fills an open H, W of
        `input_shape` for architectures registered with `fixed_input_size`
        (VGG); others keep their input size dynamic.

    Returns:
      A functional keras.Model mapping images [B, H, W, 3] to a dict of end
      points (see the family modules for names and shapes). Call it with
      `training=True/False` to choose BatchNorm's mode.

    Raises:
      ValueError: for last_relu=False on an architecture without a "(-)"
        variant, an option the family lacks, or an unknown
        kernel_initializer.
    """
    fixed_size = BACKBONES.properties(self.name).get("fixed_input_size", False)
    if input_size is not None and fixed_size and None in input_shape[:2]:
      input_shape = (input_size, input_size, input_shape[2])
    return BACKBONES.build(
        self.name, filters_factor=self.filters_factor, last_relu=self.last_relu,
        patch_mode=patch_mode, num_classes=num_classes,
        weight_decay=self.weight_decay, input_shape=tuple(input_shape),
        numerics=self.numerics, **self.options)


def backbone(name: str, *, filters_factor: int, last_relu: bool = True,
             patch_mode: bool = False, num_classes: Optional[int] = None,
             weight_decay: Optional[float] = None,
             input_shape: Sequence[Optional[int]] = (None, None, 3),
             input_size: Optional[int] = None,
             batch_norm_momentum: float = layers.BATCH_NORM_MOMENTUM,
             batch_norm_epsilon: float = layers.BATCH_NORM_EPSILON,
             kernel_initializer: str = layers.KERNEL_INITIALIZER,
             **options) -> keras.Model:
  """Builds one of the paper's backbones: `Backbone(...).build(...)` in one call.

  Arguments are those of `Backbone` and `Backbone.build`; `**options` are the
  family's own (revnet50's `memory_efficient`).

  Raises:
    ValueError: for an unknown name, filters_factor < 1 or not an integer,
      bad BatchNorm settings, an unknown kernel_initializer (when building),
      last_relu=False on an architecture without a "(-)" variant, or an
      option the family lacks.
  """
  return Backbone(name, filters_factor, last_relu, weight_decay, options,
                  batch_norm_momentum, batch_norm_epsilon,
                  kernel_initializer).build(
      num_classes=num_classes, patch_mode=patch_mode, input_shape=input_shape,
      input_size=input_size)


def check_layout(name: str, layout: int) -> None:
  """Raises unless weights trained under `layout` compute the same in today's
  backbone `name`.

  Raises:
    ValueError: `name`'s computation changed after `layout`; the message says
      what changed and what to do.
  """
  changes = [what for version, what in sorted(
      BACKBONES.properties(name).get("layout_changes", {}).items())
             if version > layout]
  if changes:
    raise ValueError(
        f"This {name} was trained with backbone layout {layout}; layout "
        f"{LAYOUT} (the release's) changed it ({'; '.join(changes)}), so its "
        "checkpoints would load into a different network. Its exports "
        "(SavedModel, encoder.keras) still load and run as before; to resume "
        "or re-export the run use tfrevisit at git commit caca7ee (layout 1), "
        "or train it again.")


def require_last_relu(name: str, last_relu: bool):
  """Raises for last_relu=False on an architecture that always ends in ReLU."""
  if not last_relu:
    raise ValueError(
        f"{name} always ends in a ReLU; last_relu=False (the paper's \"(-)\" "
        f"variant) exists only for resnet50_v2 and revnet50. Use last_relu=True "
        f"or one of those.")
