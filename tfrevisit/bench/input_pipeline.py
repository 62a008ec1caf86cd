"""Input-pipeline throughput of each paper recipe against a decode-only floor.

Builds a folder of ImageNet-sized JPEGs (Fashion-MNIST upscaled to 500x375,
tinted, with light noise so that they are not trivially compressible), then
measures each recipe through `make_dataset` and the decode-only pipeline on the
same files (the floor cost, measured again right before each recipe): source
images per second (wall clock) and CPU milliseconds per image. Ratios are recipe
throughput / decode-only throughput. Two extra rows decode the whole JPEG before
the Inception crop, to show what `tf.image.decode_and_crop_jpeg` saves.

  python -m tfrevisit.bench.input_pipeline [--num_images 300] [--seconds 4]
      [--repeats 2]
"""
import argparse
import os
import tempfile
import time
from typing import Tuple

import numpy as np
import tensorflow as tf

from tfrevisit import data
from tfrevisit.data import fashion_mnist
from tfrevisit.data import recipes

DECODE_ONLY = "decode"
_IMAGE_SIZE = (375, 500)


def make_jpeg_folder(root: str, num_images: int, seed: int = 0) -> float:
  """Writes `num_images` 500x375 JPEGs under root/train/<class>/.

  Returns:
    The mean file size in KB.
  """
  (images, labels), _ = fashion_mnist.load()
  rng = np.random.default_rng(seed)
  total_bytes = 0
  for i in range(num_images):
    gray = tf.image.resize(images[i][..., None].astype(np.float32), _IMAGE_SIZE)
    tint = rng.uniform(0.5, 1.0, size=3).astype(np.float32)
    noise = rng.normal(0.0, 10.0, size=_IMAGE_SIZE + (3,)).astype(np.float32)
    pixels = tf.cast(tf.clip_by_value(gray * tint + noise, 0, 255), tf.uint8)
    folder = os.path.join(root, "train", f"class_{labels[i]}")
    os.makedirs(folder, exist_ok=True)
    encoded = tf.io.encode_jpeg(pixels, quality=90)
    tf.io.write_file(os.path.join(folder, f"{i:05d}.jpg"), encoded)
    total_bytes += len(encoded.numpy())
  return total_bytes / num_images / 1024


def _cpu_seconds() -> float:
  times = os.times()
  return times.user + times.system


def throughput(source, spec, training: bool, batch_size: int,
               seconds: float) -> Tuple[float, float]:
  """(source images per second, CPU milliseconds per image) of a pipeline.

  CPU time (all threads of this process) is less sensitive than wall time to
  other processes sharing the machine, though not immune.
  """
  ds = data.make_dataset(source, "trainval", spec, batch_size,
                         training=training, seed=0).repeat()
  iterator = iter(ds)
  for _ in range(2):  # Warm-up: tracing, filling buffers.
    next(iterator)
  count, start, cpu_start = 0, time.perf_counter(), _cpu_seconds()
  while time.perf_counter() - start < seconds:
    count += len(next(iterator)["label"])
  wall, cpu = time.perf_counter() - start, _cpu_seconds() - cpu_start
  return count / wall, 1e3 * cpu / count


def pipelines():
  """(row name, spec, training) for every measured pipeline."""
  return [
      ("supervised", recipes.supervised(), True),
      ("supervised, full decode first", "decode|" + recipes.supervised(), True),
      ("rotation", recipes.rotation(), True),
      ("rotation, full decode first", "decode|" + recipes.rotation(), True),
      ("exemplar", recipes.exemplar(), True),
      ("relative patch location / jigsaw", recipes.patches(), True),
      ("eval: image", recipes.eval_image(), False),
      ("eval: image, standardized", recipes.eval_image(value_op="standardization"), False),
      ("eval: patches", recipes.eval_patches(), False),
  ]


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--num_images", type=int, default=300)
  parser.add_argument("--batch_size", type=int, default=32)
  parser.add_argument("--seconds", type=float, default=4.0,
                      help="measuring time per run")
  parser.add_argument("--repeats", type=int, default=2,
                      help="runs per pipeline; the best is reported")
  args = parser.parse_args()
  with tempfile.TemporaryDirectory() as root:
    kilobytes = make_jpeg_folder(root, args.num_images)
    source = data.get_source("image_folder", root=root)
    print(f"{args.num_images} JPEGs of {_IMAGE_SIZE[1]}x{_IMAGE_SIZE[0]}, "
          f"{kilobytes:.0f} KB on average; batch {args.batch_size}; "
          f"{os.cpu_count()} CPUs.")

    def measure(spec, training):
      """Best of `args.repeats` runs: other load only ever slows a run down."""
      runs = [throughput(source, spec, training, args.batch_size, args.seconds)
              for _ in range(args.repeats)]
      return max(r[0] for r in runs), min(r[1] for r in runs)

    print(f"{'pipeline':34s} {'images/s':>8s} {'floor':>7s} {'ratio':>5s}"
          f" {'CPU ms/image':>12s} {'floor':>6s} {'ratio':>5s}")
    for name, spec, training in pipelines():
      # The floor is measured right before each recipe, as the machine's load
      # may drift.
      floor_rate, floor_cpu = measure(DECODE_ONLY, True)
      rate, cpu = measure(spec, training)
      print(f"{name:34s} {rate:8.1f} {floor_rate:7.1f} {rate / floor_rate:5.2f}"
            f" {cpu:12.2f} {floor_cpu:6.2f} {floor_cpu / cpu:5.2f}")


if __name__ == "__main__":
  main()
