"""Preprocessing ops: small pure functions on the example dict.

Each op is registered by name as a factory `op(*args, training, **kwargs)` that
returns `fn(example) -> example`. Ops read and write `example["image"]`
(`rotate` also writes `example["label"]`). Conventions:
  * `image` is encoded bytes (string []) until an op needs pixels; every op
    decodes it then, and cropping ops decode only their window of a JPEG
    (`tf.image.decode_and_crop_jpeg`).
  * Decoded and cropped/resized images stay uint8 [H, W, 3]; `value_range`,
    `standardization` and `inception_preprocess` output float32.
  * Random ops draw from stateless generators seeded by `example[SEED_KEY]`
    (int64 [2], attached by `make_dataset`) and advance that seed, so a seeded
    pipeline is reproducible. In eval mode (`training=False`) ops are
    deterministic.
"""
from typing import Callable, Sequence, Tuple, Union

import tensorflow as tf

from tfrevisit.registry import Registry

OPS = Registry("preprocessing op")
SEED_KEY = "_seed"

Example = dict
Op = Callable[[Example], Example]
Size = Union[int, Sequence[int]]
WindowFn = Callable[[tf.Tensor], tf.Tensor]  # int32 [h, w] -> [y, x, h, w].

_INCEPTION_EVAL_FRACTION = 0.875
# The release's Inception crop: area in [5%, 100%] that covers at least 10% of
# the image, so in effect [10%, 100%].
_INCEPTION_MIN_COVERED = 0.1
_split_seed = tf.random.experimental.stateless_split


def take_seed(example: Example) -> Tuple[tf.Tensor, Example]:
  """A fresh seed for one op, and the example with its seed advanced."""
  seed = example.get(SEED_KEY)
  if seed is None:  # Called outside `make_dataset`: unseeded.
    seed = tf.random.uniform([2], maxval=tf.int64.max, dtype=tf.int64)
  op_seed, next_seed = tf.unstack(_split_seed(seed, 2))
  return op_seed, {**example, SEED_KEY: next_seed}


def _height_width(size: Size) -> Tuple[int, int]:
  if isinstance(size, int):
    return size, size
  if len(size) == 2 and all(isinstance(s, int) for s in size):
    return tuple(size)
  raise ValueError(f"Size must be an int or (height, width), got {size!r}.")


def _decode(image: tf.Tensor) -> tf.Tensor:
  """uint8 [H, W, 3] from JPEG/PNG bytes; other tensors pass through."""
  if image.dtype != tf.string:
    return image
  return tf.io.decode_image(image, channels=3, expand_animations=False)


def _pixel_dtype(image: tf.Tensor) -> tf.DType:
  return tf.uint8 if image.dtype == tf.string else image.dtype


def _cast_like(image: tf.Tensor, dtype: tf.DType) -> tf.Tensor:
  """Casts float pixels to `dtype`, rounding and saturating for uint8."""
  if dtype == tf.uint8:
    image = tf.clip_by_value(tf.round(image), 0.0, 255.0)
  return tf.cast(image, dtype)


def _resize(image: tf.Tensor, size_hw, method: str) -> tf.Tensor:
  """Float32 resize of [H, W, C] or [N, H, W, C]."""
  return tf.image.resize(tf.cast(image, tf.float32), size_hw, method=method)


def _crop_window(image: tf.Tensor, window_fn: WindowFn) -> tf.Tensor:
  """Crops to `window_fn(height_width)`, decoding only the window of a JPEG."""
  if image.dtype != tf.string:
    y, x, h, w = tf.unstack(window_fn(tf.shape(image)[:2]))
    return image[y:y + h, x:x + w]

  def decode_window_of_jpeg():
    window = window_fn(tf.image.extract_jpeg_shape(image)[:2])
    return tf.image.decode_and_crop_jpeg(image, window, channels=3)

  return tf.cond(tf.io.is_jpeg(image), decode_window_of_jpeg,
                 lambda: _crop_window(_decode(image), window_fn))


def _fixed_window(size_hw, offset_fn, op_name: str) -> WindowFn:
  """Window of `size_hw` at `offset_fn(room)`; room = image size - size_hw."""
  def window(height_width):
    room = height_width - tf.constant(size_hw)
    fits = tf.debugging.assert_non_negative(
        room, message=f"{op_name}: image smaller than {size_hw}")
    with tf.control_dependencies([fits]):
      return tf.concat([offset_fn(room), size_hw], axis=0)
  return window


def _uniform_offsets(room: tf.Tensor, seed: tf.Tensor) -> tf.Tensor:
  """Uniform integer offsets in [0, room], elementwise."""
  u = tf.random.stateless_uniform(tf.shape(room), seed)
  return tf.cast(u * tf.cast(room + 1, tf.float32), tf.int32)


def _inception_window(seed, area_range, aspect_ratio_range) -> WindowFn:
  """A random window of area in `area_range` (fractions of the image) that
  also covers at least `_INCEPTION_MIN_COVERED` of the image, as the release
  asked `sample_distorted_bounding_box`."""
  def window(height_width):
    begin, size, _ = tf.image.stateless_sample_distorted_bounding_box(
        tf.concat([height_width, [3]], axis=0), tf.zeros([0, 0, 4]), seed,
        min_object_covered=_INCEPTION_MIN_COVERED,
        aspect_ratio_range=aspect_ratio_range,
        area_range=area_range, max_attempts=100,
        use_image_if_no_bounding_boxes=True)
    return tf.concat([begin[:2], size[:2]], axis=0)
  return window


def _central_fraction_window(height_width):
  """Central window of 87.5% of each side, as Inception evaluation uses."""
  margin = tf.cast(tf.cast(height_width, tf.float32)
                   * (1 - _INCEPTION_EVAL_FRACTION) / 2, tf.int32)
  return tf.concat([margin, height_width - 2 * margin], axis=0)


def _inception_crop(image, size_hw, seed, training, area_range=(0.05, 1.0),
                    aspect_ratio_range=(3 / 4, 4 / 3)) -> tf.Tensor:
  """Float32 [h, w, 3] in [0, 255]: random Inception crop, or eval crop."""
  if training:
    window_fn = _inception_window(seed, area_range, aspect_ratio_range)
  else:
    window_fn = _central_fraction_window
  return _resize(_crop_window(image, window_fn), size_hw, "bilinear")


def _map_image(example: Example, fn) -> Example:
  return {**example, "image": fn(example["image"])}


def _apply_if(condition: tf.Tensor, fn, example: Example) -> Example:
  """`fn` on the decoded image if the scalar `condition` holds."""
  image = _decode(example["image"])
  return {**example, "image": tf.cond(condition, lambda: fn(image),
                                      lambda: image)}


@OPS.register("decode")
def decode(*, training) -> Op:
  """Encoded JPEG/PNG bytes -> uint8 [H, W, 3]; decoded images pass through."""
  del training
  return lambda example: _map_image(example, _decode)


@OPS.register("resize")
def resize(size: Size, method: str = "bilinear", *, training) -> Op:
  """Resizes [H, W, 3] or [N, H, W, 3] to `size` (int or (h, w)), same dtype."""
  del training
  size_hw = _height_width(size)
  return lambda example: _map_image(example, lambda image: _cast_like(
      _resize(_decode(image), size_hw, method), _pixel_dtype(image)))


@OPS.register("resize_small")
def resize_small(smaller_size: int, method: str = "area", *, training) -> Op:
  """Resizes so that the smaller side is `smaller_size`, keeping the aspect."""
  del training

  def resize_image(image):
    pixels = _decode(image)
    height_width = tf.cast(tf.shape(pixels)[-3:-1], tf.float32)
    scale = smaller_size / tf.reduce_min(height_width)
    new_size = tf.cast(tf.round(height_width * scale), tf.int32)
    return _cast_like(_resize(pixels, new_size, method), _pixel_dtype(image))
  return lambda example: _map_image(example, resize_image)


@OPS.register("crop")
def crop(size: Size, *, training) -> Op:
  """Crop of `size`: uniformly random in training, central in eval."""
  size_hw = _height_width(size)

  def crop_example(example):
    if training:
      seed, example = take_seed(example)
      window_fn = _fixed_window(
          size_hw, lambda room: _uniform_offsets(room, seed), "crop")
    else:
      window_fn = _fixed_window(size_hw, lambda room: room // 2, "crop")
    return _map_image(example, lambda image: tf.ensure_shape(
        _crop_window(image, window_fn), size_hw + (3,)))
  return crop_example


@OPS.register("central_crop")
def central_crop(size: Size, *, training) -> Op:
  """Central crop of `size`, in training and eval."""
  del training
  return crop(size, training=False)


@OPS.register("flip_lr")
def flip_lr(*, training) -> Op:
  """Random left-right flip in training (one draw per example); eval: no-op."""
  def flip(example):
    if not training:
      return example
    seed, example = take_seed(example)
    do_flip = tf.random.stateless_uniform([], seed) < 0.5
    return _apply_if(do_flip, lambda image: tf.reverse(image, axis=[-2]),
                     example)
  return flip


@OPS.register("inception_crop")
def inception_crop(size: Size, area_min: float = 0.05, area_max: float = 1.0,
                   *, training) -> Op:
  """Inception crop resized to `size`, same dtype (uint8 from bytes).

  Training: a random window of area in [area_min, area_max] of the image and
  aspect ratio in [3/4, 4/3] (100 attempts, else the whole image). Eval: the
  central 87.5% of each side. Both are resized bilinearly to `size`.
  """
  size_hw = _height_width(size)

  def crop_example(example):
    seed, example = take_seed(example) if training else (None, example)
    return _map_image(example, lambda image: _cast_like(
        _inception_crop(image, size_hw, seed, training, (area_min, area_max)),
        _pixel_dtype(image)))
  return crop_example


def _distort_colour(image: tf.Tensor, seed: tf.Tensor) -> tf.Tensor:
  """The release's fast colour distortion of float32 [h, w, 3] in [0, 1]:
  brightness +-32/255 and saturation x[0.5, 1.5], in a random one of the two
  orders, then clipped to [0, 1]."""
  order_seed, brightness_seed, saturation_seed = tf.unstack(
      _split_seed(seed, 3))
  brightness = lambda x: tf.image.stateless_random_brightness(
      x, 32 / 255, brightness_seed)
  saturation = lambda x: tf.image.stateless_random_saturation(
      x, 0.5, 1.5, saturation_seed)
  brightness_first = tf.random.stateless_uniform([], order_seed) < 0.5
  image = tf.cond(brightness_first, lambda: saturation(brightness(image)),
                  lambda: brightness(saturation(image)))
  return tf.clip_by_value(image, 0.0, 1.0)


def _inception_distort(image, size_hw, seed) -> tf.Tensor:
  """The Inception training distortion: float32 [size, size, 3] in [0, 1].

  Random Inception crop, random left-right flip, `_distort_colour`.
  """
  crop_seed, flip_seed, colour_seed = tf.unstack(_split_seed(seed, 3))
  image = _inception_crop(image, size_hw, crop_seed, True) / 255.0
  image = tf.image.stateless_random_flip_left_right(image, flip_seed)
  return _distort_colour(image, colour_seed)


@OPS.register("inception_preprocess")
def inception_preprocess(size: Size, *, training) -> Op:
  """Inception preprocessing to float32 [size, size, 3] in [-1, 1].

  Training: `_inception_distort` (crop, flip, colour). Eval: central 87.5%
  crop and resize.
  """
  size_hw = _height_width(size)

  def preprocess(example):
    if not training:
      return _map_image(example, lambda image: _inception_crop(
          image, size_hw, None, False) / 127.5 - 1.0)
    seed, example = take_seed(example)
    return _map_image(example, lambda image: _inception_distort(
        image, size_hw, seed) * 2.0 - 1.0)
  return preprocess


@OPS.register("to_gray")
def to_gray(p: float = 1.0, *, training) -> Op:
  """With probability `p`, replaces RGB by its mean tiled to 3 channels.

  One draw per example, applied to the whole of it (an image or a stack).
  Eval is deterministic: gray only when p == 1.
  """
  if not 0.0 <= p <= 1.0:
    raise ValueError(f"to_gray: p must be in [0, 1], got {p}.")

  def gray(image):
    # Every output channel is the mean of R, G and B (a matmul is much faster
    # than a reduction over the 3-wide axis followed by tiling).
    mean_of_rgb = tf.fill([3, 3], 1 / 3)
    return _cast_like(tf.tensordot(tf.cast(image, tf.float32), mean_of_rgb, 1),
                      image.dtype)

  def maybe_gray(example):
    if training:
      seed, example = take_seed(example)
      do_gray = tf.random.stateless_uniform([], seed) < p
    else:
      do_gray = tf.constant(p >= 1.0)
    return _apply_if(do_gray, gray, example)
  return maybe_gray


@OPS.register("value_range")
def value_range(vmin: float, vmax: float, in_min: float = 0.0,
                in_max: float = 255.0, *, training) -> Op:
  """Maps pixel values linearly from [in_min, in_max] to float32 [vmin, vmax].

  `value_range(-1, 1)` and `value_range(0, 1)` are the paper's two ranges.
  """
  del training
  scale = (vmax - vmin) / (in_max - in_min)
  return lambda example: _map_image(example, lambda image: (
      tf.cast(_decode(image), tf.float32) - in_min) * scale + vmin)


@OPS.register("standardization")
def standardization(*, training) -> Op:
  """Per image (or per patch of a stack): zero mean, unit variance, float32."""
  del training
  return lambda example: _map_image(
      example, lambda image: tf.image.per_image_standardization(_decode(image)))


@OPS.register("crop_patches")
def crop_patches(splits_per_side: int = 3, patch_jitter: int = 21, *,
                 training) -> Op:
  """Cuts a grid of splits_per_side^2 patches, [H, W, 3] -> [S*S, p, p, 3].

  Cells are cut row-major from the image's top-left (remainder pixels are
  dropped); p = cell size - `patch_jitter`. Inside each cell the patch is at a
  uniformly random offset in training and centred in eval.
  """
  n = splits_per_side

  def cut(image, offsets):
    cell = tf.shape(image)[:2] // n
    patch = cell - patch_jitter
    fits = tf.debugging.assert_positive(
        patch, message=f"crop_patches: jitter {patch_jitter} >= cell size")
    with tf.control_dependencies([fits]):
      cells = tf.reshape(image[:n * cell[0], :n * cell[1]],
                         [n, cell[0], n, cell[1], 3])
    cells = tf.reshape(tf.transpose(cells, [0, 2, 1, 3, 4]),
                       [n * n, cell[0], cell[1], 3])
    rows = offsets[:, :1] + tf.range(patch[0])[None]
    cols = offsets[:, 1:] + tf.range(patch[1])[None]
    patches = tf.gather(cells, rows, axis=1, batch_dims=1)
    patches = tf.gather(patches, cols, axis=2, batch_dims=1)
    static = [None if d is None else d // n - patch_jitter
              for d in image.shape[:2]]
    return tf.ensure_shape(patches, [n * n] + static + [3])

  def cut_example(example):
    if training:
      seed, example = take_seed(example)
      offsets = _uniform_offsets(tf.fill([n * n, 2], patch_jitter), seed)
    else:
      offsets = tf.fill([n * n, 2], patch_jitter // 2)
    return _map_image(example, lambda image: cut(_decode(image), offsets))
  return cut_example


@OPS.register("rotate")
def rotate(*, training) -> Op:
  """The four rotations of a square image, labelled by their index.

  [H, H, 3] -> [4, H, H, 3] rotated by 0, 90, 180, 270 degrees counter-clockwise
  (as `np.rot90`); the label becomes int32 [0, 1, 2, 3].
  """
  del training

  def rotate_example(example):
    image = _decode(example["image"])
    square = tf.debugging.assert_equal(
        tf.shape(image)[0], tf.shape(image)[1],
        message="rotate needs a square image; crop or resize first")
    with tf.control_dependencies([square]):
      rotated = tf.stack([tf.image.rot90(image, k) for k in range(4)])
    return {**example, "image": rotated, "label": tf.range(4, dtype=tf.int32)}
  return rotate_example


@OPS.register("keep_seed")
def keep_seed(key: str = "seed", *, training) -> Op:
  """Stores a fresh seed, int64 [2], under `key` for the task's own draws.

  A task that draws random numbers per batch in its loss (jigsaw's subset of
  permutations) seeds them from this, so that they too are a function of the
  run's seed and the step (exact resume). Eval: zeros.
  """

  def keep(example):
    if not training:
      return {**example, key: tf.zeros([2], tf.int64)}
    seed, example = take_seed(example)
    return {**example, key: seed}
  return keep


@OPS.register("inception_patches")
def inception_patches(n: int, size: Size, colour: bool = True, *,
                      training) -> Op:
  """`n` independent Inception crops of one image: [H, W, 3] -> [n, size,
  size, 3].

  Training: each crop gets the whole Inception training distortion on its own
  random draw (`_inception_distort`: crop, flip, brightness and saturation,
  clip), float32 in [0, 1], as the release's Exemplar did; `colour=False`
  leaves out the colour distortion and keeps the dtype (uint8 from bytes).
  Eval: n copies of the central Inception eval crop, float32 in [0, 1]
  (`colour=False`: the input's dtype).
  """
  size_hw = _height_width(size)

  def crop(image, seed):
    if not training:
      return _inception_crop(image, size_hw, None, False) / 255.0
    if colour:
      return _inception_distort(image, size_hw, seed)
    crop_seed, flip_seed = tf.unstack(_split_seed(seed, 2))
    return tf.image.stateless_random_flip_left_right(
        _inception_crop(image, size_hw, crop_seed, True), flip_seed) / 255.0

  def crops(example):
    image = _decode(example["image"])
    seeds = [None] * n
    if training:
      seed, example = take_seed(example)
      seeds = tf.unstack(_split_seed(seed, n))
    patches = tf.stack([crop(image, patch_seed) for patch_seed in seeds])
    if not colour:
      patches = _cast_like(patches * 255.0, image.dtype)
    return {**example, "image": patches}
  return crops
