"""The cost of exact resume: positioning a training pipeline at a late step.

A resumed run builds its input pipeline at the checkpoint's step
(`make_dataset(..., start_batch=...)`). This measures, on a list file of
`--num_entries` images (ImageNet-sized: 1.28M), the wall time from building
the pipeline to its first batch when it starts at step 0 and when it starts
late in a 90-epoch run (epoch `--epoch` plus half an epoch), for

  * `list_file` (random access, `IndexedSource`): the position maps to an
    index through a stateless permutation, nothing before it is read;
  * the sequential path of sources without random access (TFDS, via
    `sources.epoch_stream`): the skipped part of the current epoch is read
    without decoding. Measured on in-memory records (the file paths), so it is
    the lower bound; on TFRecords it is bounded by reading that many records.

The list file names `--num_images` real JPEGs over and over, so that the first
batch reads and decodes real files.

  python -m tfrevisit.bench.resume_skip [--num_entries 1281167] [--epoch 80]
"""
import argparse
import os
import tempfile
import time

import tensorflow as tf

from tfrevisit import data
from tfrevisit.bench import input_pipeline
from tfrevisit.data import sources

_SPEC = "inception_preprocess(224)|rotate"


def write_list_file(root: str, num_entries: int) -> str:
  """A list file of `num_entries` lines naming the JPEGs under root/train."""
  images = sorted(os.path.join(dirpath, name)
                  for dirpath, _, names in os.walk(os.path.join(root, "train"))
                  for name in names)
  path = os.path.join(root, "train.txt")
  with open(path, "w") as f:
    for i in range(num_entries):
      f.write(f"{os.path.relpath(images[i % len(images)], root)} {i % 10}\n")
  return path


def seconds_to_first_batch(make) -> float:
  """Wall seconds from building a dataset (`make()`) to its first batch."""
  start = time.perf_counter()
  next(iter(make()))
  return time.perf_counter() - start


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--num_entries", type=int, default=1_281_167)
  parser.add_argument("--num_images", type=int, default=64)
  parser.add_argument("--epoch", type=int, default=80)
  parser.add_argument("--batch_size", type=int, default=256)
  args = parser.parse_args(argv)

  with tempfile.TemporaryDirectory() as root:
    input_pipeline.make_jpeg_folder(root, args.num_images)
    write_list_file(root, args.num_entries)
    source = data.get_source("list_file", train_list="train.txt", root=root,
                             num_classes=10, held_out_fraction=0.0)
    size = source.num_examples("train")
    steps_per_epoch = size // args.batch_size
    late_step = int((args.epoch + 0.5) * steps_per_epoch)
    print(f"{size} entries, batch {args.batch_size}: {steps_per_epoch} steps "
          f"per epoch; late step = {late_step} (epoch {args.epoch + 0.5}).")

    def random_access(step):
      return lambda: data.make_dataset(source, "train", _SPEC, args.batch_size,
                                       training=True, seed=0, start_batch=step)

    paths = tf.constant(source._files("train")[0])  # pylint: disable=protected-access

    def sequential(step):
      return lambda: sources.epoch_stream(
          tf.data.Dataset.from_tensor_slices(paths), seed=0,
          start=step * args.batch_size, pipeline_size=size).batch(
              args.batch_size)

    rows = []
    for name, make in (("list_file (random access)", random_access),
                       ("sequential skip (TFDS path, in memory)", sequential)):
      seconds_to_first_batch(make(0))  # Warm-up: file cache, tracing.
      first, late = (seconds_to_first_batch(make(step))
                     for step in (0, late_step))
      rows.append((name, first, late))
    print(f"\n| pipeline | first batch at step 0 (s) | at step {late_step} (s) |")
    print("|---|---|---|")
    for name, first, late in rows:
      print(f"| {name} | {first:.2f} | {late:.2f} |")


if __name__ == "__main__":
  main()
