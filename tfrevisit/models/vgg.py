"""VGG19 with BatchNorm (no dropout) and widening factor k (k=8: usual widths).

Five blocks of 3x3 conv-BN-ReLU (2x8k, 2x16k, 4x32k, 4x64k, 4x64k filters), each
followed by a 2x2 stride-2 VALID max-pool (sizes round down: 72 px gives 36,
18, 9, 4, 2). End points for images [B, H, W, 3], the release's (and its TF-Hub
modules'), each block's output before its max-pool:
  block1      [B, H,    W,    8k]
  block2      [B, H/2,  W/2,  16k]
  block3      [B, H/4,  W/4,  32k]
  block4      [B, H/8,  W/8,  64k]
  block5      [B, H/16, W/16, 64k]
  fc6         [B, 512k]             VALID conv covering all of the map left
                                    by the fifth pool (H/32), BN, ReLU
  pre_logits  [B, 512k]             fc7: 1x1 conv (dense), BN, ReLU
  logits      [B, num_classes]      only if num_classes is set
The release's fc6 and pre_logits are the same values as [B, 1, 1, 512k].

As in the paper's release, patch mode (the patch tasks' strides) changes
nothing in VGG: it keeps its five 2x2 pools, so on 64x64 patches fc6 covers
2x2. The weight decay default is the release's effective 1e-4 (a flag default
overrode the VGG code's 5e-4); `backbone.weight_decay = 5e-4` gives the VGG
paper's.
"""
import keras

from tfrevisit.models import layers
from tfrevisit.models.factory import BACKBONES, require_last_relu

DEFAULT_WEIGHT_DECAY = 1e-4
MIN_INPUT_SIZE = 32  # 2**5: five floor-halving pools
# (end point, number of convs, filters / k) per block.
_BLOCKS = (("block1", 2, 8), ("block2", 2, 16), ("block3", 4, 32),
           ("block4", 4, 64), ("block5", 4, 64))


def _check_input_size(input_shape):
  if None in input_shape[:2]:
    raise ValueError(
        "vgg19 needs a fixed input size because fc6 covers the whole last "
        f"feature map; got input_shape={input_shape}. Pass e.g. "
        "input_shape=(224, 224, 3), or (64, 64, 3) with patch_mode=True.")
  if min(input_shape[:2]) < MIN_INPUT_SIZE:
    raise ValueError(
        f"vgg19 needs inputs of at least {MIN_INPUT_SIZE}x{MIN_INPUT_SIZE} "
        "pixels (its five 2x2 VALID max-pools leave nothing of smaller ones); "
        f"got input_shape={input_shape}: raise the task's image or patch "
        "size.")


@BACKBONES.register("vgg19", fixed_input_size=True, layout_changes={
    2: "max-pools VALID, not SAME; end points block1..block5 before the pools, "
       "not conv1, block1..block4 after them"})
def vgg19(*, filters_factor: int, last_relu: bool, patch_mode: bool,
          num_classes, weight_decay, input_shape,
          numerics: layers.Numerics) -> keras.Model:
  """Builds VGG19-BN; arguments as in `tfrevisit.models.backbone`; patch_mode
  is accepted and, as in the release, changes nothing."""
  del patch_mode
  require_last_relu("vgg19", last_relu)
  _check_input_size(input_shape)
  if weight_decay is None:
    weight_decay = DEFAULT_WEIGHT_DECAY

  images = keras.Input(input_shape, name="images")
  x = images
  end_points = {}
  for name, num_convs, filters in _BLOCKS:
    for index in range(1, num_convs + 1):
      x = layers.conv2d(filters * filters_factor, 3, 1, weight_decay,
                        f"{name}_conv{index}", numerics=numerics)(x)
      x = layers.batch_norm_relu(x, f"{name}_conv{index}", numerics=numerics)
    end_points[name] = x
    x = keras.layers.MaxPooling2D(2, 2, padding="valid", name=f"{name}_pool")(x)

  x = layers.conv2d(512 * filters_factor, x.shape[1:3], 1, weight_decay, "fc6",
                    padding="valid", numerics=numerics)(x)
  x = layers.batch_norm_relu(x, "fc6", numerics=numerics)
  x = keras.layers.Flatten(name="fc6_flatten")(x)
  end_points["fc6"] = x
  x = keras.layers.Dense(
      512 * filters_factor, use_bias=False,
      kernel_initializer=layers.kernel_initializer(numerics),
      kernel_regularizer=layers.kernel_regularizer(weight_decay), name="fc7")(x)
  end_points["pre_logits"] = layers.batch_norm_relu(x, "fc7", numerics=numerics)
  return layers.end_points_model(
      images, end_points, num_classes, weight_decay, "vgg19", numerics)
