"""Per-layer features of an exported encoder, cached on disk in shards.

Every end point of the SavedModel's `representation` signature is pooled to
about `target` values (`pooling.pool_to_size`) and flattened; patch models'
nine per-patch features are combined (`pooling.combine_patches`). Features are
written in shards of `shard_size` examples, one directory per shard holding
one `.npy` per end point plus `labels.npy`; a shard appears (atomic rename)
only when complete, so an interrupted run resumes after its last shard.
settings.json indexes the shards: from its example count, batch size and
batches per shard follows each shard's row count. A shard whose files do not
match it (truncated or corrupt `.npy`, wrong row count, a missing end point or
another width than shard 0) is recomputed, with the shards after it. `.npy`
files are read with `allow_pickle=False`.
Cached features are read back as `StackedRows` of memory-mapped shards, so
that a split larger than memory is only ever read in chunks.
"""
import json
import logging
import math
import os
import shutil
import sys
import tempfile
from typing import Dict, Optional, Sequence, Tuple

import keras
import numpy as np
import tensorflow as tf

from tfrevisit import artifacts
from tfrevisit import cli
from tfrevisit import data
from tfrevisit.evaluation import pooling


class StackedRows:
  """Read-only float32 rows [N, F] stacked from blocks without copying them.

  The blocks ([n_i, F] arrays, e.g. memory-mapped shards) are read only when
  indexed; rows can be standardised as they are read, `(x - mean) / std`.
  Indexing with a slice or an integer array returns a NumPy array, and so does
  `np.asarray(rows)`, which reads everything.
  """

  ndim = 2
  dtype = np.dtype(np.float32)

  def __init__(self, blocks: Sequence[np.ndarray],
               mean: Optional[np.ndarray] = None,
               std: Optional[np.ndarray] = None):
    if not blocks:
      raise ValueError("StackedRows needs at least one block.")
    self.blocks = list(blocks)
    self.mean, self.std = mean, std
    self._offsets = np.cumsum([0] + [len(block) for block in self.blocks])
    self.shape = (int(self._offsets[-1]), self.blocks[0].shape[1])

  def __len__(self):
    return self.shape[0]

  def __getitem__(self, index) -> np.ndarray:
    if isinstance(index, slice) and index.indices(len(self))[2] == 1:
      start, stop, _ = index.indices(len(self))
      rows = self._read_range(start, max(start, stop))
    else:
      rows = self._read_indices(np.arange(len(self))[index])
    if self.mean is not None:
      rows = (rows - self.mean) / self.std
    return rows.astype(np.float32, copy=False)

  def __array__(self, dtype=None, copy=None):
    del copy  # Always a new array.
    return self[:] if dtype is None else self[:].astype(dtype)

  def _read_range(self, start: int, stop: int) -> np.ndarray:
    parts = []
    for block, offset in zip(self.blocks, self._offsets):
      low, high = max(start - offset, 0), min(stop - offset, len(block))
      if low < high:
        parts.append(block[low:high])
    if not parts:
      return np.zeros([0, self.shape[1]], np.float32)
    return np.concatenate(parts).astype(np.float32, copy=False)

  def _read_indices(self, indices: np.ndarray) -> np.ndarray:
    rows = np.empty([len(indices), self.shape[1]], np.float32)
    which = np.searchsorted(self._offsets, indices, side="right") - 1
    for block_index in np.unique(which):
      selected = which == block_index
      rows[selected] = self.blocks[block_index][
          indices[selected] - self._offsets[block_index]]
    return rows

  def standardized(self, mean: np.ndarray, std: np.ndarray) -> "StackedRows":
    """The same rows read as (x - mean) / std ([F] each)."""
    return StackedRows(self.blocks, np.float32(mean), np.float32(std))

  def stack(self, other: "StackedRows") -> "StackedRows":
    """These rows followed by `other`'s, all read with this standardisation."""
    return StackedRows(self.blocks + other.blocks, self.mean, self.std)


def column_mean_std(rows, chunk_rows: int = 65536
                    ) -> Tuple[np.ndarray, np.ndarray]:
  """Per-column mean and standard deviation of [N, F] rows, read in chunks.

  Returns:
    ([F], [F]) float64 arrays.
  """
  total = np.zeros(rows.shape[1])
  total_square = np.zeros(rows.shape[1])
  for start in range(0, len(rows), chunk_rows):
    chunk = np.asarray(rows[start:start + chunk_rows], np.float64)
    total += chunk.sum(axis=0)
    total_square += np.square(chunk).sum(axis=0)
  mean = total / len(rows)
  return mean, np.sqrt(np.maximum(total_square / len(rows) - mean**2, 0))


Features = Dict[str, StackedRows]


def load_module(path: str) -> Tuple[tf.Module, dict]:
  """Loads an exported encoder and its metadata (`tfrevisit.artifacts`;
  empty if not ours).

  Raises:
    FileNotFoundError: `path` is not a SavedModel directory.
    ValueError: the SavedModel has no `representation` signature.
  """
  if not tf.saved_model.contains_saved_model(path):
    raise FileNotFoundError(
        f"--hub_module {path!r} is not a SavedModel directory; pass the "
        "directory that `python -m tfrevisit.export` wrote, e.g. "
        "WORKDIR/export/latest.")
  module = tf.saved_model.load(path)
  if "representation" not in module.signatures:
    raise ValueError(
        f"The SavedModel at {path!r} has no 'representation' signature (it has "
        f"{sorted(module.signatures)}); export encoders with "
        "`python -m tfrevisit.export`.")
  return module, artifacts.read_metadata(path)


def call_signature(signature, inputs: tf.Tensor):
  """Calls a one-input signature whatever its input's key: `image` (the
  release's TF-Hub convention), or `images` in older tfrevisit exports."""
  (key,) = signature.structured_input_signature[1]
  return signature(**{key: inputs})


def make_featurizer(module: tf.Module, pooling_mode: str = "max",
                    target: int = 9000, patch_combine: str = "avg",
                    end_points: Optional[Sequence[str]] = None):
  """A tf.function: preprocessed images -> {end point: [B, F] float32}.

  Images are [B, h, w, 3], or [B, P, h, w, 3] patches (patch models), whose P
  per-patch features are combined with `patch_combine`. `end_points` keeps
  only these (default: all).
  """
  representation = module.signatures["representation"]

  @tf.function
  def featurize(images):
    num_patches = images.shape[1] if images.shape.rank == 5 else None
    if num_patches:
      images = tf.reshape(images, [-1, *images.shape[2:]])
    outputs = call_signature(representation, images)
    features = {}
    for name, value in outputs.items():
      if end_points is not None and name not in end_points:
        continue
      value = pooling.pool_to_size(tf.cast(value, tf.float32), pooling_mode, target)
      if num_patches:
        value = pooling.combine_patches(value, patch_combine, num_patches)
      features[name] = value
    return features

  return featurize


def _write_shard(directory: str, index: int, features: Dict[str, np.ndarray],
                 labels: np.ndarray) -> None:
  tmp = tempfile.mkdtemp(prefix=artifacts.TMP_PREFIX, dir=directory)
  for name, value in features.items():
    np.save(os.path.join(tmp, f"{name}.npy"), value)
  np.save(os.path.join(tmp, "labels.npy"), labels)
  os.rename(tmp, os.path.join(directory, f"shard-{index:05d}"))


def _finished_shards(directory: str):
  return sorted(d for d in os.listdir(directory) if d.startswith("shard-"))


def _load(path: str) -> np.ndarray:
  return np.load(path, mmap_mode="r", allow_pickle=False)


def _shard_problem(shard: str, num_rows: int, widths: Dict[str, int]
                   ) -> Optional[str]:
  """Why `shard` breaks the index's promise ({end point: width}, `num_rows`
  rows each), or None if it keeps it."""
  expected = {f"{name}.npy": (num_rows, width) for name, width in widths.items()}
  expected["labels.npy"] = (num_rows,)
  for filename, shape in sorted(expected.items()):
    try:
      array = _load(os.path.join(shard, filename))
    except (OSError, ValueError, EOFError) as e:
      return f"{filename}: {cli.one_line(e)}"
    if array.shape != shape:
      return f"{filename} has shape {array.shape}, not {shape}"
  return None


def _drop_bad_shards(directory: str, rows_per_shard: int,
                     num_examples: int) -> int:
  """Deletes the first shard that breaks the index's promise and every shard
  after it; returns the number of good shards kept."""
  shards = _finished_shards(directory)
  widths = {}
  if shards:
    first = os.path.join(directory, shards[0])
    widths = {f[:-4]: _width(os.path.join(first, f)) for f in os.listdir(first)
              if f.endswith(".npy") and f != "labels.npy"}
  for index, name in enumerate(shards):
    num_rows = min(rows_per_shard, num_examples - index * rows_per_shard)
    problem = (_shard_problem(os.path.join(directory, name), num_rows, widths)
               if name == f"shard-{index:05d}" else "out of sequence")
    if problem:
      logging.warning("Feature shard %s is bad (%s); recomputing it and the "
                      "%d after it.", os.path.join(directory, name), problem,
                      len(shards) - index - 1)
      for stale in shards[index:]:
        shutil.rmtree(os.path.join(directory, stale))
      return index
  return len(shards)


def _width(path: str) -> Optional[int]:
  """The feature width of an end point's `.npy` (None if unreadable)."""
  try:
    array = _load(path)
  except (OSError, ValueError, EOFError):
    return None
  return array.shape[1] if array.ndim == 2 else None


def _read_shards(directory: str, num_examples: int
                 ) -> Tuple[Features, np.ndarray]:
  """The first `num_examples` rows of the cache, memory-mapped."""
  shards = [os.path.join(directory, s) for s in _finished_shards(directory)]
  names = sorted(f[:-4] for f in os.listdir(shards[0]) if f != "labels.npy")

  def blocks(name):
    arrays, remaining = [], num_examples
    for shard in shards:
      if remaining > 0:
        array = _load(os.path.join(shard, f"{name}.npy"))
        arrays.append(array[:remaining])
        remaining -= len(arrays[-1])
    return arrays

  return ({name: StackedRows(blocks(name)) for name in names},
          np.concatenate(blocks("labels")))


def read_cached_features(cache_dir: str) -> Tuple[Features, np.ndarray]:
  """The features and labels that `cached_features` wrote to `cache_dir`."""
  with open(os.path.join(cache_dir, "settings.json")) as f:
    num_examples = json.load(f)["num_examples"]
  return _read_shards(cache_dir, num_examples)


def _check_cache_settings(directory: str, settings: dict) -> None:
  """Refuses to mix shards made with other settings (model, pooling, ...)."""
  path = os.path.join(directory, "settings.json")
  if os.path.exists(path):
    with open(path) as f:
      cached = json.load(f)
    if cached != settings:
      raise ValueError(
          f"The feature cache {directory} was made with other settings "
          f"({cached}) than now ({settings}); use another --workdir or delete "
          "that directory.")
  else:
    with open(path, "w") as f:
      json.dump(settings, f, sort_keys=True)


def cached_features(module: tf.Module, source: data.Source, split: str,
                    preprocess: str, cache_dir: str, *, batch_size: int = 64,
                    shard_size: int = 4096, max_examples: Optional[int] = None,
                    pooling_mode: str = "max", target: int = 9000,
                    patch_combine: str = "avg", settings: Optional[dict] = None
                    ) -> Tuple[Features, np.ndarray]:
  """Features of every end point for `split` ([N, F] each) and labels [N].

  Reuses the finished shards under `cache_dir` and extracts the rest. The
  features are `StackedRows` of the memory-mapped shards.
  `max_examples` keeps the split's first examples only (quick runs).
  """
  num_examples = source.num_examples(split)
  if max_examples:
    num_examples = min(num_examples, max_examples)
  batches_per_shard = max(1, shard_size // batch_size)
  num_batches = math.ceil(num_examples / batch_size)
  num_shards = math.ceil(num_batches / batches_per_shard)
  os.makedirs(cache_dir, exist_ok=True)
  _check_cache_settings(cache_dir, dict(
      settings or {}, split=split, preprocess=preprocess, pooling=pooling_mode,
      target=target, patch_combine=patch_combine, num_examples=num_examples,
      batch_size=batch_size, batches_per_shard=batches_per_shard))
  artifacts.remove_temporaries(cache_dir)
  rows_per_shard = batches_per_shard * batch_size
  done = _drop_bad_shards(cache_dir, rows_per_shard, num_examples)
  cli.begin_work()
  if done < num_shards:
    featurize = make_featurizer(module, pooling_mode, target, patch_combine)
    dataset = data.make_dataset(source, split, preprocess, batch_size,
                                training=False).take(num_batches)
    batches = iter(dataset.skip(done * batches_per_shard))
    progress = _progress(num_batches, done * batches_per_shard, split)
    for index in range(done, num_shards):
      parts, labels = {}, []
      for _ in range(batches_per_shard):
        batch = next(batches, None)
        if batch is None:
          break
        for name, value in featurize(batch["image"]).items():
          parts.setdefault(name, []).append(value.numpy())
        labels.append(batch["label"].numpy())
        progress.add(1)
      # The last batch runs past `max_examples` when it cuts a split short.
      rows = min(rows_per_shard, num_examples - index * rows_per_shard)
      _write_shard(cache_dir, index,
                   {k: np.concatenate(v)[:rows] for k, v in parts.items()},
                   np.concatenate(labels)[:rows])
  return _read_shards(cache_dir, num_examples)


def _progress(total_batches: int, done_batches: int, split: str):
  verbose = 1 if sys.stderr.isatty() else 0
  print(f"Extracting {split} features: {total_batches - done_batches} batches "
        f"to go of {total_batches}.", file=sys.stderr)
  bar = keras.utils.Progbar(total_batches, verbose=verbose, unit_name="batch")
  bar.update(done_batches)
  return bar

