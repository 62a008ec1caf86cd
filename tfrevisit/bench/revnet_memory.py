"""Peak memory and time of a RevNet50 training step, with reversible backprop.

Usage:
  python -m tfrevisit.bench.revnet_memory --filters_factor 4 --resolution 128 \
      --batch_size 64 --steps 3

Settings: RevNet50 with `memory_efficient=True` (reversible backprop), RevNet50
with it off (plain backprop), ResNet50 v2 at the same widening factor, and
RevNet50's root alone (7x7 conv, max-pool, then the same head): the part of
the network that reversible stages cannot save, whose backward pass holds the
conv's output and its gradient, each [B, H/2, W/2, 64k]. Each setting runs in
its own subprocess, so that peaks do not mix. One step = forward in training
mode, softmax cross-entropy on a dense head (over `pre_logits`) plus weight
decay, backward, SGD with momentum 0.9, on a fixed random batch.

Memory, in MiB, from two sources:
  alloc     TensorFlow's allocator on the compute device (`CPU:0`, or `GPU:0`
            when there is one): `tf.config.experimental.get_memory_info`.
  rss       the process's resident set size (/proc/self/status: VmRSS, and
            VmHWM for the peak), i.e. host memory including TensorFlow's own
            runtime (libraries, thread pools, graphs), about 1 GiB on CPU.
For each: `base` is what is held before the first training step (the model,
the optimizer's slots, the traced step, after one inference-mode forward pass
of the batch); `peak` is the peak over all training steps, first included
(both peaks are reset after `base`); `step` = peak - base is what a training
step adds: the activations kept for the backward pass, gradients and
temporaries.
Time: median seconds over `--steps` steps after the first (which also traces
and optimises the graph).
"""
import argparse
import json
import statistics
import subprocess
import sys
import time

import keras
import numpy as np
import tensorflow as tf

from tfrevisit import models

_NUM_CLASSES = 10
_MIB = 2**20
_COLUMNS = ("alloc base", "alloc peak", "alloc step", "rss base", "rss peak",
            "rss step")


def _backbone(arch, **kwargs):
  return lambda filters_factor, input_shape: models.backbone(
      arch, filters_factor=filters_factor, num_classes=_NUM_CLASSES,
      input_shape=input_shape, **kwargs)


def _revnet50_root(filters_factor, input_shape):
  revnet = models.backbone("revnet50", filters_factor=filters_factor,
                           input_shape=input_shape)
  pooled = keras.layers.GlobalAveragePooling2D()(revnet.output["after_root"])
  return keras.Model(revnet.input,
                     {"logits": keras.layers.Dense(_NUM_CLASSES)(pooled)})


# name -> fn(filters_factor, input_shape) -> model with a "logits" output.
_SETTINGS = {
    "revnet50 reversible": _backbone("revnet50", memory_efficient=True),
    "revnet50 plain": _backbone("revnet50", memory_efficient=False),
    "resnet50_v2": _backbone("resnet50_v2"),
    "revnet50 root only": _revnet50_root,
}


def _rss_bytes(field: str) -> int:
  """A memory field of /proc/self/status ("VmRSS", "VmHWM"), in bytes."""
  with open("/proc/self/status") as f:
    for line in f:
      if line.startswith(field + ":"):
        return int(line.split()[1]) * 1024
  raise RuntimeError(f"/proc/self/status has no {field}.")


def _reset_peaks(device: str):
  tf.config.experimental.reset_memory_stats(device)
  with open("/proc/self/clear_refs", "w") as f:  # "5" resets VmHWM
    f.write("5")


def _measure(setting, filters_factor, resolution, batch_size, steps):
  """Runs in the worker process: returns the setting's figures as a dict."""
  device = "GPU:0" if tf.config.list_physical_devices("GPU") else "CPU:0"
  keras.utils.set_random_seed(0)
  model = _SETTINGS[setting](filters_factor, (resolution, resolution, 3))
  optimizer = keras.optimizers.SGD(learning_rate=0.01, momentum=0.9)
  optimizer.build(model.trainable_variables)
  rng = np.random.default_rng(0)
  images = tf.constant(rng.standard_normal(
      (batch_size, resolution, resolution, 3), np.float32))
  labels = tf.constant(rng.integers(0, _NUM_CLASSES, batch_size))

  @tf.function
  def train_step(images, labels):
    with tf.GradientTape() as tape:
      logits = model(images, training=True)["logits"]
      loss = tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(
          labels, logits)) + sum(model.losses)
    variables = model.trainable_variables
    optimizer.apply(tape.gradient(loss, variables), variables)
    return loss

  train_step.get_concrete_function(images, labels)
  tf.function(lambda x: model(x, training=False)["logits"])(images).numpy()
  base = {"alloc": tf.config.experimental.get_memory_info(device)["current"],
          "rss": _rss_bytes("VmRSS")}
  _reset_peaks(device)
  seconds = []
  for _ in range(steps + 1):
    start = time.perf_counter()
    train_step(images, labels).numpy()
    seconds.append(time.perf_counter() - start)
  peak = {"alloc": tf.config.experimental.get_memory_info(device)["peak"],
          "rss": _rss_bytes("VmHWM")}
  result = {"device": device, "seconds": statistics.median(seconds[1:]),
            "first_seconds": seconds[0]}
  for source in ("alloc", "rss"):
    result[f"{source} base"] = base[source] / _MIB
    result[f"{source} peak"] = peak[source] / _MIB
    result[f"{source} step"] = (peak[source] - base[source]) / _MIB
  return result


def _run_worker(setting, args):
  command = [sys.executable, "-m", "tfrevisit.bench.revnet_memory",
             "--worker", setting, f"--filters_factor={args.filters_factor}",
             f"--resolution={args.resolution}",
             f"--batch_size={args.batch_size}", f"--steps={args.steps}"]
  result = subprocess.run(command, capture_output=True, text=True, check=False)
  if result.returncode:
    raise RuntimeError(f"{setting!r} failed (exit {result.returncode}):\n"
                       f"{result.stderr[-3000:]}")
  return json.loads(result.stdout.strip().splitlines()[-1])


def _parse_args():
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--filters_factor", type=int, default=4)
  parser.add_argument("--resolution", type=int, default=128)
  parser.add_argument("--batch_size", type=int, default=64)
  parser.add_argument("--steps", type=int, default=3,
                      help="timed steps per setting, after the first")
  parser.add_argument("--settings", nargs="+", default=list(_SETTINGS),
                      choices=list(_SETTINGS))
  parser.add_argument("--worker", choices=list(_SETTINGS),
                      help=argparse.SUPPRESS)  # internal: measure one setting
  return parser.parse_args()


def main():
  args = _parse_args()
  if args.worker:
    print(json.dumps(_measure(args.worker, args.filters_factor,
                              args.resolution, args.batch_size, args.steps)))
    return
  print(f"k={args.filters_factor} {args.resolution}x{args.resolution} "
        f"batch={args.batch_size}, median of {args.steps} steps after the "
        "first; memory in MiB")
  print(f"{'setting':20s}" + "".join(f"{column:>11s}" for column in _COLUMNS)
        + f"{'step s':>8s}{'first s':>8s}")
  results = {}
  for setting in args.settings:
    result = results[setting] = _run_worker(setting, args)
    print(f"{setting:20s}"
          + "".join(f"{result[column]:11.0f}" for column in _COLUMNS)
          + f"{result['seconds']:8.2f}{result['first_seconds']:8.1f}"
          + f"  ({result['device']})")
  reversible = results.get("revnet50 reversible")
  for other in ("revnet50 plain", "resnet50_v2", "revnet50 root only"):
    if reversible and other in results:
      ratios = ", ".join(
          f"{column} x{results[other][column] / reversible[column]:.2f}"
          for column in ("alloc step", "alloc peak", "rss step", "rss peak"))
      print(f"{other} / revnet50 reversible: {ratios}, time "
            f"x{results[other]['seconds'] / reversible['seconds']:.2f}")
  root = results.get("revnet50 root only")
  if root and reversible and "revnet50 plain" in results:
    stages = {name: results[name]["alloc step"] - root["alloc step"]
              for name in ("revnet50 plain", "revnet50 reversible")}
    print(f"alloc step beyond the root's: plain {stages['revnet50 plain']:.0f}"
          f", reversible {stages['revnet50 reversible']:.0f} MiB (x"
          f"{stages['revnet50 plain'] / stages['revnet50 reversible']:.2f})")


if __name__ == "__main__":
  main()
