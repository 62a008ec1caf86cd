"""Peak memory and time of a RevNet50 training step, with reversible backprop.

Usage:
  python -m tfrevisit.bench.revnet_memory --filters_factor 4 --resolution 128 \
      --batch_size 64 --steps 3

Settings: RevNet50 with `memory_efficient=True` (reversible stages and the
chunked, recomputing root), RevNet50 with it off (plain backprop), ResNet50 v2
at the same widening factor, and RevNet50's root alone (7x7 conv, max-pool,
then the same head) with the switch on ("root only, chunked") and off ("root
only, plain"): the part of the network that reversible stages cannot save,
whose plain backward pass holds the conv's output and its gradient, each
[B, H/2, W/2, 64k]. `--root_chunks` overrides the root's number of batch
chunks (`RevNetRoot.num_chunks`). Each setting runs in its own subprocess, so
that peaks do not mix. One step = forward in training mode, softmax
cross-entropy on a dense head (over `pre_logits`) plus weight decay, backward,
SGD with momentum 0.9, on a fixed random batch.

Memory, in MiB, from two sources:
  alloc     TensorFlow's allocator on the compute device (`CPU:0`, or `GPU:0`
            when there is one): `tf.config.experimental.get_memory_info`.
  rss       the process's resident set size (/proc/self/status: VmRSS, and
            VmHWM for the peak), i.e. host memory including TensorFlow's own
            runtime (libraries, thread pools, graphs), about 1 GiB on CPU.
For each: `base` is what is held before the first training step (the model,
the optimizer's slots, the traced step, after one inference-mode forward pass
of one image); `peak` is the peak over all training steps, first included
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
from tfrevisit.models import revnet

_NUM_CLASSES = 10
_MIB = 2**20
_COLUMNS = ("alloc base", "alloc peak", "alloc step", "rss base", "rss peak",
            "rss step")


def _backbone(arch, **kwargs):
  return lambda filters_factor, input_shape: models.backbone(
      arch, filters_factor=filters_factor, num_classes=_NUM_CLASSES,
      input_shape=input_shape, **kwargs)


def _revnet50_root(memory_efficient):
  def build(filters_factor, input_shape):
    model = models.backbone("revnet50", filters_factor=filters_factor,
                            input_shape=input_shape,
                            memory_efficient=memory_efficient)
    pooled = keras.layers.GlobalAveragePooling2D()(model.output["after_root"])
    return keras.Model(model.input,
                       {"logits": keras.layers.Dense(_NUM_CLASSES)(pooled)})
  return build


# name -> fn(filters_factor, input_shape) -> model with a "logits" output.
_SETTINGS = {
    "revnet50 reversible": _backbone("revnet50", memory_efficient=True),
    "revnet50 plain": _backbone("revnet50", memory_efficient=False),
    "resnet50_v2": _backbone("resnet50_v2"),
    "root only, chunked": _revnet50_root(memory_efficient=True),
    "root only, plain": _revnet50_root(memory_efficient=False),
}
# The root measured along with each RevNet50 setting.
_ROOT_OF = {"revnet50 reversible": "root only, chunked",
            "revnet50 plain": "root only, plain"}


def _rss_bytes(field: str) -> int:
  """A memory field of /proc/self/status ("VmRSS", "VmHWM"), in bytes."""
  with open("/proc/self/status") as f:
    for line in f:
      if line.startswith(field + ":"):
        return int(line.split()[1]) * 1024
  raise RuntimeError(f"/proc/self/status has no {field}.")


def _allocator_bytes(device: str, key: str) -> int:
  """`key` ("current", "peak") of the device's allocator stats, in bytes."""
  try:
    return tf.config.experimental.get_memory_info(device)[key]
  except ValueError as error:  # seen with TF_ENABLE_ONEDNN_OPTS=0
    raise RuntimeError(
        f"{error}; TensorFlow kept CPU allocator stats in our runs only with "
        "oneDNN on (tfrevisit's default): unset TF_ENABLE_ONEDNN_OPTS or set "
        "it to 1.") from error


def _reset_peaks(device: str):
  tf.config.experimental.reset_memory_stats(device)
  with open("/proc/self/clear_refs", "w") as f:  # "5" resets VmHWM
    f.write("5")


def _measure(setting, filters_factor, resolution, batch_size, steps,
             root_chunks):
  """Runs in the worker process: returns the setting's figures as a dict."""
  device = "GPU:0" if tf.config.list_physical_devices("GPU") else "CPU:0"
  keras.utils.set_random_seed(0)
  model = _SETTINGS[setting](filters_factor, (resolution, resolution, 3))
  if root_chunks and any(layer.name == "root" for layer in model.layers):
    model.get_layer("root").num_chunks = root_chunks  # read at trace time
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
  # Warms up the runtime on one image: a whole-batch forward pass would leave
  # its (plain, unchunked) activations' pages resident, hiding them from the
  # training step's RSS.
  tf.function(lambda x: model(x, training=False)["logits"])(images[:1]).numpy()
  base = {"alloc": _allocator_bytes(device, "current"),
          "rss": _rss_bytes("VmRSS")}
  _reset_peaks(device)
  seconds = []
  for _ in range(steps + 1):
    start = time.perf_counter()
    train_step(images, labels).numpy()
    seconds.append(time.perf_counter() - start)
  peak = {"alloc": _allocator_bytes(device, "peak"),
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
             f"--batch_size={args.batch_size}", f"--steps={args.steps}",
             f"--root_chunks={args.root_chunks}"]
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
  parser.add_argument("--root_chunks", type=int, default=0,
                      help="RevNetRoot.num_chunks; 0: the layer's default")
  parser.add_argument("--settings", nargs="+", default=list(_SETTINGS),
                      choices=list(_SETTINGS))
  parser.add_argument("--worker", choices=list(_SETTINGS),
                      help=argparse.SUPPRESS)  # internal: measure one setting
  return parser.parse_args()


def main():
  args = _parse_args()
  if args.worker:
    print(json.dumps(_measure(args.worker, args.filters_factor,
                              args.resolution, args.batch_size, args.steps,
                              args.root_chunks)))
    return
  chunks = args.root_chunks or revnet.DEFAULT_ROOT_CHUNKS
  print(f"k={args.filters_factor} {args.resolution}x{args.resolution} "
        f"batch={args.batch_size}, root in {chunks} chunks, median of "
        f"{args.steps} steps after the first; memory in MiB")
  print(f"{'setting':20s}" + "".join(f"{column:>11s}" for column in _COLUMNS)
        + f"{'step s':>8s}{'first s':>8s}")
  results = {}
  for setting in args.settings:
    result = results[setting] = _run_worker(setting, args)
    print(f"{setting:20s}"
          + "".join(f"{result[column]:11.0f}" for column in _COLUMNS)
          + f"{result['seconds']:8.2f}{result['first_seconds']:8.1f}"
          + f"  ({result['device']})")
  _print_ratios(results, "revnet50 reversible",
                ("revnet50 plain", "resnet50_v2", "root only, chunked"))
  _print_ratios(results, "root only, chunked", ("root only, plain",))
  if all(name in results for name in (*_ROOT_OF, *_ROOT_OF.values())):
    stages = {name: results[name]["alloc step"] - results[root]["alloc step"]
              for name, root in _ROOT_OF.items()}
    print(f"alloc step beyond the root's: plain {stages['revnet50 plain']:.0f}"
          f", reversible {stages['revnet50 reversible']:.0f} MiB (x"
          f"{stages['revnet50 plain'] / stages['revnet50 reversible']:.2f})")
  if "revnet50 reversible" in results and "revnet50 plain" in results:
    on, off = results["revnet50 reversible"], results["revnet50 plain"]
    print("target (switch on vs off: >= 2x less step memory, <= 1.5x time): "
          f"alloc step x{off['alloc step'] / on['alloc step']:.2f} less, "
          f"rss step x{off['rss step'] / on['rss step']:.2f} less, "
          f"time x{on['seconds'] / off['seconds']:.2f}")


def _print_ratios(results, reference, others):
  """Prints each of `others`' figures divided by the `reference` setting's."""
  for other in others:
    if reference in results and other in results:
      ratios = ", ".join(
          f"{column} x{results[other][column] / results[reference][column]:.2f}"
          for column in ("alloc step", "alloc peak", "rss step", "rss peak"))
      print(f"{other} / {reference}: {ratios}, time "
            f"x{results[other]['seconds'] / results[reference]['seconds']:.2f}")


if __name__ == "__main__":
  main()
