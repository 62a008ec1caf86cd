"""The compiled training step and the loop that calls it.

`make_train_step` runs synchronous steps on every replica inside one
`tf.function` (`strategy.run`); `train_loop` calls it in blocks of up to
`steps_per_loop` steps and does, between blocks, what needs the host: NaN
checks, logs, summaries and checkpoints.
"""
import logging
import sys
import time
from typing import Dict

import keras
import numpy as np
import tensorflow as tf

from tfrevisit import pretext

log = logging.getLogger("tfrevisit.train")


def make_train_step(task: pretext.Task, optimizer: keras.optimizers.Optimizer,
                    strategy: tf.distribute.Strategy, global_batch_size: int,
                    *, jit_compile: bool = False):
  """A function running synchronous steps on every replica.

  `train_step(iterator, num_steps=1)` runs `num_steps` steps in one
  `tf.function` call (a `tf.range` loop: one host round trip for all of them;
  a new `num_steps` does not retrace) and returns the sums over those steps of
  {"loss", metric names..., "regularization", "count"}: sums over the global
  batches (per-image values), except "regularization" (the weight-decay term,
  once per step) and "count" (images). Each step's values are reduced across
  replicas in one all-reduce of a vector.

  Args:
    task: the task; its variables are built.
    optimizer: built on `task.trainable_variables`.
    strategy: the strategy whose scope built both.
    global_batch_size: images per step, all replicas together.
    jit_compile: compile each replica's forward and backward pass (and the
      loss scaling) with XLA; the gradient all-reduce and `apply_gradients`
      run outside it.
  """
  variables = task.trainable_variables
  replica_gradients = _replica_gradients_fn(task, optimizer, global_batch_size)
  if jit_compile:
    # XLA compiles the replica's forward and backward pass only: the gradient
    # all-reduce in `apply_gradients` is a cross-replica `merge_call`, which
    # cannot run inside a function nested in `strategy.run`. (Keras'
    # `fit(jit_compile=True)` compiles all of `strategy.run` instead, which
    # fails under a MirroredStrategy over two devices: one compiled cluster
    # cannot read the other device's variables; Keras 3.15, TF 2.21.)
    replica_gradients = tf.function(replica_gradients, jit_compile=True)

  names = []  # Metric names, in the order of the reduced vector.

  def replica_vector(batch):
    """One replica's step: applies its gradients; returns its sums [names]."""
    grads, sums = replica_gradients(batch)
    if isinstance(optimizer, keras.optimizers.LossScaleOptimizer):
      grads = _share_overflow(grads)
    optimizer.apply_gradients(zip(grads, variables))
    if not names:
      names.extend(sorted(sums))
    return tf.stack([sums[name] for name in names])

  # A function of its own, as Keras' `steps_per_execution` loop does, so that
  # every step runs the same graph as a single-step call. Inlined in the
  # `tf.range` loop, the step's graph gets optimised differently, and the
  # rounding differences were enough to change the 4th step's loss in a tiny
  # (chaotic) test run (TF 2.21, CPU).
  @tf.function
  def one_step(iterator):
    per_replica = strategy.run(replica_vector, args=(next(iterator),))
    return strategy.reduce(tf.distribute.ReduceOp.SUM, per_replica, axis=None)

  @tf.function
  def run_steps(iterator, num_steps):
    totals = one_step(iterator)
    for _ in tf.range(num_steps - 1):
      totals += one_step(iterator)
    return dict(zip(names, tf.unstack(totals)))

  def train_step(iterator, num_steps=1):
    return run_steps(iterator, tf.constant(num_steps, tf.int32))

  return train_step


def _replica_gradients_fn(task, optimizer, global_batch_size):
  """`replica_gradients(batch)`: one replica's forward and backward pass,
  returning (the gradients of its share of the scaled loss, its float32
  sums: "loss", the task's metrics, "count" and its share of
  "regularization")."""
  variables = task.trainable_variables

  def replica_gradients(batch):
    num_replicas = tf.distribute.get_strategy().num_replicas_in_sync
    with tf.GradientTape() as tape:
      per_image_loss, metrics = task.loss(batch, training=True)
      # Each replica's share of the global mean; the optimizer sums gradients.
      regularization = task.regularization_loss()
      loss = (tf.nn.compute_average_loss(per_image_loss,
                                         global_batch_size=global_batch_size)
              + regularization / num_replicas)
      scaled_loss = optimizer.scale_loss(loss)
    grads = tape.gradient(scaled_loss, variables)
    sums = {name: tf.reduce_sum(value) for name, value in metrics.items()}
    sums["loss"] = tf.reduce_sum(per_image_loss)
    sums["count"] = tf.cast(tf.size(per_image_loss), tf.float32)
    sums["regularization"] = regularization / num_replicas
    return grads, {name: tf.cast(value, tf.float32)
                   for name, value in sums.items()}

  return replica_gradients


def _share_overflow(grads):
  """One replica's gradients, made non-finite if any replica's are.

  Keras' LossScaleOptimizer under a MirroredStrategy decides whether to apply
  a step (or to skip it and halve the loss scale) from the first replica's
  gradients before they are all-reduced (Keras 3.15): when only another
  replica's overflow, it applies the all-reduced inf/NaN to the weights. So
  the replicas first agree, in one scalar all-reduce, on whether any overflowed.

  Args:
    grads: this replica's gradients (None for variables without one).
  """
  context = tf.distribute.get_replica_context()
  if context is None or context.num_replicas_in_sync == 1:
    return grads
  present = [i for i, g in enumerate(grads) if g is not None]
  overflowed = 1.0 - tf.cast(tf.reduce_all(
      [tf.reduce_all(tf.math.is_finite(grads[i])) for i in present]), tf.float32)
  any_overflowed = context.all_reduce(tf.distribute.ReduceOp.SUM, overflowed)
  # Keras checks every gradient: one non-finite one makes it skip the step.
  grads = list(grads)
  grads[present[0]] *= tf.cast(
      tf.where(any_overflowed > 0, float("nan"), 1.0), grads[present[0]].dtype)
  return grads


def next_loop_length(step, total_steps, steps_per_loop, checkpoint_every_steps):
  """Steps of the next call: at most `steps_per_loop`, ending at the latest at
  the next checkpoint or at `total_steps`."""
  next_checkpoint = (step // checkpoint_every_steps + 1) * checkpoint_every_steps
  return min(steps_per_loop, total_steps - step, next_checkpoint - step)


def train_loop(step_fn, iterator, optimizer, global_step, save, manager,
               total_steps, *, batch_size, checkpoint_every_steps,
               log_every_steps, writer, steps_per_loop=1, run=None
               ) -> Dict[str, float]:
  """Runs steps until `total_steps`, checkpointing (`save(step)`), logging and
  checking NaNs between calls of `steps_per_loop` steps; returns the metrics
  of the last logged interval.

  Args:
    step_fn: `step_fn(iterator, num_steps)` (`make_train_step`).
    global_step: the checkpointed count of steps run, advanced after each call.
    manager: the run's checkpoint manager (named in errors).
    writer: where the summaries go (`summary_writer`).
    run: `run(step_fn, iterator, num_steps)` calls `step_fn` (the preemption
      handler's `run`, which saves and exits when a worker is preempted);
      None: a direct call.

  Raises:
    FloatingPointError: a non-finite loss; the last checkpoint is kept.
  """
  run = run or (lambda fn, *args: fn(*args))
  step = int(global_step.numpy())
  progress = _Progress(step, total_steps)
  interval = _Interval()
  metrics = {}
  try:
    while step < total_steps:
      num_steps = next_loop_length(step, total_steps, steps_per_loop,
                                   checkpoint_every_steps)
      sums = {k: float(v) for k, v in run(step_fn, iterator, num_steps).items()}
      first, step = step + 1, step + num_steps
      global_step.assign(step)
      _check_finite(sums, first, step, manager)
      interval.add(sums, num_steps)
      progress.update(step, sums)
      if step // log_every_steps > (step - num_steps) // log_every_steps or (
          step == total_steps):
        metrics = _interval_metrics(interval, batch_size, optimizer)
        _write_summaries(writer, metrics, step)
        progress.log(step, metrics)
      if step % checkpoint_every_steps == 0 or step == total_steps:
        save(step)
  except KeyboardInterrupt:  # A second Ctrl-C: save without waiting.
    log.warning("Interrupted at step %d: saving a checkpoint.", step)
    save(step)
    raise
  return metrics


def _check_finite(sums, first, last, manager):
  """Raises a FloatingPointError if steps `first`..`last` had a non-finite
  loss."""
  if not np.isfinite(sums["loss"] + sums["regularization"]):
    where = f"step {last}" if first == last else f"steps {first}-{last}"
    raise FloatingPointError(
        f"Loss is {sums['loss']} at {where}; stopping. The last good "
        f"checkpoint is kept: {manager.latest_checkpoint}. Try a lower "
        "train.lr or a longer train.warmup_epochs.")


def _interval_metrics(interval, batch_size, optimizer) -> Dict[str, float]:
  """The interval's metrics (and starts a new one), with the optimizer's
  learning rate and, under loss scaling, its loss scale."""
  metrics = interval.flush(batch_size)
  metrics["learning_rate"] = float(optimizer.learning_rate.numpy())
  if isinstance(optimizer, keras.optimizers.LossScaleOptimizer):
    metrics["loss_scale"] = float(optimizer.dynamic_scale.numpy())
  return metrics


def summary_writer(summary_dir: str, chief: bool):
  """A TensorBoard writer into `summary_dir` on the chief, a no-op elsewhere."""
  if not chief:
    return tf.summary.create_noop_writer()
  return tf.summary.create_file_writer(summary_dir)


def _write_summaries(writer, metrics, step):
  with writer.as_default(step=step):
    for name, value in metrics.items():
      tf.summary.scalar(name, value)
  writer.flush()


class _Interval:
  """Accumulates per-step sums between two log points."""

  def __init__(self):
    self.sums, self.steps, self.start = {}, 0, time.perf_counter()

  def add(self, sums, steps=1):
    """Adds the sums of `steps` steps."""
    for name, value in sums.items():
      self.sums[name] = self.sums.get(name, 0.0) + value
    self.steps += steps

  def flush(self, batch_size) -> Dict[str, float]:
    elapsed = time.perf_counter() - self.start
    count = self.sums.pop("count")
    regularization = self.sums.pop("regularization") / self.steps
    metrics = {name: value / count for name, value in self.sums.items()}
    metrics["regularization"] = regularization
    metrics["images_per_sec"] = self.steps * batch_size / elapsed
    self.__init__()
    return metrics


class _Progress:
  """A progress bar with ETA on a terminal, plain log lines otherwise."""

  def __init__(self, step, total_steps):
    self.total_steps = total_steps
    self.bar = None
    if sys.stderr.isatty():
      self.bar = keras.utils.Progbar(total_steps, stateful_metrics=["step"])
      self.bar.update(step)

  def update(self, step, sums):
    if self.bar is not None:
      self.bar.update(step, [("loss", sums["loss"] / sums["count"])])

  def log(self, step, metrics):
    if self.bar is None:
      log.info("step %d/%d: %s", step, self.total_steps,
               ", ".join(f"{k}={v:.4g}" for k, v in sorted(metrics.items())))
