"""Tests of the preprocessing ops and spec parsing, against NumPy references."""
import numpy as np
import pytest
import tensorflow as tf

from tfrevisit.data import ops
from tfrevisit.data import preprocess
from tfrevisit.data import recipes


def _run(spec, image, training, seed=None, **features):
  example = {"image": tf.convert_to_tensor(image), "label": tf.constant(3),
             **features}
  if seed is not None:
    example[preprocess.SEED_KEY] = tf.constant([seed, 0], tf.int64)
  out = preprocess.get_preprocess_fn(spec, training=training)(example)
  return {k: v.numpy() for k, v in out.items()}


def _random_image(shape, seed=0):
  return np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)


def _coordinate_image(height, width):
  """float32 [H, W, 3] whose channels hold (row, column, 0) of each pixel."""
  rows, cols = np.meshgrid(np.arange(height), np.arange(width), indexing="ij")
  return np.stack([rows, cols, np.zeros_like(rows)], -1).astype(np.float32)


def _channels_equal(image):
  return (image[..., 0] == image[..., 1]).all() and (
      image[..., 1] == image[..., 2]).all()


def _smooth_jpeg(height, width):
  """JPEG bytes (no chroma subsampling) of a smooth image, and its pixels."""
  coarse = _random_image((height // 8, width // 8, 3))
  pixels = tf.cast(tf.image.resize(coarse, (height, width)), tf.uint8)
  encoded = tf.io.encode_jpeg(pixels, quality=95, chroma_downsampling=False)
  return encoded, tf.io.decode_jpeg(encoded).numpy()


# Spec parsing.

def test_parse_spec_string_and_list_agree():
  expected = [("resize", (292,), {}), ("to_gray", (), {"p": 0.66}),
              ("crop_patches", (3,), {"patch_jitter": 21}),
              ("standardization", (), {})]
  assert preprocess.parse_spec(
      "resize(292)|to_gray(p=0.66)|crop_patches(3, patch_jitter=21)"
      "|standardization") == expected
  assert preprocess.parse_spec(
      ["resize(292)|to_gray(p=0.66)", " crop_patches(3, patch_jitter=21) ",
       "standardization"]) == expected
  assert preprocess.parse_spec("resize((32, 48), method='area')") == [
      ("resize", ((32, 48),), {"method": "area"})]


def test_unknown_op_lists_valid_ops():
  with pytest.raises(ValueError,
                     match="valid choices: .*inception_crop.*rotate"):
    preprocess.get_preprocess_fn("decode|rotat", training=True)


@pytest.mark.parametrize("spec, message", [
    ("crop(size=foo)",
     "'crop\\(size=foo\\)': arguments must be Python literals"),
    ("crop(224", "arguments must be Python literals"),
    ("crop(**{'size': 2})", "arguments must be Python literals"),
    ("decode||crop(2)", "Empty op in preprocessing spec 'decode\\|\\|crop"),
    ("(2)|decode", "op '\\(2\\)' has no name"),
    ("crop(1, 2, 3)", "op 'crop': too many positional arguments; usage: crop"),
    ("rotate(k=2)", "op 'rotate': .*'k'"),
    ("crop()", "op 'crop': missing a required argument: 'size'"),
    ("to_gray(p=2)", "to_gray: p must be in \\[0, 1\\]"),
    ("resize('big')", "Size must be an int or \\(height, width\\)"),
])
def test_bad_specs_raise_readable_errors(spec, message):
  with pytest.raises(ValueError, match=message):
    preprocess.get_preprocess_fn(spec, training=True)


def test_seed_key_is_removed_and_seeding_is_deterministic():
  image = _random_image((40, 40, 3))
  spec = "crop(24)|flip_lr|to_gray(p=0.5)"
  outputs = [_run(spec, image, True, seed=s) for s in (5, 5, 6, 7, 8)]
  assert set(outputs[0]) == {"image", "label"}
  np.testing.assert_array_equal(outputs[0]["image"], outputs[1]["image"])
  assert any((o["image"] != outputs[0]["image"]).any() for o in outputs[2:])


# Decoding and geometry.

def test_decode_png_is_exact_and_jpeg_matches_tf_decoder():
  image = _random_image((20, 30, 3))
  np.testing.assert_array_equal(
      _run("decode", tf.io.encode_png(image), False)["image"], image)
  encoded, pixels = _smooth_jpeg(24, 32)
  np.testing.assert_array_equal(_run("decode", encoded, False)["image"], pixels)


def test_resize_small_keeps_aspect():
  out = _run("resize_small(256)", _random_image((300, 400, 3)), False)["image"]
  assert out.shape == (256, round(400 * 256 / 300), 3) and out.dtype == np.uint8
  out = _run("resize_small(10)", _random_image((40, 20, 3)), False)["image"]
  assert out.shape == (20, 10, 3)


def test_resize_keeps_dtype_and_handles_stacks():
  out = _run("resize(16)", _random_image((30, 20, 3)), False)["image"]
  assert out.shape == (16, 16, 3) and out.dtype == np.uint8
  stack = _random_image((4, 30, 20, 3)).astype(np.float32)
  out = _run("resize((8, 12))", stack, False)["image"]
  assert out.shape == (4, 8, 12, 3) and out.dtype == np.float32


def test_crop_is_central_in_eval_and_a_random_window_in_training():
  image = _coordinate_image(50, 70)
  out = _run("crop((20, 30))", image, False)["image"]
  np.testing.assert_array_equal(out, image[15:35, 20:50])
  np.testing.assert_array_equal(
      _run("central_crop((20, 30))", image, True)["image"], out)
  corners = set()
  for seed in range(20):
    out = _run("crop((20, 30))", image, True, seed=seed)["image"]
    y, x = int(out[0, 0, 0]), int(out[0, 0, 1])
    assert 0 <= y <= 30 and 0 <= x <= 40
    np.testing.assert_array_equal(out, image[y:y + 20, x:x + 30])
    corners.add((y, x))
  assert len(corners) > 10


def test_crop_of_jpeg_bytes_decodes_the_same_window():
  encoded, pixels = _smooth_jpeg(96, 128)
  out = _run("crop(40)", encoded, False)["image"]
  np.testing.assert_array_equal(out, pixels[28:68, 44:84])
  png = tf.io.encode_png(pixels)
  for seed in range(3):
    from_jpeg = _run("crop(40)", encoded, True, seed=seed)["image"]
    from_png = _run("crop(40)", png, True, seed=seed)["image"]
    np.testing.assert_array_equal(from_jpeg, from_png)


def test_crop_larger_than_image_fails_with_message():
  with pytest.raises(tf.errors.InvalidArgumentError,
                     match="crop: image smaller"):
    _run("crop(64)", _random_image((32, 80, 3)), False)


def test_flip_lr_flips_all_or_nothing_and_is_identity_in_eval():
  stack = _random_image((3, 8, 10, 3))
  flipped_count = 0
  for seed in range(16):
    out = _run("flip_lr", stack, True, seed=seed)["image"]
    flipped = (out == stack[:, :, ::-1]).all()
    assert flipped or (out == stack).all()
    flipped_count += flipped
  assert 0 < flipped_count < 16
  np.testing.assert_array_equal(_run("flip_lr", stack, False)["image"], stack)


# Colour and value range.

def test_to_gray_one_is_channel_mean_and_zero_is_identity():
  image = _random_image((12, 10, 3))
  gray = _run("to_gray(1.0)", image, True, seed=1)["image"]
  expected = np.round(image.astype(np.float64).mean(-1))
  for c in range(3):
    np.testing.assert_allclose(gray[..., c], expected, atol=1)
  assert _channels_equal(gray)
  for seed in range(5):
    np.testing.assert_array_equal(
        _run("to_gray(0.0)", image, True, seed=seed)["image"], image)


def test_to_gray_draws_once_per_example_of_a_stack():
  stack = _random_image((8, 6, 6, 3))
  outcomes = []
  for seed in range(20):
    out = _run("to_gray(p=0.5)", stack, True, seed=seed)["image"]
    per_image = [_channels_equal(o) for o in out]
    assert len(set(per_image)) == 1
    if not per_image[0]:
      np.testing.assert_array_equal(out, stack)
    outcomes.append(per_image[0])
  assert 0 < sum(outcomes) < 20


def test_to_gray_in_eval_is_deterministic():
  image = _random_image((6, 6, 3))
  np.testing.assert_array_equal(_run("to_gray(0.66)", image, False)["image"],
                                image)
  gray = _run("to_gray(1.0)", image, False)["image"]
  assert (gray[..., 0] == gray[..., 2]).all()


@pytest.mark.parametrize("vmin, vmax", [(-1, 1), (0, 1)])
def test_value_range(vmin, vmax):
  image = _random_image((5, 7, 3))
  out = _run(f"value_range({vmin}, {vmax})", image, False)["image"]
  assert out.dtype == np.float32
  np.testing.assert_allclose(out, vmin + image / 255.0 * (vmax - vmin),
                             atol=1e-6)


def test_standardization_per_patch():
  stack = _random_image((9, 8, 8, 3)).astype(np.float32) * np.arange(1, 10)[
      :, None, None, None]
  out = _run("standardization", stack.astype(np.uint8), False)["image"]
  assert out.dtype == np.float32 and out.shape == (9, 8, 8, 3)
  np.testing.assert_allclose(out.mean(axis=(1, 2, 3)), 0, atol=1e-5)
  np.testing.assert_allclose(out.std(axis=(1, 2, 3)), 1, atol=1e-4)
  single = _run("standardization", stack[0].astype(np.uint8), False)["image"]
  np.testing.assert_allclose(single, out[0], atol=1e-6)


# Pretext-task ops.

def test_rotate_matches_np_rot90():
  image = _random_image((16, 16, 3))
  out = _run("rotate", image, True)
  assert out["image"].shape == (4, 16, 16, 3)
  for k in range(4):
    np.testing.assert_array_equal(out["image"][k], np.rot90(image, k))
  np.testing.assert_array_equal(out["label"], [0, 1, 2, 3])
  assert out["label"].dtype == np.int32


def test_rotate_rejects_non_square():
  with pytest.raises(tf.errors.InvalidArgumentError, match="square"):
    _run("rotate", _random_image((16, 20, 3)), True)


@pytest.mark.parametrize("training", [True, False])
def test_crop_patches_without_jitter_are_the_grid_cells(training):
  image = _random_image((31, 45, 3))  # Cells 10x15; the last row is dropped.
  out = _run("crop_patches(3, 0)", image, training, seed=0)["image"]
  cells = [image[10 * r:10 * r + 10, 15 * c:15 * c + 15]
           for r in range(3) for c in range(3)]
  np.testing.assert_array_equal(out, np.stack(cells))


def test_crop_patches_with_jitter_lie_inside_their_cells():
  image = _coordinate_image(255, 255)
  offsets = set()
  for seed in range(5):
    out = _run("crop_patches(splits_per_side=3, patch_jitter=21)", image, True,
               seed=seed)["image"]
    assert out.shape == (9, 64, 64, 3)
    for i, patch in enumerate(out):
      y, x = int(patch[0, 0, 0]), int(patch[0, 0, 1])
      cell_y, cell_x = 85 * (i // 3), 85 * (i % 3)
      assert cell_y <= y <= cell_y + 21 and cell_x <= x <= cell_x + 21
      np.testing.assert_array_equal(patch, image[y:y + 64, x:x + 64])
      offsets.add((y - cell_y, x - cell_x))
  assert len(offsets) > 20
  central = _run("crop_patches(3, 21)", image, False)["image"]
  np.testing.assert_array_equal(central[4], image[95:159, 95:159])


def test_inception_window_inside_image_with_paper_area_and_aspect():
  height_width = tf.constant([300, 400])
  for seed in range(30):
    window = ops._inception_window(  # pylint: disable=protected-access
        tf.constant([seed, 1], tf.int64), (0.05, 1.0), (3 / 4, 4 / 3))(
            height_width).numpy()
    y, x, h, w = window
    assert y >= 0 and x >= 0 and y + h <= 300 and x + w <= 400
    if (h, w) != (300, 400):  # Else the fallback: the whole image.
      assert 0.05 * 0.95 <= h * w / (300 * 400) <= 1.0
      assert 3 / 4 * 0.95 <= w / h <= 4 / 3 * 1.05


def test_inception_crop_size_and_eval_determinism():
  encoded, pixels = _smooth_jpeg(160, 200)
  for seed in range(3):
    out = _run("inception_crop(64)", encoded, True, seed=seed)["image"]
    assert out.shape == (64, 64, 3) and out.dtype == np.uint8
  first = _run("inception_crop((48, 64))", encoded, False)["image"]
  np.testing.assert_array_equal(first, _run("inception_crop((48, 64))", encoded,
                                            False)["image"])
  # Eval: the central 87.5% of each side (margins 10 and 12), resized.
  expected = tf.image.resize(pixels[10:150, 12:188].astype(np.float32),
                             (48, 64))
  np.testing.assert_allclose(first, np.round(expected.numpy()), atol=1)


def test_inception_preprocess_range_and_modes():
  image = _random_image((120, 90, 3))
  for training in (True, False):
    out = _run("inception_preprocess(56)", image, training, seed=2)["image"]
    assert out.shape == (56, 56, 3) and out.dtype == np.float32
    assert out.min() >= -1.0 and out.max() <= 1.0
  eval_out = _run("inception_preprocess(56)", image, False)["image"]
  crop = _run("inception_crop(56)", image, False)["image"]
  np.testing.assert_allclose(eval_out, crop / 127.5 - 1, atol=1 / 127.5 + 1e-6)


def test_inception_patches_are_independent_crops():
  image = _random_image((100, 120, 3))
  central = _run("inception_crop(32)", image, False)["image"]
  out = _run("inception_patches(5, 32)", image, True, seed=0)["image"]
  assert out.shape == (5, 32, 32, 3) and out.dtype == np.float32
  assert out.min() >= 0.0 and out.max() <= 1.0
  assert len({p.tobytes() for p in out}) == 5
  eval_out = _run("inception_patches(5, 32)", image, False)["image"]
  np.testing.assert_allclose(eval_out, np.stack([central] * 5) / 255.0,
                             atol=0.5 / 255 + 1e-6)

  # Without colour distortion: crops and flips only, in the input's dtype.
  out = _run("inception_patches(5, 32, colour=False)", image, True,
             seed=0)["image"]
  assert out.shape == (5, 32, 32, 3) and out.dtype == np.uint8
  assert len({p.tobytes() for p in out}) == 5
  eval_out = _run("inception_patches(5, 32, colour=False)", image,
                  False)["image"]
  np.testing.assert_allclose(eval_out, np.stack([central] * 5), atol=1)


# The paper's recipes.

@pytest.mark.parametrize("recipe, training, shape, label_shape, in_unit_range", [
    (recipes.rotation(), True, (4, 224, 224, 3), (4,), True),
    (recipes.exemplar(), True, (8, 224, 224, 3), (), False),
    (recipes.patches(), True, (9, 64, 64, 3), (), False),
    (recipes.supervised(), True, (224, 224, 3), (), True),
    (recipes.eval_image(), False, (224, 224, 3), (), True),
    (recipes.eval_image(value_op="standardization"), False, (224, 224, 3), (), False),
    (recipes.eval_patches(), False, (9, 64, 64, 3), (), False),
])
def test_recipe_shapes(recipe, training, shape, label_shape, in_unit_range):
  encoded, _ = _smooth_jpeg(375, 500)
  out = _run(recipe, encoded, training, seed=0)
  assert out["image"].shape == shape and out["image"].dtype == np.float32
  assert out["label"].shape == label_shape
  if in_unit_range:
    assert out["image"].min() >= -1 and out["image"].max() <= 1
