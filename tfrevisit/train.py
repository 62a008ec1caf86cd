r"""Trains a pretext task: `python -m tfrevisit.train --gin configs/X.gin --workdir DIR`.

A custom training loop (`strategy.run` inside a `tf.function`) over Keras 3
models, with input from `distribute_datasets_from_function`, so that the same
code runs on one CPU, on several GPUs and on several hosts.

This module is the command line: it parses gin and composes the trainer's
parts in `tfrevisit.training` (building the run, the compiled loop, the
handling of preemption and lost peers), which take explicit arguments. The
backbone (a `models.Backbone`) and the data source are arguments of `train`;
`train_from_gin` (what `main` runs) builds them from the `backbone.*` and
`source.*` bindings. The run's task (name, backbone, options) is recorded in
the workdir, whose layout and formats `tfrevisit.artifacts` defines:
  config.gin        the operative gin config, written before the first step.
  task.json         what rebuilds the task (export reads it, not gin).
  checkpoints/      the last `keep_checkpoints` checkpoints; a rerun resumes.
  tb/               TensorBoard summaries.
  export/           the exported encoder (see tfrevisit.export).

Resume is exact (`training.run`): a run interrupted anywhere and resumed from
a checkpoint ends with the weights of an uninterrupted run. SIGTERM and SIGINT
(Ctrl-C) save a checkpoint at the current step (`training.faults`) and exit
with status 128 + the signal number.
"""
import argparse
import contextlib
import functools
import logging
import sys
from typing import Dict, Optional, Sequence, Union

import gin
import keras
import tensorflow as tf

from tfrevisit import artifacts
from tfrevisit import cli
from tfrevisit import data
from tfrevisit import distribute
from tfrevisit import export as export_lib
from tfrevisit import gin_config
from tfrevisit import models
from tfrevisit import pretext
from tfrevisit.training import faults
from tfrevisit.training import loop
from tfrevisit.training import run as run_lib

log = logging.getLogger("tfrevisit.train")


@gin.configurable("train", denylist=["workdir", "backbone", "source"])
def train(workdir: str,
          *,
          backbone: models.Backbone,
          source: data.Source,
          task: str = gin.REQUIRED,
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
          strategy: Union[str, tf.distribute.Strategy] = "auto",
          checkpoint_every_steps: int = 1000,
          keep_checkpoints: int = 3,
          log_every_steps: int = 50,
          seed: Optional[int] = 0,
          export: bool = True,
          steps_per_loop: int = 1,
          jit_compile: bool = False,
          collective_timeout_s: Optional[float] = None) -> Dict[str, float]:
  """Trains `task` and returns the metrics of the last logged interval.

  Args:
    workdir: output directory; a rerun with the same workdir resumes.
    backbone: the backbone to train (`gin_config.configured_backbone` gives
      the one the `backbone.*` bindings describe).
    source: the training data (`gin_config.configured_source`: the one the
      `source.*` bindings describe).
    task: name of a task in `tfrevisit.pretext.TASKS`; its options come from
      its bindings (`gin_config.configured_task`, e.g. `rotation.image_size`).
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
    mixed_precision: None (float32), "mixed_float16" (GPU, with loss scaling)
      or "mixed_bfloat16" (CPU/TPU).
    strategy: a name in `tfrevisit.distribute.STRATEGIES`, or a strategy.
    checkpoint_every_steps: checkpoint period in steps (and at the end).
    keep_checkpoints: how many recent checkpoints to keep.
    log_every_steps: logging and summary period in steps.
    seed: seed of weights, input order and augmentation (None: random).
    export: export the encoder when training ends.
    steps_per_loop: steps per call of the compiled training function (one
      host round trip per call; logs, checkpoints and NaN checks happen
      between calls, and a call never crosses a checkpoint or the end).
    jit_compile: compile each replica's forward and backward pass with XLA
      (the gradient all-reduce and the update stay outside, see
      `training.loop.make_train_step`).
    collective_timeout_s: multi-worker only: a collective (all-reduce) that
      waits longer than this fails (`CommunicationOptions.timeout_seconds`),
      so that the workers of a cluster with a dead worker exit with an error
      instead of waiting for ever. None: no timeout. Include the first step's
      tracing and compilation time.

  Raises:
    cli.UserError: a bad value (see `training.run.check_knobs`).
    training.faults.Preempted: SIGTERM or SIGINT arrived; a checkpoint at the
      current step was saved (rerun to resume).
  """
  strategy = _checked_strategy(
      strategy, collective_timeout_s, task=task, mixed_precision=mixed_precision,
      batch_size=batch_size, epochs=epochs, max_steps=max_steps, lr=lr,
      checkpoint_every_steps=checkpoint_every_steps,
      keep_checkpoints=keep_checkpoints, log_every_steps=log_every_steps,
      steps_per_loop=steps_per_loop)
  if seed is not None:
    keras.utils.set_random_seed(seed)
  # float32 too: else a policy left by an earlier call in this process applies.
  keras.mixed_precision.set_global_policy(mixed_precision or "float32")
  steps_per_epoch, total_steps = run_lib.run_length(
      source, train_split, batch_size, epochs, max_steps)

  # Build, then restore the newest checkpoint and position the input at its
  # step: all of it fails on bad input (a corrupt checkpoint, missing data)
  # before any output is written.
  run = run_lib.build_run(
      workdir, strategy,
      functools.partial(gin_config.configured_task, task, backbone=backbone,
                        num_classes=source.num_classes),
      optimization=run_lib.Optimization(
          lr=lr, lr_scale_batch_size=lr_scale_batch_size,
          warmup_epochs=warmup_epochs, decay_epochs=decay_epochs,
          lr_decay_factor=lr_decay_factor, momentum=momentum,
          mixed_precision=mixed_precision),
      batch_size=batch_size, steps_per_epoch=steps_per_epoch,
      total_steps=total_steps, keep_checkpoints=keep_checkpoints)
  run_lib.resume(run, workdir)
  dataset = run_lib.distributed_dataset(
      strategy, source, train_split, run.task.train_preprocess, batch_size,
      seed, run.step)

  cli.begin_work()
  if run.chief:
    artifacts.write_run_info(workdir, gin.operative_config_str(),
                             artifacts.task_record(run.task))
  metrics = _run_loop(
      run, dataset, workdir, batch_size=batch_size, jit_compile=jit_compile,
      checkpoint_every_steps=checkpoint_every_steps,
      log_every_steps=log_every_steps, steps_per_loop=steps_per_loop)
  run.remove_worker_checkpoints()
  if export and run.chief:
    export_lib.export_task(run.task, workdir, run.step,
                           gin_config=gin.config_str())
  return metrics


def _checked_strategy(strategy, collective_timeout_s, *, task,
                      mixed_precision, **knobs) -> tf.distribute.Strategy:
  """The strategy (made from its name), once `task`, `mixed_precision` and
  the other knobs (`training.run.check_knobs`) are known to be valid.

  Raises:
    cli.UserError: naming the first bad `train.*` value.
  """
  if mixed_precision not in run_lib.PRECISIONS:
    raise cli.UserError(f"Unknown train.mixed_precision {mixed_precision!r}; "
                        f"valid choices: {run_lib.PRECISIONS}.")
  pretext.TASKS.get(task)  # Fail on an unknown task before any work.
  if isinstance(strategy, str):
    strategy = distribute.make_strategy(
        strategy, collective_timeout_s=collective_timeout_s)
  run_lib.check_knobs(num_replicas=strategy.num_replicas_in_sync, **knobs)
  return strategy


def _run_loop(run: run_lib.Run, dataset, workdir: str, *, batch_size: int,
              jit_compile: bool, **loop_options) -> Dict[str, float]:
  """Trains `run` to its last step under the preemption and peer-failure
  handlers; returns the metrics of the last logged interval."""
  step_fn = loop.make_train_step(run.task, run.optimizer, run.strategy,
                                 batch_size, jit_compile=jit_compile)
  writer = loop.summary_writer(artifacts.summary_dir(workdir), run.chief)
  with faults.preemption_handler(run.strategy, run.manager, run.global_step,
                                 run.save) as handler, \
      faults.peer_failures(run.strategy, run.global_step, workdir):
    return loop.train_loop(
        step_fn, iter(dataset), run.optimizer, run.global_step, run.save,
        run.manager, run.total_steps, batch_size=batch_size, writer=writer,
        run=handler.run, **loop_options)


def train_from_gin(workdir: str, *, mock_data: bool = False,
                   **overrides) -> Dict[str, float]:
  """`train` on the backbone and the data source that the gin bindings
  describe (`backbone.*`, `source.*`): what `main` runs.

  Args:
    workdir: output directory; a rerun with the same workdir resumes.
    mock_data: train on mock data of the right shapes: TFDS datasets yield
      random examples, and random images stand in for local sources.
    **overrides: other arguments of `train` (e.g. `strategy`, `max_steps`);
      the rest come from the `train.*` bindings.
  """
  gin_config.check_required("train")  # Name the `train.*` to bind first.
  with _data_context(mock_data):
    source = None
    if mock_data:
      source = _mock_source(gin.query_parameter("source.name"))
    return train(workdir, backbone=gin_config.configured_backbone(),
                 source=source or gin_config.configured_source(), **overrides)


@contextlib.contextmanager
def _data_context(mock_data):
  """Under `mock_data`, TFDS datasets yield random examples (no download)."""
  if not mock_data:
    yield
    return
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  with tfds.testing.mock_data(num_examples=64):
    yield


def _mock_source(name: str) -> Optional[data.Source]:
  """Random images standing in for the local source `name` under
  --mock_data (TFDS datasets are mocked by `_data_context`); None for a TFDS
  dataset."""
  if name in data.sources.SOURCES:
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
  try:
    train_from_gin(args.workdir, mock_data=args.mock_data)
  except faults.Preempted as e:
    log.warning("%s", e)
    sys.exit(e.exit_status)
  except faults.WorkerLost as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(1)


if __name__ == "__main__":
  main()
