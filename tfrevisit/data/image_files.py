"""Sources of loose image files: a class-per-folder tree or a list file.

Images are yielded encoded (JPEG/PNG bytes) and decoded lazily by the
preprocessing, so that random crops decode only their window. Files that cannot
be read or decoded fail in the pipeline, where `make_dataset` skips and counts
them (`Source.may_contain_corrupt_images`).

`val` is the last `held_out_fraction` of the official training files taken in a
fixed pseudo-random order (seed 0, independent of the run's seed), so that it
covers all classes although files are listed class by class.
"""
import logging
import os
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import tensorflow as tf

from tfrevisit.data import sources

log = logging.getLogger("tfrevisit.data.image_files")

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png")
_HELD_OUT_ORDER_SEED = 0

Files = Tuple[List[str], List[int]]  # Paths and their labels.


class FileSource(sources.IndexedSource):
  """Images read from files; example = {"image": encoded string, "label"}."""

  may_contain_corrupt_images = True

  def __init__(self, name: str, num_classes: int,
               list_files: Callable[[str], Files], held_out_fraction: float):
    """Builds the source.

    Args:
      name: the source's name.
      num_classes: number of classes.
      list_files: official part (`train` or `test`) -> (paths, labels); called
        once per part, on first use.
      held_out_fraction: fraction of the official training files kept as `val`.
    """
    self.name = name
    self.num_classes = num_classes
    self._list_files = list_files
    self._held_out_fraction = held_out_fraction
    self._parts: Dict[str, Files] = {}

  def _files(self, part: str) -> Files:
    if part not in self._parts:
      paths, labels = self._list_files(part)
      if part == "train":
        rng = np.random.default_rng(_HELD_OUT_ORDER_SEED)
        order = rng.permutation(len(paths))
        paths, labels = [paths[i] for i in order], [labels[i] for i in order]
      self._parts[part] = (paths, labels)
    return self._parts[part]

  def _locate(self, split):
    num_held_out = sources.held_out_size(len(self._files("train")[0]),
                                         self._held_out_fraction)
    return sources.locate_split(split, lambda part: len(self._files(part)[0]),
                                num_held_out)

  def _load_fn(self, part):
    paths, labels = self._files(part)
    paths, labels = tf.constant(paths), tf.constant(labels, tf.int32)

    def load_example(index):
      return {"image": tf.io.read_file(tf.gather(paths, index)),
              "label": tf.gather(labels, index)}
    return load_example


def _class_names(directory: str) -> List[str]:
  if not os.path.isdir(directory):
    raise FileNotFoundError(f"Image folder {directory} does not exist.")
  names = sorted(e.name for e in os.scandir(directory)
                 if e.is_dir() and not e.name.startswith("."))
  if not names:
    raise ValueError(f"Image folder {directory} has no class sub-folders; "
                     "expected one sub-folder of images per class.")
  return names


def _list_class_folders(directory: str, classes: Sequence[str]) -> Files:
  """Images in `directory`/<class>/, labelled by position in `classes`."""
  class_index = {name: i for i, name in enumerate(classes)}
  paths, labels, num_ignored = [], [], 0
  for name in _class_names(directory):
    if name not in class_index:
      raise ValueError(f"Class folder {os.path.join(directory, name)} is not "
                       "among the training classes.")
    for entry in sorted(os.scandir(os.path.join(directory, name)),
                        key=lambda e: e.name):
      if entry.is_file() and entry.name.lower().endswith(IMAGE_EXTENSIONS):
        paths.append(entry.path)
        labels.append(class_index[name])
      else:
        num_ignored += 1
  if not paths:
    raise ValueError(f"No {'/'.join(IMAGE_EXTENSIONS)} images in {directory}.")
  log.info("%s: %d images in %d classes (%d other entries ignored).",
           directory, len(paths), len(classes), num_ignored)
  return paths, labels


@sources.SOURCES.register("image_folder")
def image_folder(*, data_dir: Optional[str] = None, root: Optional[str] = None,
                 train_subdir: str = "train", test_subdir: str = "val",
                 held_out_fraction: float = sources.HELD_OUT_FRACTION
                ) -> FileSource:
  """Images in `root/<train_subdir|test_subdir>/<class>/*.{jpg,jpeg,png}`.

  This is ImageNet's usual layout (`train/` and `val/`, one sub-folder per
  synset). The class index is the position of the folder name in the sorted
  list of `train_subdir`'s sub-folders; other files are ignored.

  Args:
    data_dir: the root, when `root` is not given.
    root: the folder holding `train_subdir` and `test_subdir`.
    train_subdir: sub-folder with the official training images.
    test_subdir: sub-folder with the official validation images (`test`).
    held_out_fraction: fraction of the training images kept as `val`.
  """
  root = root or data_dir
  if not root:
    raise ValueError("image_folder needs `root` (or `data_dir`).")
  classes = _class_names(os.path.join(root, train_subdir))
  subdirs = {"train": train_subdir, "test": test_subdir}

  def list_files(part):
    return _list_class_folders(os.path.join(root, subdirs[part]), classes)
  return FileSource("image_folder", len(classes), list_files, held_out_fraction)


def read_list_file(path: str, root: str) -> Files:
  """Parses `relative/path label` lines; paths are resolved against `root`."""
  if not os.path.isfile(path):
    raise FileNotFoundError(f"List file {path} does not exist.")
  paths, labels = [], []
  with open(path) as f:
    for line_number, line in enumerate(f, 1):
      if not line.strip():
        continue
      fields = line.rsplit(maxsplit=1)
      if len(fields) != 2 or not fields[1].lstrip("-").isdigit():
        raise ValueError(f"{path}:{line_number}: expected "
                         f"`relative/path label`, got {line.strip()!r}.")
      paths.append(os.path.join(root, fields[0]))
      labels.append(int(fields[1]))
  if not paths:
    raise ValueError(f"List file {path} is empty.")
  return paths, labels


@sources.SOURCES.register("list_file")
def list_file(*, train_list: str, test_list: Optional[str] = None,
              data_dir: Optional[str] = None, root: Optional[str] = None,
              num_classes: Optional[int] = None,
              held_out_fraction: float = sources.HELD_OUT_FRACTION
             ) -> FileSource:
  """Images named in list files of `relative/path label` lines (Places205).

  Args:
    train_list: list of the official training images.
    test_list: list of the official validation images (`test`).
    data_dir: the root, when `root` is not given.
    root: folder that the listed paths (and relative list paths) start from.
    num_classes: defaults to the largest training label + 1.
    held_out_fraction: fraction of the training images kept as `val`.
  """
  root = root or data_dir
  if not root:
    raise ValueError("list_file needs `root` (or `data_dir`).")
  train_files = read_list_file(os.path.join(root, train_list), root)

  def list_files(part):
    if part == "train":
      return train_files
    if test_list is None:
      raise ValueError("list_file source has no `test_list`; cannot read the "
                       "test split.")
    return read_list_file(os.path.join(root, test_list), root)

  return FileSource("list_file", num_classes or max(train_files[1]) + 1,
                    list_files, held_out_fraction)
