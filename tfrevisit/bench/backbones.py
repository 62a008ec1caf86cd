"""Training-step throughput of our backbones vs keras.applications' ResNet50s.

Usage:
  python -m tfrevisit.bench.backbones --arch resnet50_v1 --filters_factor 4 \
      --resolution 64 --batch_size 32 --steps 10

One step = forward, softmax cross-entropy on a dense head over `pre_logits`
(plus our weight-decay losses), backward, SGD with momentum 0.9, on a fixed
random batch. Ours and the reference (keras.applications.ResNet50 for v1,
ResNet50V2 for v2, weights=None, same input shape and head) run alternate
steps, so that load from other processes hits both alike; images/s is the
batch size over the median step time (best: over the fastest step, closest to
an unloaded machine), and the speed ratio is the median over
adjacent step pairs of (reference step time / our step time). Forward GFLOPs
per image are counted by the TensorFlow profiler.
"""
import argparse
import statistics
import time

import keras
import numpy as np
import tensorflow as tf

from tfrevisit import models

_NUM_CLASSES = 10
_REFERENCES = {"resnet50_v1": keras.applications.ResNet50,
               "resnet50_v2": keras.applications.ResNet50V2}


def _ours(arch, filters_factor, resolution):
  model = models.backbone(arch, filters_factor=filters_factor,
                          num_classes=_NUM_CLASSES,
                          input_shape=(resolution, resolution, 3))
  return model, lambda images, training: model(
      images, training=training)["logits"]


def _reference(arch, resolution):
  model = _REFERENCES[arch](
      weights=None, input_shape=(resolution, resolution, 3),
      classes=_NUM_CLASSES, classifier_activation=None)
  return model, lambda images, training: model(images, training=training)


def _forward_gflops(logits_fn, resolution):
  """Float ops of one image's inference forward pass, in units of 1e9."""
  graph = tf.function(lambda x: logits_fn(x, training=False)).get_concrete_function(
      tf.TensorSpec([1, resolution, resolution, 3], tf.float32)).graph
  options = tf.compat.v1.profiler.ProfileOptionBuilder.float_operation()
  options["output"] = "none"
  profile = tf.compat.v1.profiler.profile(graph, options=options)
  return profile.total_float_ops / 1e9


def _train_step(model, logits_fn, jit_compile):
  optimizer = keras.optimizers.SGD(learning_rate=0.01, momentum=0.9)

  @tf.function(jit_compile=jit_compile)
  def step(images, labels):
    with tf.GradientTape() as tape:
      logits = logits_fn(images, training=True)
      loss = tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(
          labels, logits))
      loss += sum(model.losses)
    variables = model.trainable_variables
    optimizer.apply(tape.gradient(loss, variables), variables)
    return loss

  return step


def _step_seconds(step, images, labels):
  start = time.perf_counter()
  step(images, labels).numpy()
  return time.perf_counter() - start


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--arch", default="resnet50_v1",
                      choices=models.BACKBONES.names() + ["all"])
  parser.add_argument("--filters_factor", type=int, default=4)
  parser.add_argument("--resolution", type=int, default=64)
  parser.add_argument("--batch_size", type=int, default=32)
  parser.add_argument("--steps", type=int, default=20,
                      help="timed steps per model, interleaved between models")
  parser.add_argument("--jit", action=argparse.BooleanOptionalAction,
                      default=False, help="XLA-compile the training step")
  args = parser.parse_args()

  archs = models.BACKBONES.names() if args.arch == "all" else [args.arch]
  rng = np.random.default_rng(0)
  images = tf.constant(rng.standard_normal(
      (args.batch_size, args.resolution, args.resolution, 3), np.float32))
  labels = tf.constant(rng.integers(0, _NUM_CLASSES, args.batch_size))
  print(f"k={args.filters_factor} {args.resolution}x{args.resolution} "
        f"batch={args.batch_size} jit={args.jit} steps={args.steps}")
  print(f"{'model':32s} {'images/s':>9s} {'best':>9s} {'fwd GFLOPs/img':>15s}")
  for arch in archs:
    runs = {f"ours {arch} k={args.filters_factor}": _ours(
        arch, args.filters_factor, args.resolution)}
    if arch in _REFERENCES:
      runs[f"keras {_REFERENCES[arch].__name__}"] = _reference(
          arch, args.resolution)
    steps = {name: _train_step(*run, args.jit) for name, run in runs.items()}
    for step in steps.values():  # compile and warm up
      for _ in range(2):
        _step_seconds(step, images, labels)
    seconds = {name: [] for name in runs}
    for _ in range(args.steps):
      for name, step in steps.items():
        seconds[name].append(_step_seconds(step, images, labels))
    for name, (_, logits_fn) in runs.items():
      print(f"{name:32s} "
            f"{args.batch_size / statistics.median(seconds[name]):9.1f} "
            f"{args.batch_size / min(seconds[name]):9.1f} "
            f"{_forward_gflops(logits_fn, args.resolution):15.3f}")
    if len(seconds) == 2:
      ours, reference = seconds.values()
      ratio = statistics.median(r / o for o, r in zip(ours, reference))
      print(f"{'speed ratio ours / keras':32s} {ratio:9.2f}")


if __name__ == "__main__":
  main()
