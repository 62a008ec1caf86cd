"""The paper's preprocessing recipes as spec strings (reference, "Pretext tasks"
and "Evaluation of a frozen representation"), parametrised by size; the
defaults are the paper's ImageNet sizes.

Training recipes run with `training=True`, evaluation recipes with
`training=False`. Where an op commutes with a crop it runs after it (cheaper,
same distribution): e.g. gray-scaling after the crops.
"""


def rotation(image_size: int = 224) -> str:
  """Inception crop, flip, colour, [-1, 1]; then the 4 rotations:
  image [4, size, size, 3], label [4]."""
  return f"inception_preprocess({image_size})|rotate"


def supervised(image_size: int = 224) -> str:
  """[size, size, 3] in [-1, 1]."""
  return f"inception_preprocess({image_size})"


def exemplar(image_size: int = 224, num_crops: int = 8) -> str:
  """Grayscale w.p. 0.66 (one draw per image), then `num_crops` crops each
  with its own Inception distortion (crop, flip, brightness, saturation),
  standardized per crop: [num_crops, size, size, 3]."""
  return (f"to_gray(p=0.66)|inception_patches({num_crops}, {image_size})"
          "|standardization")


def patches(patch_size: int = 64, patch_jitter: int = 21) -> str:
  """Relative patch location and jigsaw: resize to 292, random crop 255,
  grayscale w.p. 0.66, 3x3 cells of 85 with a random 64x64 patch each,
  standardized per patch: [9, 64, 64, 3]. Other patch sizes scale alike."""
  grid = 3 * (patch_size + patch_jitter)
  return (f"resize({round(grid * 292 / 255)})|crop({grid})|to_gray(p=0.66)"
          f"|crop_patches(3, {patch_jitter})|standardization")


def eval_image(image_size: int = 224, value_op: str = "value_range(-1, 1)") -> str:
  """Image models: smaller side to 8/7 of the crop (256 for 224), central
  crop, then the value scaling the model was trained with."""
  return f"resize_small({image_size * 8 // 7})|crop({image_size})|{value_op}"


def eval_patches(patch_size: int = 64) -> str:
  """Patch models: smaller side 224, central 192, 3x3 patches of 64 without
  jitter, standardized: [9, 64, 64, 3]."""
  return (f"resize_small({patch_size * 7 // 2})|crop({3 * patch_size})"
          "|crop_patches(3, 0)|standardization")
