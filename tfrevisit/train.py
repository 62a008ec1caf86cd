r"""Trains a pretext task: `python -m tfrevisit.train --gin configs/X.gin --workdir DIR`.

A custom training loop (`strategy.run` inside a `tf.function`) over Keras 3
models, with input from `distribute_datasets_from_function`, so that the same
code runs on one CPU, on several GPUs and on several hosts.

The backbone is a `models.Backbone` value: `main` parses gin, `train` gets
the one the `backbone.*` bindings describe (or an explicit one), hands it to
the task, and the task builds its encoder from it. The run's task (name,
backbone, options) is recorded in the workdir, whose layout and formats
`tfrevisit.artifacts` defines:
  config.gin        the operative gin config, written before the first step.
  task.json         what rebuilds the task (export reads it, not gin).
  checkpoints/      the last `keep_checkpoints` checkpoints; a rerun resumes.
  tb/               TensorBoard summaries.
  export/           the exported encoder (see tfrevisit.export).

Resume is exact: the batches of step s are a pure function of (seed, s) (see
`data.make_dataset`), so a run interrupted anywhere and resumed from a
checkpoint ends with the weights of an uninterrupted run. SIGTERM and SIGINT
(Ctrl-C) save a checkpoint at the current step through
`tf.distribute.experimental.PreemptionCheckpointHandler` (all workers agree on
the step) and exit with status 128 + the signal number.
"""
import argparse
import contextlib
import logging
import shutil
import signal
import sys
import threading
import time
from typing import Dict, Optional, Sequence

import gin
import keras
import numpy as np
import tensorflow as tf

from tfrevisit import artifacts
from tfrevisit import cli
from tfrevisit import data
from tfrevisit import distribute
from tfrevisit import export as export_lib
from tfrevisit import gin_config
from tfrevisit import models
from tfrevisit import pretext
from tfrevisit import schedules

log = logging.getLogger("tfrevisit.train")

# Mixed-precision policies by name; the heads and the loss stay float32.
PRECISIONS = (None, "mixed_float16", "mixed_bfloat16")


@gin.configurable("train", denylist=["workdir", "backbone", "source",
                                      "mock_data"])
def train(workdir: str,
          task: str = gin.REQUIRED,
          backbone: Optional[models.Backbone] = None,
          source: Optional[data.Source] = None,
          batch_size: int = gin.REQUIRED,
          epochs: float = gin.REQUIRED,
          max_steps: Optional[int] = None,
          train_split: str = "train",
          lr: float = 0.1,
          lr_scale_batch_size: int = 256,
          warmup_epochs: float = 5,
          decay_epochs: Sequence[float] = (15, 25),
          lr_decay_factor: float = 0.1,
          momentum: float = 0.9,
          mixed_precision: Optional[str] = None,
          strategy: str = "auto",
          checkpoint_every_steps: int = 1000,
          keep_checkpoints: int = 3,
          log_every_steps: int = 50,
          seed: Optional[int] = 0,
          export: bool = True,
          steps_per_loop: int = 1,
          jit_compile: bool = False,
          collective_timeout_s: Optional[float] = None,
          mock_data: bool = False) -> Dict[str, float]:
  """Trains `task` and returns the metrics of the last logged interval.

  Args:
    workdir: output directory; a rerun with the same workdir resumes.
    task: name of a task in `tfrevisit.pretext.TASKS`.
    backbone: the backbone to train; None: the one the gin bindings
      `backbone.*` describe (`gin_config.configured_backbone`).
    source: the training data; None: the one the gin bindings `source.*`
      describe (`data.get_source`).
    batch_size: global batch size, in images (before a task's views).
    epochs: training length in epochs of `train_split`.
    max_steps: optional hard cap on the number of steps (smoke runs); 0
      exports the initial weights (the quick start's random-init baseline).
    train_split: the source split to train on (`train` or `trainval`).
    lr: base learning rate for a batch of `lr_scale_batch_size` images.
    lr_scale_batch_size: the rate is `lr * batch_size / lr_scale_batch_size`.
    warmup_epochs: linear warm-up length in epochs.
    decay_epochs: epochs at which the rate is multiplied by `lr_decay_factor`.
    lr_decay_factor: the decay multiplier.
    momentum: SGD momentum.
    mixed_precision: None, "mixed_float16" (GPU) or "mixed_bfloat16" (CPU/TPU).
    strategy: a name in `tfrevisit.distribute.STRATEGIES`.
    checkpoint_every_steps: checkpoint period in steps (and at the end).
    keep_checkpoints: how many recent checkpoints to keep.
    log_every_steps: logging and summary period in steps.
    seed: seed of weights, input order and augmentation (None: random).
    export: export the encoder when training ends.
    steps_per_loop: steps per call of the compiled training function (one
      host round trip per call; logs, checkpoints and NaN checks happen
      between calls, and a call never crosses a checkpoint or the end).
    jit_compile: compile each replica's step with XLA.
    collective_timeout_s: multi-worker only: a collective (all-reduce) that
      waits longer than this fails (`CommunicationOptions.timeout_seconds`),
      so that the workers of a cluster with a dead worker exit with an error
      instead of waiting for ever. None: no timeout. Include the first step's
      tracing and compilation time.
    mock_data: TFDS sources yield mock data of the right shapes (pass a
      random `source` for local ones, as `main` does).

  Raises:
    cli.UserError: a bad value (see `check_knobs`).
    Preempted: SIGTERM or SIGINT arrived; a checkpoint at the current step
      was saved (rerun to resume).
  """
  if mixed_precision not in PRECISIONS:
    raise cli.UserError(f"Unknown train.mixed_precision {mixed_precision!r}; "
                        f"valid choices: {PRECISIONS}.")
  pretext.TASKS.get(task)  # Fail on an unknown task before any work.
  if backbone is None:
    backbone = gin_config.configured_backbone()
  strategy_ = distribute.make_strategy(
      strategy, collective_timeout_s=collective_timeout_s)
  check_knobs(batch_size=batch_size, num_replicas=strategy_.num_replicas_in_sync,
              epochs=epochs, max_steps=max_steps, lr=lr,
              checkpoint_every_steps=checkpoint_every_steps,
              keep_checkpoints=keep_checkpoints, log_every_steps=log_every_steps,
              steps_per_loop=steps_per_loop)
  if seed is not None:
    keras.utils.set_random_seed(seed)
  if mixed_precision:
    keras.mixed_precision.set_global_policy(mixed_precision)

  with _data_context(mock_data):
    if source is None:
      source = data.get_source()
    steps_per_epoch = max(source.num_examples(train_split) // batch_size, 1)
    total_steps = int(epochs * steps_per_epoch)
    if max_steps is not None:
      total_steps = min(total_steps, max_steps)
    if total_steps == 0 and max_steps != 0:
      raise cli.UserError(
          f"train.epochs = {epochs} is less than one step ({steps_per_epoch} "
          "steps per epoch); raise train.epochs.")

    with strategy_.scope():
      task_ = pretext.get_task(task, backbone=backbone,
                               num_classes=source.num_classes)
      schedule = schedules.WarmupStepDecay(
          base_lr=lr * batch_size / lr_scale_batch_size,
          warmup_steps=int(warmup_epochs * steps_per_epoch),
          decay_steps=[int(e * steps_per_epoch) for e in decay_epochs],
          decay_factor=lr_decay_factor)
      optimizer = _make_optimizer(schedule, momentum, mixed_precision)
      optimizer.build(task_.trainable_variables)
      # Steps run; `optimizer.iterations` counts applied updates only, and
      # mixed_float16's loss scaling skips the steps whose gradients overflow.
      global_step = tf.Variable(0, dtype=tf.int64, trainable=False,
                                name="global_step")

    # Restores the newest checkpoint, then builds the input from its step;
    # both fail on bad input (a corrupt checkpoint, missing data) before any
    # output is written.
    checkpoint = tf.train.Checkpoint(optimizer=optimizer, step=global_step,
                                     **task_.checkpoint_items(),
                                     **_seed_states(task_))
    manager = tf.train.CheckpointManager(
        checkpoint, distribute.worker_dir(artifacts.checkpoint_dir(workdir), strategy_),
        max_to_keep=keep_checkpoints)
    # Every worker resumes from the chief's newest checkpoint.
    existing = artifacts.existing_checkpoints(
        _checkpoint_paths(artifacts.checkpoint_dir(workdir)))
    if existing:
      export_lib.check_resumable(workdir, task_.backbone)
      artifacts.restore_checkpoint(checkpoint, existing[-1]
                                   ).assert_existing_objects_matched()
      if not global_step.numpy():  # A checkpoint from before `step`.
        global_step.assign(optimizer.iterations)
      log.info("Resumed from %s (step %d).", existing[-1],
               int(global_step.numpy()))
    # The input continues where the checkpoint's step left it.
    dataset = _distributed_dataset(
        strategy_, source, train_split, task_.train_preprocess, batch_size,
        seed, int(global_step.numpy()))
    # Everything that can fail on bad input has run: now touch the workdir.
    cli.begin_work()
    chief = distribute.is_chief(strategy_)
    if chief:
      artifacts.write_run_info(workdir, gin.operative_config_str(),
                               artifacts.task_record(task_))

    step_fn = make_train_step(task_, optimizer, strategy_, batch_size,
                              jit_compile=jit_compile)
    # Each replica updates its own copy of the BatchNorm statistics; checkpoints
    # and the export get their mean (the statistics of the whole global batch).
    average_statistics = distribute.replica_averager(
        strategy_, [v for model in task_.checkpoint_items().values()
                    for v in model.non_trainable_variables])
    save = lambda step: _save(manager, step, average_statistics)
    with _preemption_handler(strategy_, manager, global_step, save) as handler, \
        _peer_failures(strategy_, global_step, workdir):
      metrics = _train_loop(
          step_fn, iter(dataset), optimizer, global_step, save, manager,
          total_steps,
          batch_size=batch_size, checkpoint_every_steps=checkpoint_every_steps,
          log_every_steps=log_every_steps, steps_per_loop=steps_per_loop,
          writer=_summary_writer(workdir, chief), run=handler.run)
    _cleanup_worker_dir(manager, strategy_)
    if export and chief:
      export_lib.export_task(task_, workdir, int(global_step.numpy()),
                             gin_config=gin.config_str())
  return metrics


def check_knobs(*, batch_size, num_replicas, epochs, max_steps, lr,
                checkpoint_every_steps, keep_checkpoints, log_every_steps,
                steps_per_loop=1):
  """Raises a `cli.UserError` naming the first bad `train.*` value."""
  if not isinstance(batch_size, int) or batch_size < num_replicas:
    raise cli.UserError(
        f"train.batch_size = {batch_size!r} must be an integer >= the number "
        f"of replicas ({num_replicas}).")
  if batch_size % num_replicas:
    raise cli.UserError(
        f"train.batch_size = {batch_size} is not divisible by the number of "
        f"replicas ({num_replicas}); use a multiple of {num_replicas}.")
  if not epochs > 0:
    raise cli.UserError(f"train.epochs = {epochs!r} must be > 0 (for a run "
                        "without training, set train.max_steps = 0).")
  if max_steps is not None and max_steps < 0:
    raise cli.UserError(f"train.max_steps = {max_steps} must be >= 0.")
  if not lr > 0:
    raise cli.UserError(f"train.lr = {lr!r} must be > 0.")
  for name, value in (("checkpoint_every_steps", checkpoint_every_steps),
                      ("keep_checkpoints", keep_checkpoints),
                      ("log_every_steps", log_every_steps),
                      ("steps_per_loop", steps_per_loop)):
    if not value >= 1:
      raise cli.UserError(f"train.{name} = {value!r} must be >= 1.")


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
    jit_compile: compile each replica's step with XLA.
  """
  variables = task.trainable_variables

  def replica_step(batch):
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
    optimizer.apply_gradients(zip(grads, variables))
    sums = {name: tf.reduce_sum(value) for name, value in metrics.items()}
    sums["loss"] = tf.reduce_sum(per_image_loss)
    sums["count"] = tf.cast(tf.size(per_image_loss), tf.float32)
    sums["regularization"] = regularization / num_replicas
    return {name: tf.cast(value, tf.float32) for name, value in sums.items()}

  if jit_compile:
    replica_step = tf.function(replica_step, jit_compile=True)
  names = []  # Metric names, in the order of the reduced vector.

  def replica_vector(batch):
    sums = replica_step(batch)
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


def _save(manager, step, average_statistics):
  """Averages the replicas' copies of the moving statistics, then saves."""
  average_statistics()
  manager.save(checkpoint_number=step)


def _next_loop_length(step, total_steps, steps_per_loop, checkpoint_every_steps):
  """Steps of the next call: at most `steps_per_loop`, ending at the latest at
  the next checkpoint or at `total_steps`."""
  next_checkpoint = (step // checkpoint_every_steps + 1) * checkpoint_every_steps
  return min(steps_per_loop, total_steps - step, next_checkpoint - step)


def _train_loop(step_fn, iterator, optimizer, global_step, save, manager,
                total_steps, *, batch_size, checkpoint_every_steps,
                log_every_steps, writer, steps_per_loop=1, run=None):
  """Runs steps until `total_steps`, checkpointing (`save(step)`), logging and
  checking NaNs between calls of `steps_per_loop` steps.

  Args:
    global_step: the checkpointed count of steps run, advanced after each call.
    run: `run(step_fn, iterator, num_steps)` calls `step_fn` (the preemption
      handler's `run`, which saves and exits when a worker is preempted);
      None: a direct call.
  """
  run = run or (lambda fn, *args: fn(*args))
  step = int(global_step.numpy())
  progress = _Progress(step, total_steps)
  interval = _Interval()
  metrics = {}
  try:
    while step < total_steps:
      num_steps = _next_loop_length(step, total_steps, steps_per_loop,
                                    checkpoint_every_steps)
      sums = {k: float(v) for k, v in run(step_fn, iterator, num_steps).items()}
      first, step = step + 1, step + num_steps
      global_step.assign(step)
      if not np.isfinite(sums["loss"] + sums["regularization"]):
        where = f"step {step}" if num_steps == 1 else f"steps {first}-{step}"
        raise FloatingPointError(
            f"Loss is {sums['loss']} at {where}; stopping. The last good "
            f"checkpoint is kept: {manager.latest_checkpoint}. Try a lower "
            "train.lr or a longer train.warmup_epochs.")
      interval.add(sums, num_steps)
      progress.update(step, sums)
      if step // log_every_steps > (step - num_steps) // log_every_steps or (
          step == total_steps):
        metrics = interval.flush(batch_size)
        metrics["learning_rate"] = float(optimizer.learning_rate.numpy())
        _write_summaries(writer, metrics, step)
        progress.log(step, metrics)
      if step % checkpoint_every_steps == 0 or step == total_steps:
        save(step)
  except KeyboardInterrupt:  # A second Ctrl-C: save without waiting.
    log.warning("Interrupted at step %d: saving a checkpoint.", step)
    save(step)
    raise
  return metrics


class Preempted(Exception):
  """Training stopped on SIGTERM or SIGINT after saving a checkpoint."""

  def __init__(self, signum: int, step: int):
    super().__init__(f"{signal.Signals(signum).name} at step {step}: saved a "
                     "checkpoint; rerun the same command to resume.")
    self.signum, self.step = signum, step

  @property
  def exit_status(self) -> int:
    """128 + the signal number, as for a process killed by the signal."""
    return 128 + self.signum


def _seed_states(task) -> Dict[str, list]:
  """{"seed_generator_states": [...]}: the states of Keras' random layers
  (Dropout), which models do not checkpoint, so that a resumed run draws the
  masks an uninterrupted one would; {} for tasks without such layers."""
  states = [v for model in task.checkpoint_items().values()
            for v in model.non_trainable_variables
            if "seed_generator_state" in v.path]
  return {"seed_generator_states": states} if states else {}


def _checkpoint_paths(directory: str):
  """The checkpoint prefixes the chief keeps in `directory`, oldest first."""
  state = tf.train.get_checkpoint_state(directory)
  return list(state.all_model_checkpoint_paths) if state else []


def _distributed_dataset(strategy, source, split, preprocess, batch_size, seed,
                         step):
  """Each input pipeline's batches from training step `step` on.

  A pipeline feeds `num_replicas_in_sync / num_input_pipelines` replicas, so it
  has consumed that many of its batches per step.
  """
  def dataset_fn(ctx):
    batches_per_step = ctx.num_replicas_in_sync // ctx.num_input_pipelines
    return data.make_dataset(
        source, split, preprocess, ctx.get_per_replica_batch_size(batch_size),
        training=True, seed=seed, input_context=ctx,
        start_batch=step * batches_per_step)
  return strategy.distribute_datasets_from_function(dataset_fn)


@contextlib.contextmanager
def _preemption_handler(strategy, manager, global_step, save):
  """A `tf.distribute.experimental.PreemptionCheckpointHandler` whose
  termination signal is SIGTERM or SIGINT on any worker.

  Its `run(step_fn, *args)` runs a training call; after a signal, all workers
  agree on a step, `save` a checkpoint there (statistics averaged first) and
  raise `Preempted`. A second SIGINT raises `KeyboardInterrupt` at once. The
  previous signal handlers are restored on exit. Outside the main thread
  (no signal handlers can be installed) it yields a plain runner.
  """
  if threading.current_thread() is not threading.main_thread():
    yield _PlainRunner()
    return
  received = []  # Signal numbers, in order.

  def on_signal(signum, frame):
    del frame
    received.append(signum)
    if signum == signal.SIGINT and received.count(signal.SIGINT) > 1:
      raise KeyboardInterrupt
    log.warning("Received %s: saving a checkpoint after the current step.",
                signal.Signals(signum).name)

  def exit_fn():
    raise Preempted(received[0], int(global_step.numpy()))

  previous = {signum: signal.signal(signum, on_signal)
              for signum in (signal.SIGTERM, signal.SIGINT)}
  try:
    config = tf.distribute.experimental.TerminationConfig(
        termination_watcher_fn=lambda: bool(received), exit_fn=exit_fn,
        grace_period=0,
        save_fn=lambda: save(int(global_step.numpy())))
    yield tf.distribute.experimental.PreemptionCheckpointHandler(
        getattr(strategy, "cluster_resolver", None), manager,
        termination_config=config)
  finally:
    for signum, handler in previous.items():
      signal.signal(signum, handler)


class WorkerLost(RuntimeError):
  """A collective with the other workers failed: one of them died or hung."""


# What a collective raises when a peer is gone: its timeout
# (`collective_timeout_s`), the coordination service's missed heartbeats, or
# the error another worker reported to the cluster.
_PEER_ERRORS = (tf.errors.DeadlineExceededError, tf.errors.UnavailableError,
                tf.errors.AbortedError, tf.errors.CancelledError,
                tf.errors.InternalError)


@contextlib.contextmanager
def _peer_failures(strategy, global_step, workdir):
  """Under several workers, turns a failed collective into `WorkerLost`."""
  try:
    yield
  except _PEER_ERRORS as e:
    if not _cluster_workers(strategy) > 1:
      raise
    raise WorkerLost(
        f"Training stopped at step {int(global_step.numpy())}: a "
        f"collective with the other workers failed ({type(e).__name__}: "
        f"{cli.one_line(e)[:300]}). A worker probably died; restart all "
        "workers to resume from the last checkpoint in "
        f"{artifacts.checkpoint_dir(workdir)}.") from e


def _cluster_workers(strategy) -> int:
  resolver = getattr(strategy, "cluster_resolver", None)
  if resolver is None:
    return 1
  return sum(len(tasks) for tasks in resolver.cluster_spec().as_dict().values())


class _PlainRunner:
  """`PreemptionCheckpointHandler.run` without preemption handling."""

  def run(self, fn, *args, **kwargs):
    return fn(*args, **kwargs)


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


def _make_optimizer(learning_rate, momentum, mixed_precision):
  optimizer = keras.optimizers.SGD(learning_rate=learning_rate, momentum=momentum)
  if mixed_precision == "mixed_float16":
    optimizer = keras.optimizers.LossScaleOptimizer(optimizer)
  return optimizer


def _summary_writer(workdir, chief):
  if not chief:
    return tf.summary.create_noop_writer()
  return tf.summary.create_file_writer(artifacts.summary_dir(workdir))


def _write_summaries(writer, metrics, step):
  with writer.as_default(step=step):
    for name, value in metrics.items():
      tf.summary.scalar(name, value)
  writer.flush()


def _cleanup_worker_dir(manager, strategy):
  if not distribute.is_chief(strategy):
    shutil.rmtree(manager.directory, ignore_errors=True)


@contextlib.contextmanager
def _data_context(mock_data):
  """Under `mock_data`, TFDS datasets yield random examples (no download)."""
  if not mock_data:
    yield
    return
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  with tfds.testing.mock_data(num_examples=64):
    yield


def _mock_source() -> Optional[data.Source]:
  """Under --mock_data, random images stand in for the configured local files
  (TFDS datasets are mocked by `_data_context`); None otherwise."""
  if gin.query_parameter("source.name") in data.sources.SOURCES:
    return data.sources.RandomSource(image_shape=(96, 96, 3), num_examples=256)
  return None


def parse_args(argv=None):
  parser = argparse.ArgumentParser(
      description="Train a self-supervised pretext task (or the supervised "
                  "baseline) from gin configs.")
  gin_config.add_gin_flags(parser)
  parser.add_argument("--workdir", required=True,
                      help="output directory; rerunning resumes from its checkpoints.")
  parser.add_argument("--mock_data", action="store_true",
                      help="train on mock data of the right shapes (smoke test).")
  return parser.parse_args(argv)


@cli.entry_point
def main(argv=None):
  args = parse_args(argv)
  logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
  gin_config.parse_gin(args.gin, args.gin_param)
  source = _mock_source() if args.mock_data else None
  try:
    train(args.workdir, source=source, mock_data=args.mock_data)
  except Preempted as e:
    log.warning("%s", e)
    sys.exit(e.exit_status)
  except WorkerLost as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(1)


if __name__ == "__main__":
  main()
