"""Per-layer features of an exported encoder, cached on disk in shards.

Every end point of the SavedModel's `representation` signature is pooled to
about `target` values (`pooling.pool_to_size`) and flattened; patch models'
nine per-patch features are combined (`pooling.combine_patches`). Features are
written in shards of `shard_size` examples, one directory per shard holding
one `.npy` per end point plus `labels.npy`; a shard appears (atomic rename)
only when complete, so an interrupted run resumes after its last shard.
"""
import json
import math
import os
import sys
import tempfile
from typing import Dict, Optional, Tuple

import keras
import numpy as np
import tensorflow as tf

from tfrevisit import data
from tfrevisit import export
from tfrevisit.evaluation import pooling

Features = Dict[str, np.ndarray]


def load_module(path: str) -> Tuple[tf.Module, dict]:
  """Loads an exported encoder and its metadata (empty if not ours).

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
  metadata_path = os.path.join(path, "assets", export.METADATA_FILE)
  metadata = {}
  if os.path.exists(metadata_path):
    with open(metadata_path) as f:
      metadata = json.load(f)
  return module, metadata


def make_featurizer(module: tf.Module, pooling_mode: str = "max",
                    target: int = 9000, patch_combine: str = "avg"):
  """A tf.function: preprocessed images -> {end point: [B, F] float32}.

  Images are [B, h, w, 3], or [B, P, h, w, 3] patches (patch models), whose P
  per-patch features are combined with `patch_combine`.
  """
  representation = module.signatures["representation"]

  @tf.function
  def featurize(images):
    num_patches = images.shape[1] if images.shape.rank == 5 else None
    if num_patches:
      images = tf.reshape(images, [-1, *images.shape[2:]])
    outputs = representation(images=images)
    features = {}
    for name, value in outputs.items():
      value = pooling.pool_to_size(tf.cast(value, tf.float32), pooling_mode, target)
      if num_patches:
        value = pooling.combine_patches(value, patch_combine, num_patches)
      features[name] = value
    return features

  return featurize


def _write_shard(directory: str, index: int, features: Features,
                 labels: np.ndarray) -> None:
  tmp = tempfile.mkdtemp(prefix=".tmp-", dir=directory)
  for name, value in features.items():
    np.save(os.path.join(tmp, f"{name}.npy"), value)
  np.save(os.path.join(tmp, "labels.npy"), labels)
  os.rename(tmp, os.path.join(directory, f"shard-{index:05d}"))


def _finished_shards(directory: str):
  return sorted(d for d in os.listdir(directory) if d.startswith("shard-"))


def _read_shards(directory: str) -> Tuple[Features, np.ndarray]:
  shards = [os.path.join(directory, s) for s in _finished_shards(directory)]
  names = sorted(f[:-4] for f in os.listdir(shards[0]) if f != "labels.npy")
  load = lambda shard, name: np.load(os.path.join(shard, f"{name}.npy"),
                                     mmap_mode="r")
  features = {n: np.concatenate([load(s, n) for s in shards]) for n in names}
  return features, np.concatenate([load(s, "labels") for s in shards])


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

  Reuses the finished shards under `cache_dir` and extracts the rest.
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
  done = len(_finished_shards(cache_dir))
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
      _write_shard(cache_dir, index, {k: np.concatenate(v) for k, v in parts.items()},
                   np.concatenate(labels))
  features, labels = _read_shards(cache_dir)
  return ({k: v[:num_examples] for k, v in features.items()},
          labels[:num_examples])


def _progress(total_batches: int, done_batches: int, split: str):
  verbose = 1 if sys.stderr.isatty() else 0
  print(f"Extracting {split} features: {total_batches - done_batches} batches "
        f"to go of {total_batches}.", file=sys.stderr)
  bar = keras.utils.Progbar(total_batches, verbose=verbose, unit_name="batch")
  bar.update(done_batches)
  return bar

