"""Training-step throughput: our `loop.make_train_step` vs `keras.Model.fit`.

Usage:
  python -m tfrevisit.bench.trainer                      # quick CPU defaults
  python -m tfrevisit.bench.trainer --tasks rotation --filters_factor 4 \
      --image_size 224 --batch_size 64 --jit both --precision both --repeats 5

For each task, configuration (mixed precision on/off, XLA on/off) and repeat,
the same task (same encoder, head and weights) is trained `--steps` steps by
  ours  `training.loop.make_train_step(task, optimizer, strategy, batch_size,
        jit_compile=...)`, called as `train()`'s loop calls it
        (`steps_per_execution` steps per call, as `train.steps_per_loop`; its
        metrics fetched to the host after each call), and
  fit   `keras.Model.fit` on a Keras model whose `train_step` computes the same
        loss (`task.loss` averaged over the batch plus
        `task.regularization_loss()`) and applies the same optimizer (SGD with
        momentum 0.9; LossScaleOptimizer under mixed_float16),
with `steps_per_execution` and `jit_compile` set equally, on the same batch
(one preprocessed batch of random images, repeated: the input pipeline is
`tfrevisit.bench.input_pipeline`'s subject). Ours and fit alternate, one
`--steps` block each per repeat, so that load from other processes hits both;
each block is timed after a warm-up (tracing) block. images/s = batch size x
steps / median block time; ratio = median over repeats of (fit block time /
our block time): > 1 means ours is faster.
"""
import argparse
import statistics
import time
from typing import Dict, List, Optional

import keras
import numpy as np
import tensorflow as tf

from tfrevisit import data
from tfrevisit import models
from tfrevisit import pretext
from tfrevisit.training import loop
from tfrevisit.data import sources

# Task options that shrink a task to `--image_size` (patch tasks: 3x3 patches
# of image_size / 4, so that the grid fits the image).
_TASK_OPTIONS = {
    "rotation": lambda size: {"image_size": size},
    "supervised": lambda size: {"image_size": size},
    "exemplar": lambda size: {"image_size": size, "num_crops": 8},
    "relative_patch_location": lambda size: {
        "patch_size": size // 4, "patch_jitter": size // 12},
    "jigsaw": lambda size: {"patch_size": size // 4,
                            "patch_jitter": size // 12},
}


def _build_task(task_name, backbone, image_size, seed=0):
  keras.utils.set_random_seed(seed)
  return pretext.get_task(task_name, backbone=backbone, num_classes=10,
                          **_TASK_OPTIONS[task_name](image_size))


def _batch(task, batch_size, image_size):
  """One preprocessed training batch of random images, as tensors."""
  source = sources.RandomSource(
      image_shape=(image_size * 5 // 4, image_size * 5 // 4, 3),
      num_examples=batch_size)
  dataset = data.make_dataset(source, "train", task.train_preprocess,
                              batch_size, training=True, seed=0)
  return next(iter(dataset))


def _optimizer(policy):
  optimizer = keras.optimizers.SGD(learning_rate=1e-4, momentum=0.9)
  if policy == "mixed_float16":
    optimizer = keras.optimizers.LossScaleOptimizer(optimizer)
  return optimizer


class FitModel(keras.Model):
  """A task as a Keras model whose `train_step` is the task's loss, for fit.

  The loss is what `loop.make_train_step` minimises on one replica: the
  per-image losses averaged over the batch plus the weight-decay term.
  """

  def __init__(self, task: pretext.Task):
    super().__init__()
    self.task = task
    self.encoder = task.encoder
    self.head = task.head
    # fit's logs come from the model's metrics, not from train_step's return.
    self.loss_tracker = keras.metrics.Mean(name="loss")
    self.built = True

  @property
  def metrics(self):
    return [self.loss_tracker]

  def train_step(self, batch):
    variables = self.task.trainable_variables
    with tf.GradientTape() as tape:
      per_image_loss, _ = self.task.loss(batch, training=True)
      loss = tf.reduce_mean(per_image_loss) + self.task.regularization_loss()
      scaled_loss = self.optimizer.scale_loss(loss)
    grads = tape.gradient(scaled_loss, variables)
    self.optimizer.apply_gradients(zip(grads, variables))
    self.loss_tracker.update_state(loss)
    return {"loss": self.loss_tracker.result()}


class _Ours:
  """Blocks of steps of `training.loop.make_train_step`, as `train()` runs them."""

  def __init__(self, task, batch, batch_size, policy, jit_compile,
               steps_per_execution):
    self.optimizer = _optimizer(policy)
    self.optimizer.build(task.trainable_variables)
    self.step = loop.make_train_step(task, self.optimizer,
                                     tf.distribute.get_strategy(),
                                     batch_size, jit_compile=jit_compile)
    self.steps_per_call = steps_per_execution
    self.iterator = iter(tf.data.Dataset.from_tensors(batch).repeat())

  def run(self, steps):
    """Runs `steps` steps; returns seconds."""
    start = time.perf_counter()
    for _ in range(max(steps // self.steps_per_call, 1)):
      sums = {k: float(v) for k, v in
              self.step(self.iterator, self.steps_per_call).items()}
    assert np.isfinite(sums["loss"]), sums
    return time.perf_counter() - start


class _Fit:
  """Blocks of steps of `keras.Model.fit`, timed from the first batch's start
  to the epoch's end (excluding fit's set-up)."""

  def __init__(self, task, batch, policy, jit_compile, steps_per_execution):
    self.model = FitModel(task)
    self.model.compile(optimizer=_optimizer(policy),
                       steps_per_execution=steps_per_execution,
                       jit_compile=jit_compile)
    self.dataset = tf.data.Dataset.from_tensors(batch).repeat()
    self.times = {}
    timer = self

    class _Timer(keras.callbacks.Callback):

      def on_train_batch_begin(self, batch, logs=None):
        if batch == 0:
          timer.times["start"] = time.perf_counter()

      def on_epoch_end(self, epoch, logs=None):
        timer.times["end"] = time.perf_counter()
        timer.times["loss"] = float(logs["loss"])

    self.callback = _Timer()

  def run(self, steps):
    self.model.fit(self.dataset, steps_per_epoch=steps, epochs=1, verbose=0,
                   shuffle=False, callbacks=[self.callback])
    assert np.isfinite(self.times["loss"]), self.times
    return self.times["end"] - self.times["start"]


def measure(task_name: str, *, backbone: models.Backbone, image_size: int,
            batch_size: int, policy: Optional[str], jit_compile: bool,
            steps_per_execution: int, steps: int, repeats: int
            ) -> Dict[str, float]:
  """Ours and fit on one task and configuration.

  Returns:
    {"ours": images/s, "fit": images/s, "ratio": median of fit time / our
    time over the repeats}.
  """
  keras.mixed_precision.set_global_policy(policy or "float32")
  try:
    task = _build_task(task_name, backbone, image_size)
    batch = _batch(task, batch_size, image_size)
    runners = {"fit": _Fit(task, batch, policy, jit_compile,
                           steps_per_execution),
               "ours": _Ours(task, batch, batch_size, policy, jit_compile,
                             steps_per_execution)}
    for runner in runners.values():  # Trace and warm up.
      runner.run(steps_per_execution)
    seconds: Dict[str, List[float]] = {name: [] for name in runners}
    for _ in range(repeats):
      for name, runner in runners.items():
        seconds[name].append(runner.run(steps))
  finally:
    keras.mixed_precision.set_global_policy("float32")
  rate = lambda name: batch_size * steps / statistics.median(seconds[name])
  ratio = statistics.median(f / o for o, f in zip(seconds["ours"],
                                                  seconds["fit"]))
  return {"ours": rate("ours"), "fit": rate("fit"), "ratio": ratio}


def _parse_args(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--tasks", nargs="+", default=pretext.TASKS.names(),
                      choices=pretext.TASKS.names())
  parser.add_argument("--backbone", default="resnet50_v2",
                      choices=models.BACKBONES.names())
  parser.add_argument("--filters_factor", type=int, default=1)
  parser.add_argument("--image_size", type=int, default=32,
                      help="image side (patch tasks: patches of a quarter)")
  parser.add_argument("--batch_size", type=int, default=8)
  parser.add_argument("--steps", type=int, default=5,
                      help="steps per timed block")
  parser.add_argument("--repeats", type=int, default=3,
                      help="timed blocks per runner, interleaved")
  parser.add_argument("--steps_per_execution", type=int, default=1)
  parser.add_argument("--jit", choices=("off", "on", "both"), default="off")
  parser.add_argument(
      "--precision", choices=("off", "on", "both"), default="off",
      help="mixed precision: mixed_float16 on a GPU, mixed_bfloat16 on CPU")
  return parser.parse_args(argv)


def _choices(flag, on_value):
  return {"off": [None], "on": [on_value], "both": [None, on_value]}[flag]


def _cell(value, width, decimals):
  """`value` right-aligned in `width` characters."""
  return f"{value:{width}.{decimals}f}"


def main(argv=None):
  args = _parse_args(argv)
  gpu = bool(tf.config.list_physical_devices("GPU"))
  mixed = "mixed_float16" if gpu else "mixed_bfloat16"
  backbone = models.Backbone(args.backbone, args.filters_factor)
  print(f"{args.backbone} k={args.filters_factor}, image {args.image_size}, "
        f"batch {args.batch_size}, {args.steps} steps x {args.repeats} "
        f"repeats, steps_per_execution={args.steps_per_execution}, "
        f"{'GPU' if gpu else 'CPU'}")
  print(f"{'task':26s} {'precision':15s} {'XLA':4s} {'ours img/s':>11s} "
        f"{'fit img/s':>10s} {'ours/fit':>9s}")
  for task_name in args.tasks:
    for policy in _choices(args.precision, mixed):
      for jit in _choices(args.jit, True):
        result = measure(task_name, backbone=backbone,
                         image_size=args.image_size, batch_size=args.batch_size,
                         policy=policy, jit_compile=bool(jit),
                         steps_per_execution=args.steps_per_execution,
                         steps=args.steps, repeats=args.repeats)
        print(f"{task_name:26s} {policy or 'float32':15s} "
              f"{'on' if jit else 'off':4s} {_cell(result['ours'], 11, 1)} "
              f"{_cell(result['fit'], 10, 1)} {_cell(result['ratio'], 9, 2)}",
              flush=True)


if __name__ == "__main__":
  main()
