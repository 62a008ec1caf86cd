"""Fashion-MNIST from its four IDX `.gz` files: the offline default source.

60,000 official training and 10,000 test images of clothes, 28x28 grayscale,
10 classes, served as uint8 [28, 28, 3]. Following the paper's rule, `val` is
the last `held_out_fraction` (3.9%: 2,344 images) of the official training
set.
"""
import functools
import gzip
import logging
import os
from typing import List, Optional, Tuple

import numpy as np
import tensorflow as tf

from tfrevisit.data import sources

log = logging.getLogger("tfrevisit.data.fashion_mnist")

FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}
# Where the Debian package `dataset-fashion-mnist` installs the files.
SYSTEM_DIR = "/usr/share/datasets/fashion-mnist"
_IDX_UINT8 = 0x08

Arrays = Tuple[np.ndarray, np.ndarray]  # images uint8 [N, 28, 28], labels [N].


def read_idx(path: str) -> np.ndarray:
  """Reads a gzipped IDX file of unsigned bytes into an array of its shape."""
  try:
    with gzip.open(path, "rb") as f:
      data = f.read()
  except (OSError, EOFError) as e:
    raise ValueError(f"Cannot read IDX file {path}: {e}") from e
  ndim = data[3] if len(data) >= 4 else 0
  header_size = 4 + 4 * ndim
  if len(data) < header_size or data[:3] != bytes([0, 0, _IDX_UINT8]):
    raise ValueError(f"{path} is not an IDX file of unsigned bytes.")
  shape = tuple(int.from_bytes(data[4 + 4 * i:8 + 4 * i], "big")
                for i in range(ndim))
  values = np.frombuffer(data, np.uint8, offset=header_size)
  if values.size != np.prod(shape):
    raise ValueError(f"{path} is truncated: header says {shape}, "
                     f"found {values.size} values.")
  return values.reshape(shape)


def candidate_dirs(data_dir: Optional[str] = None) -> List[str]:
  """Directories searched for the IDX files, in order."""
  dirs = [data_dir] if data_dir else []
  if os.environ.get("TFREVISIT_DATA_DIR"):
    dirs.append(os.path.join(os.environ["TFREVISIT_DATA_DIR"], "fashion-mnist"))
  dirs.append(os.path.expanduser("~/.keras/datasets/fashion-mnist"))
  dirs.append(SYSTEM_DIR)
  return dirs


@functools.lru_cache(maxsize=2)
def _read_dir(directory: str) -> Tuple[Arrays, Arrays]:
  return tuple((read_idx(os.path.join(directory, images)),
                read_idx(os.path.join(directory, labels)))
               for images, labels in (FILES["train"], FILES["test"]))


def _download_with_keras() -> Tuple[Arrays, Arrays]:
  import keras  # pylint: disable=g-import-not-at-top
  return keras.datasets.fashion_mnist.load_data()


def load(data_dir: Optional[str] = None) -> Tuple[Arrays, Arrays]:
  """((train_images, train_labels), (test_images, test_labels)).

  Reads the first of `candidate_dirs(data_dir)` that holds all four files, else
  downloads with Keras.

  Raises:
    FileNotFoundError: nowhere to be found and the download failed.
  """
  dirs = candidate_dirs(data_dir)
  for directory in dirs:
    names = FILES["train"] + FILES["test"]
    if all(os.path.isfile(os.path.join(directory, n)) for n in names):
      log.info("Reading Fashion-MNIST from %s.", directory)
      return _read_dir(directory)
  try:
    return _download_with_keras()
  except Exception as e:  # pylint: disable=broad-except
    raise FileNotFoundError(
        "Fashion-MNIST not found. Put the four IDX .gz files ("
        f"{', '.join(FILES['train'] + FILES['test'])}) in one of: "
        f"{', '.join(dirs)} (`data_dir`, $TFREVISIT_DATA_DIR/fashion-mnist, "
        "Keras' cache, or `apt-get install dataset-fashion-mnist`); "
        f"downloading with Keras failed too: {e}") from e


@sources.SOURCES.register("fashion_mnist")
class FashionMnistSource(sources.IndexedSource):
  """Fashion-MNIST, images uint8 [28, 28, 3] (gray copied to 3 channels)."""

  def __init__(self, *, data_dir: Optional[str] = None,
               held_out_fraction: float = sources.HELD_OUT_FRACTION):
    self.name = "fashion_mnist"
    self.num_classes = 10
    train, test = load(data_dir)
    self._parts = {"train": train, "test": test}
    self._num_held_out = sources.held_out_size(len(train[1]), held_out_fraction)

  def _locate(self, split):
    return sources.locate_split(
        split, lambda part: len(self._parts[part][1]), self._num_held_out)

  def _load_fn(self, part):
    images, labels = (tf.constant(a) for a in self._parts[part])

    def load_example(index):
      image = tf.image.grayscale_to_rgb(tf.gather(images, index)[..., None])
      label = tf.cast(tf.gather(labels, index), tf.int32)
      return {"image": image, "label": label}
    return load_example
