"""Input-pipeline throughput of each paper recipe against a decode-only floor.

Builds a folder of ImageNet-sized JPEGs (Fashion-MNIST upscaled to 500x375,
tinted, with light noise so that they are not trivially compressible), then
measures each recipe through `make_dataset` and the decode-only pipeline on the
same files (the floor cost, measured again right before each recipe): source
images per second (wall clock) and CPU milliseconds per image. Ratios are recipe
throughput / decode-only throughput. Two extra rows decode the whole JPEG before
the Inception crop, to show what `tf.image.decode_and_crop_jpeg` saves.

Then, per paper config, how many such CPU cores one GPU needs: the config's
training FLOPs per source image (`train_gflops_per_image`: profiler-counted
forward FLOPs of all its views, times 3, or 4 for RevNet's recomputing
backward pass) give the GPU's images/s at `--gpu_tflops` x `--utilisation`;
cores = that rate x the recipe's CPU seconds per image.

  python -m tfrevisit.bench.input_pipeline [--num_images 300] [--seconds 4]
      [--repeats 2] [--pipelines rotation exemplar ...] [--gpu_tflops 989]
      [--utilisation 0.3]
"""
import argparse
import dataclasses
import os
import tempfile
import time
from typing import Dict, Tuple

import numpy as np
import tensorflow as tf

from tfrevisit import data
from tfrevisit import models
from tfrevisit.data import fashion_mnist
from tfrevisit.data import recipes

DECODE_ONLY = "decode"
_IMAGE_SIZE = (375, 500)
# A training step costs about 3x the forward pass (forward, and a backward
# pass of twice its FLOPs); RevNet's reversible backprop recomputes the
# forward pass once more: 4x.
_TRAIN_FLOPS_FACTOR = 3
_REVERSIBLE_TRAIN_FLOPS_FACTOR = 4


@dataclasses.dataclass(frozen=True)
class PaperConfig:
  """What a paper config's training step computes per source image."""
  name: str           # configs/<name>.gin
  pipeline: str       # the row of `pipelines()` that feeds it
  arch: str
  filters_factor: int
  views: int          # backbone inputs per source image
  view_size: int      # their side, in pixels
  patch_mode: bool = False


def paper_configs():
  """The five paper configs (configs/*.gin) as `PaperConfig`s."""
  return [
      PaperConfig("rotation", "rotation", "revnet50", 16, 4, 224),
      PaperConfig("exemplar", "exemplar", "resnet50_v1", 12, 8, 224),
      PaperConfig("relpatch", "relative patch location / jigsaw",
                  "resnet50_v1", 8, 9, 64, patch_mode=True),
      PaperConfig("jigsaw", "relative patch location / jigsaw",
                  "resnet50_v1", 8, 9, 64, patch_mode=True),
      PaperConfig("supervised", "supervised", "resnet50_v2", 4, 1, 224),
  ]


def forward_gflops(arch: str, filters_factor: int, size: int,
                   patch_mode: bool = False) -> float:
  """Float ops (multiply and add counted apart) of one `size`^2 view's
  inference forward pass, in units of 1e9, from the TensorFlow profiler.

  FLOPs are a quadratic in the widening factor k (every conv's input and
  output channels scale with k; the root conv's output and the logits'
  input only once), so they are counted at k = 1, 2, 3 and the quadratic
  through them is evaluated at `filters_factor`: exact, without building a
  wide model's weights.
  """
  counts = [_profiled_gflops(arch, k, size, patch_mode) for k in (1, 2, 3)]
  coefficients = np.polyfit([1, 2, 3], counts, 2)
  return float(np.polyval(coefficients, filters_factor))


def _profiled_gflops(arch, filters_factor, size, patch_mode):
  model = models.backbone(arch, filters_factor=filters_factor,
                          num_classes=1000, patch_mode=patch_mode,
                          input_shape=(size, size, 3))
  graph = tf.function(lambda x: model(x, training=False)["logits"]
                      ).get_concrete_function(
                          tf.TensorSpec([1, size, size, 3], tf.float32)).graph
  options = tf.compat.v1.profiler.ProfileOptionBuilder.float_operation()
  options["output"] = "none"
  return tf.compat.v1.profiler.profile(graph, options=options
                                       ).total_float_ops / 1e9


def train_gflops_per_image(config: PaperConfig) -> float:
  """Training FLOPs per source image (all its views), in units of 1e9."""
  factor = (_REVERSIBLE_TRAIN_FLOPS_FACTOR if config.arch == "revnet50"
            else _TRAIN_FLOPS_FACTOR)
  return factor * config.views * forward_gflops(
      config.arch, config.filters_factor, config.view_size, config.patch_mode)


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


def cores_needed(cpu_ms_per_image: float, gpu_images_per_sec: float) -> float:
  """CPU cores that one GPU's training rate keeps busy in the input pipeline."""
  return cpu_ms_per_image * gpu_images_per_sec / 1e3


def _print_gpu_feed(cpu_ms: Dict[str, float], gpu_tflops: float,
                    utilisation: float):
  """Per paper config: FLOP-estimated GPU images/s and the cores to feed it."""
  effective = gpu_tflops * utilisation
  print(f"\nCores to feed one GPU at {gpu_tflops:.0f} TFLOP/s x "
        f"{utilisation:.0%} = {effective:.0f} TFLOP/s (training FLOPs = "
        f"{_TRAIN_FLOPS_FACTOR}x forward, {_REVERSIBLE_TRAIN_FLOPS_FACTOR}x "
        "for RevNet)")
  print(f"{'config':11s} {'backbone':18s} {'views':>9s} {'train GFLOPs/img':>17s}"
        f" {'GPU img/s':>10s} {'CPU ms/img':>11s} {'cores':>6s}")
  for config in paper_configs():
    if config.pipeline not in cpu_ms:
      continue
    gflops = train_gflops_per_image(config)
    rate = effective * 1e3 / gflops
    print(f"{config.name:11s} {config.arch + ' k=' + str(config.filters_factor):18s}"
          f" {f'{config.views}x{config.view_size}':>9s} {gflops:17.0f}"
          f" {rate:10.0f} {cpu_ms[config.pipeline]:11.2f}"
          f" {cores_needed(cpu_ms[config.pipeline], rate):6.1f}")


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--num_images", type=int, default=300)
  parser.add_argument("--batch_size", type=int, default=32)
  parser.add_argument("--seconds", type=float, default=4.0,
                      help="measuring time per run")
  parser.add_argument("--repeats", type=int, default=2,
                      help="runs per pipeline; the best is reported")
  parser.add_argument("--pipelines", nargs="+", default=None,
                      help="row names to measure (default: all)")
  parser.add_argument("--gpu_tflops", type=float, default=989.0,
                      help="the GPU's dense bf16/fp16 peak (H100/H200 SXM: 989)")
  parser.add_argument("--utilisation", type=float, default=0.3,
                      help="assumed fraction of the peak a training step gets")
  args = parser.parse_args()
  rows = [row for row in pipelines()
          if args.pipelines is None or row[0] in args.pipelines]
  cpu_ms = {}
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
    for name, spec, training in rows:
      # The floor is measured right before each recipe, as the machine's load
      # may drift.
      floor_rate, floor_cpu = measure(DECODE_ONLY, True)
      rate, cpu = measure(spec, training)
      cpu_ms[name] = cpu
      print(f"{name:34s} {rate:8.1f} {floor_rate:7.1f} {rate / floor_rate:5.2f}"
            f" {cpu:12.2f} {floor_cpu:6.2f} {floor_cpu / cpu:5.2f}", flush=True)
  _print_gpu_feed(cpu_ms, args.gpu_tflops, args.utilisation)


if __name__ == "__main__":
  main()
