"""Data sources: named datasets of `{"image", "label"}` examples per split.

Every source follows the paper's split convention (reference, "Data splits"):
`train` = the official training set minus a held-out part, `val` = that held-out
part (the last examples of the official training set), `trainval` = the whole
official training set, `test` = the official validation (or test) set.

Sources shard per worker themselves (`input_context`), so `make_dataset` never
shards again.

Training reads a source as an endless *stream* (`Source.training_stream`):
example `position` k of an input pipeline is a pure function of (seed, k, the
pipeline's shard), so that a resumed run starts the stream at the position it
stopped at and sees what an uninterrupted run would have seen.
"""
import abc
from typing import Callable, Optional, Tuple

import numpy as np

import tensorflow as tf
import tensorflow_datasets as tfds

from tfrevisit.registry import Registry

SPLITS = ("train", "val", "trainval", "test")
# The release held out the last 50,046 of ImageNet's 1,281,167 training images.
IMAGENET_HELD_OUT = 50_046
HELD_OUT_FRACTION = IMAGENET_HELD_OUT / 1_281_167

SOURCES = Registry("data source")


def check_split(split: str) -> str:
  """Returns the official part (`train` or `test`) that holds `split`."""
  if split not in SPLITS:
    raise ValueError(
        f"Unknown split {split!r}; valid splits: {', '.join(SPLITS)}.")
  return "test" if split == "test" else "train"


def held_out_size(num_train: int, fraction: float) -> int:
  """Number of official training examples held out as `val`."""
  if not 0.0 <= fraction < 1.0:
    raise ValueError(f"held_out_fraction must be in [0, 1), got {fraction}.")
  return round(num_train * fraction)


def locate_split(split: str, part_size: Callable[[str], int],
                 num_held_out: int) -> Tuple[str, int, int]:
  """Where `split` lives: (official part, start, stop), an index range.

  Args:
    split: one of `SPLITS`.
    part_size: number of examples of an official part, `train` or `test`.
    num_held_out: size of `val`, the tail of the official training part.
  """
  part = check_split(split)
  size = part_size(part)
  if split == "train":
    return part, 0, size - num_held_out
  if split == "val":
    return part, size - num_held_out, size
  return part, 0, size


# Salts of the independent streams derived from a run's seed.
_ORDER_SALT, _SHUFFLE_SALT = 1, 2


def stream_seed(seed: int, salt: int, value) -> tf.Tensor:
  """A stateless seed, int64 [2], that is a pure function of (seed, salt, value).

  Args:
    seed: the run's seed.
    salt: tells apart the streams drawn from one seed (order, augmentation...).
    value: an int64 scalar tensor (an epoch, a position).
  """
  return tf.random.experimental.stateless_fold_in(
      tf.constant([seed, salt], tf.int64), tf.cast(value, tf.int64))


def _scalar_seed(seed: int, salt: int, value) -> tf.Tensor:
  """An int64 scalar seed (for `tf.data` shuffles) from (seed, salt, value)."""
  return tf.random.stateless_uniform(
      [], stream_seed(seed, salt, value), minval=None, dtype=tf.int64)


def _pipeline(input_context) -> Tuple[int, int]:
  """(number of input pipelines, this one's index)."""
  if input_context is None:
    return 1, 0
  return input_context.num_input_pipelines, input_context.input_pipeline_id


def epoch_stream(examples: tf.data.Dataset, *, seed: int, start: int = 0,
                 shuffle_buffer: int = 10_000, pipeline_size: int,
                 name: str = "") -> tf.data.Dataset:
  """`Source.training_stream` for sources without random access.

  Epoch e is `examples` (one pass, in the same order every time it is
  iterated) shuffled by a `shuffle_buffer` seeded by (seed, e). Starting at
  `start` begins at epoch `start // pipeline_size` and skips `start %
  pipeline_size` examples: those are read (not decoded: sources yield encoded
  images), so the cost is reading up to one epoch of this pipeline's records.

  Args:
    examples: one pass of this pipeline's shard, `pipeline_size` examples, in
      an order that does not change between iterations.
    seed: the run's seed.
    start: the position of the first example.
    shuffle_buffer: examples in the shuffle buffer.
    pipeline_size: examples per pass.
    name: names the data in errors.

  Returns:
    Dataset of (position int64 [], example), endless.
  """
  if pipeline_size <= 0:
    raise ValueError(f"{name} has no examples for this input pipeline.")

  def epoch(e):
    # tf.data compares (graph seed, op seed) with (0, 0) in Python, which
    # fails for a tensor op seed when the graph seed is 0 (as after
    # `keras.utils.set_random_seed(0)`). The epoch's seed alone decides the
    # order, so this function's graph seed is cleared.
    tf.random.set_seed(None)
    return examples.shuffle(shuffle_buffer,
                            seed=_scalar_seed(seed, _SHUFFLE_SALT, e))

  endless = np.iinfo(np.int64).max
  examples = tf.data.Dataset.range(start // pipeline_size, endless).flat_map(
      epoch).skip(start % pipeline_size)
  return tf.data.Dataset.zip(tf.data.Dataset.range(start, endless), examples)


def _counted_size(source, split: str, input_context) -> int:
  """Examples per pass of this input pipeline's shard, counted by tf.data."""
  if _pipeline(input_context)[0] == 1:
    return source.num_examples(split)
  size = int(source.as_dataset(split, input_context=input_context).cardinality())
  if size < 0:
    raise ValueError(f"The size of {source.name}/{split}'s shard is unknown.")
  return size


def training_stream(source, split: str, *, seed: int, start: int = 0,
                    input_context: Optional[tf.distribute.InputContext] = None,
                    shuffle_buffer: int = 10_000) -> tf.data.Dataset:
  """`source.training_stream(...)`, or `epoch_stream` for source-like objects
  that only have `as_dataset` and `num_examples`."""
  kwargs = dict(seed=seed, start=start, input_context=input_context,
                shuffle_buffer=shuffle_buffer)
  if hasattr(source, "training_stream"):
    return source.training_stream(split, **kwargs)
  return epoch_stream(
      source.as_dataset(split, input_context=input_context), seed=seed,
      start=start, shuffle_buffer=shuffle_buffer,
      pipeline_size=_counted_size(source, split, input_context),
      name=f"{source.name}/{split}")


class Source(abc.ABC):
  """A dataset with the four paper splits.

  Attributes:
    name: the source's name.
    num_classes: number of label classes.
    may_contain_corrupt_images: True when images come from loose files that can
      be unreadable; `make_dataset` then skips and counts failing examples.
  """
  name: str
  num_classes: int
  may_contain_corrupt_images = False

  @abc.abstractmethod
  def _locate(self, split: str) -> Tuple[str, int, int]:
    """(part, start, stop): `split` is examples [start, stop) of `part`."""

  def num_examples(self, split: str) -> int:
    """Number of examples in `split` (all workers together)."""
    _, start, stop = self._locate(split)
    return stop - start

  @abc.abstractmethod
  def as_dataset(self, split: str, *, shuffle_files: bool = False,
                 seed: Optional[int] = None,
                 input_context: Optional[tf.distribute.InputContext] = None
                ) -> tf.data.Dataset:
    """This worker's shard of `split`, one pass.

    Args:
      split: one of `SPLITS`.
      shuffle_files: shuffle the reading order (reshuffled every pass).
      seed: makes that order deterministic.
      input_context: shard for `input_context.input_pipeline_id` of
        `input_context.num_input_pipelines`.

    Returns:
      Dataset of `{"image": uint8 [H, W, 3] or encoded string [],
      "label": int32 []}`.
    """

  def pipeline_size(self, split: str,
                    input_context: Optional[tf.distribute.InputContext]) -> int:
    """Examples per pass of this input pipeline's shard of `split`."""
    return _counted_size(self, split, input_context)

  def training_stream(self, split: str, *, seed: int, start: int = 0,
                      input_context: Optional[tf.distribute.InputContext] = None,
                      shuffle_buffer: int = 10_000) -> tf.data.Dataset:
    """This pipeline's shard of `split`, shuffled anew each epoch, endless.

    The example at `position` k (0, 1, ... counted in this pipeline) is a pure
    function of (seed, k, the shard): epoch k // size, shuffled with seeds
    derived from (seed, epoch). This default reads `as_dataset`'s fixed order
    through a shuffle buffer (`epoch_stream`). A resumed run passes `start` = the number of
    examples this pipeline had consumed.

    Args:
      split: one of `SPLITS`.
      seed: the run's seed.
      start: the position of the first example.
      input_context: shard for `input_context.input_pipeline_id`.
      shuffle_buffer: examples in the shuffle buffer (sources without random
        access; `IndexedSource` permutes each epoch fully).

    Returns:
      Dataset of (position int64 [], example), as in `as_dataset`.
    """
    return epoch_stream(
        self.as_dataset(split, input_context=input_context), seed=seed,
        start=start, shuffle_buffer=shuffle_buffer,
        pipeline_size=self.pipeline_size(split, input_context),
        name=f"{self.name}/{split}")


class IndexedSource(Source):
  """A source whose examples are loaded by index from an official part."""

  @abc.abstractmethod
  def _load_fn(self, part: str) -> Callable[[tf.Tensor], dict]:
    """Function from an int64 index into `part` to an example dict."""

  def as_dataset(self, split, *, shuffle_files=False, seed=None,
                 input_context=None):
    part, start, stop = self._locate(split)
    indices = tf.data.Dataset.range(start, stop)
    if input_context:
      indices = indices.shard(input_context.num_input_pipelines,
                              input_context.input_pipeline_id)
    if shuffle_files:
      # Indices are tiny, so the whole shard is permuted.
      indices = indices.shuffle(stop - start, seed=seed,
                                reshuffle_each_iteration=True)
    return indices.map(self._load_fn(part),
                       num_parallel_calls=tf.data.AUTOTUNE)

  def _shard(self, split, input_context) -> Tuple[str, int, int, int]:
    """(part, first index, stride, size) of this pipeline's shard."""
    part, start, stop = self._locate(split)
    num_pipelines, pipeline_id = _pipeline(input_context)
    first = start + pipeline_id
    return part, first, num_pipelines, len(range(first, stop, num_pipelines))

  def pipeline_size(self, split, input_context):
    return self._shard(split, input_context)[3]

  def training_stream(self, split, *, seed, start=0, input_context=None,
                      shuffle_buffer=10_000):
    """See `Source.training_stream`; here random access makes `start` free.

    Position k is index `index_shuffle(k % size)` of the permutation of the
    shard seeded by (seed, epoch k // size): a stateless bijection, so no
    example is read, let alone decoded, before `start`.
    """
    del shuffle_buffer  # Each epoch is a full permutation.
    part, first, stride, size = self._shard(split, input_context)
    if size <= 0:
      raise ValueError(f"Split {split!r} of {self.name} has no examples for "
                       "this input pipeline.")
    load = self._load_fn(part)

    def example(position):
      epoch, offset = position // size, position % size
      permuted = tf.random.experimental.index_shuffle(
          offset, stream_seed(seed, _ORDER_SALT, epoch), size - 1)
      return position, load(first + stride * permuted)

    return tf.data.Dataset.range(start, np.iinfo(np.int64).max).map(
        example, num_parallel_calls=tf.data.AUTOTUNE)


@SOURCES.register("random")
class RandomSource(IndexedSource):
  """Random uint8 images and labels, for smoke tests.

  Every split holds `num_examples` examples; example i of a split is a pure
  function of (seed, split, i), so passes repeat exactly.
  """

  def __init__(self, *, data_dir=None, image_shape=(32, 32, 3),
               num_classes=10, num_examples=64, seed=0):
    del data_dir  # Generated, nothing to read.
    self.name = "random"
    self.num_classes = num_classes
    self._image_shape = tuple(image_shape)
    self._size = num_examples
    self._seed = seed

  def _locate(self, split):
    check_split(split)
    return split, 0, self._size

  def _load_fn(self, part):
    split_id = SPLITS.index(part)

    def load(index):
      seed = tf.stack([tf.constant(self._seed * len(SPLITS) + split_id,
                                   tf.int64), index])
      image_seed, label_seed = tf.unstack(
          tf.random.experimental.stateless_split(seed, 2))
      image = tf.random.stateless_uniform(
          self._image_shape, image_seed, maxval=256, dtype=tf.int32)
      label = tf.random.stateless_uniform(
          [], label_seed, maxval=self.num_classes, dtype=tf.int32)
      return {"image": tf.cast(image, tf.uint8), "label": label}
    return load


# Sizes of the paper's datasets, because `info.splits` is empty when the data is
# not prepared (e.g. under `tfds.testing.mock_data`).
_KNOWN_TFDS_SIZES = {
    "imagenet2012": {"train": 1_281_167, "validation": 50_000},
    "places365_small": {"train": 1_803_460, "validation": 36_500,
                        "test": 328_500},
}
# Held-out sizes fixed by the release rather than by `held_out_fraction`.
_KNOWN_HELD_OUT = {"imagenet2012": IMAGENET_HELD_OUT}


class TfdsSource(Source):
  """A TFDS image-classification dataset; images stay encoded (lazy decode).

  The paper's `test` is the official `validation` split when the dataset has
  one (ImageNet, Places365), else the official `test` split.
  """

  def __init__(self, name: str, *, data_dir: Optional[str] = None,
               held_out_fraction: float = HELD_OUT_FRACTION):
    try:
      self._builder = tfds.builder(name, data_dir=data_dir)
    except ValueError as e:  # Includes TFDS's DatasetNotFoundError.
      raise ValueError(
          f"Unknown data source {name!r}: neither one of "
          f"{', '.join(SOURCES.names())} nor a TFDS dataset "
          f"({str(e).splitlines()[0]}).") from e
    self.name = name
    self._data_dir = data_dir
    info = self._builder.info
    keys = info.supervised_keys or ("image", "label")
    self._image_key, self._label_key = keys
    self.num_classes = info.features[self._label_key].num_classes
    self._sizes = dict(_KNOWN_TFDS_SIZES.get(name, {}))
    self._sizes.update({k: v.num_examples for k, v in info.splits.items()})
    self._test_part = "validation" if "validation" in self._sizes else "test"
    self._held_out_fraction = held_out_fraction

  def _part_size(self, part: str) -> int:
    tfds_split = "train" if part == "train" else self._test_part
    if tfds_split not in self._sizes:
      raise ValueError(
          f"Size of split {tfds_split!r} of TFDS dataset {self.name!r} is "
          f"unknown (is it prepared in data_dir={self._data_dir!r}?).")
    return self._sizes[tfds_split]

  def _locate(self, split):
    held_out = _KNOWN_HELD_OUT.get(self.name)
    if held_out is None:
      held_out = held_out_size(self._part_size("train"),
                               self._held_out_fraction)
    part, start, stop = locate_split(split, self._part_size, held_out)
    return ("train" if part == "train" else self._test_part), start, stop

  def as_dataset(self, split, *, shuffle_files=False, seed=None,
                 input_context=None):
    return self._read(split, shuffle_files=shuffle_files,
                      input_context=input_context,
                      read_config_kwargs=dict(shuffle_seed=seed))

  def _read(self, split, *, shuffle_files, input_context, read_config_kwargs):
    part, start, stop = self._locate(split)
    read_config = tfds.ReadConfig(input_context=input_context,
                                  **read_config_kwargs)
    try:
      ds = self._builder.as_dataset(
          split=f"{part}[{start}:{stop}]", shuffle_files=shuffle_files,
          read_config=read_config,
          decoders={self._image_key: tfds.decode.SkipDecoding()})
    except AssertionError as e:  # TFDS's way of saying "not prepared".
      raise FileNotFoundError(
          f"TFDS dataset {self.name!r} is not prepared in data_dir="
          f"{self._data_dir!r}. Run `tfds build {self.name} --data_dir=DIR` "
          "(ImageNet: first put the ILSVRC2012 train/val tar files in "
          "DIR/downloads/manual/).") from e
    return ds.map(lambda ex: {"image": ex[self._image_key],
                              "label": tf.cast(ex[self._label_key], tf.int32)},
                  num_parallel_calls=tf.data.AUTOTUNE)

  def training_stream(self, split, *, seed, start=0, input_context=None,
                      shuffle_buffer=10_000):
    """See `Source.training_stream`.

    The file order is shuffled once by `seed` (the same in every epoch: TFDS
    cannot reseed it per epoch inside `tf.data`), then examples by a buffer
    seeded by (seed, epoch). A resumed run reads, without decoding, the part
    of the current epoch before `start`.
    """
    examples = self._read(split, shuffle_files=True, input_context=input_context,
                          read_config_kwargs=dict(
                              shuffle_seed=seed,
                              shuffle_reshuffle_each_iteration=False))
    return epoch_stream(examples, seed=seed, start=start,
                        shuffle_buffer=shuffle_buffer,
                        pipeline_size=self.pipeline_size(split, input_context),
                        name=f"{self.name}/{split}")

  def pipeline_size(self, split, input_context):
    """From TFDS's file instructions: `as_dataset` shards by file."""
    part, start, stop = self._locate(split)
    num_pipelines, pipeline_id = _pipeline(input_context)
    if num_pipelines == 1:
      return stop - start
    try:
      instructions = self._builder.info.splits[
          f"{part}[{start}:{stop}]"].file_instructions
    except (KeyError, ValueError, AssertionError):  # Not prepared (mock data).
      return super().pipeline_size(split, input_context)
    return sum(i.take for i in instructions[pipeline_id::num_pipelines])


def get_source(name: str, *, data_dir: Optional[str] = None,
               **kwargs) -> Source:
  """Builds a data source by name.

  Args:
    name: a registered source (`fashion_mnist`, `image_folder`, `list_file`,
      `random`) or any TFDS image-classification dataset name (e.g.
      `imagenet2012`, `places365_small`, `cifar10`).
    data_dir: where the data lives: TFDS data_dir, Fashion-MNIST directory, or
      the root of an image folder / list file source.
    **kwargs: source-specific arguments, e.g. `held_out_fraction`.

  Returns:
    The source.
  """
  if name in SOURCES:
    return SOURCES.build(name, data_dir=data_dir, **kwargs)
  return TfdsSource(name, data_dir=data_dir, **kwargs)
