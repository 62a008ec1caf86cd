"""Building a training run: its length, task, optimizer, checkpoint and input.

`build_run` makes, in the strategy's scope, what a run trains and saves, and
returns it as a `Run`; `resume` restores the newest checkpoint of the workdir
into it, and `distributed_dataset` gives the input from the run's step on.
The run's files and formats are `tfrevisit.artifacts`'.

Resume is exact: the batches of step s are a pure function of (seed, s) (see
`data.make_dataset`), and the checkpoint holds the weights, the optimizer, the
step and the states of Keras' random layers, so a run interrupted anywhere
and resumed ends with the weights of an uninterrupted run.
"""
import dataclasses
import logging
import shutil
from typing import Callable, Dict, Optional, Sequence, Tuple

import keras
import tensorflow as tf

from tfrevisit import artifacts
from tfrevisit import cli
from tfrevisit import data
from tfrevisit import distribute
from tfrevisit import pretext
from tfrevisit import restore
from tfrevisit import schedules

log = logging.getLogger("tfrevisit.train")

# Mixed-precision policies by name; the heads and the loss stay float32.
PRECISIONS = (None, "mixed_float16", "mixed_bfloat16")


@dataclasses.dataclass
class Run:
  """What a training run trains and saves, built in `strategy`'s scope.

  Attributes:
    strategy: the distribution strategy.
    task: the task; its variables are built.
    optimizer: SGD (wrapped in a `LossScaleOptimizer` under mixed_float16),
      built on the task's trainable variables.
    global_step: int64 variable, the steps run (`optimizer.iterations` counts
      applied updates only: mixed_float16's loss scaling skips the steps whose
      gradients overflow).
    manager: keeps the last checkpoints of the task, optimizer and step (each
      worker its own directory; the chief's is the run's).
    total_steps: the step at which training ends.
    average_statistics: sets every replica's copy of the moving statistics
      to their mean, the statistics of the whole global batch.
  """
  strategy: tf.distribute.Strategy
  task: pretext.Task
  optimizer: keras.optimizers.Optimizer
  global_step: tf.Variable
  manager: tf.train.CheckpointManager
  total_steps: int
  average_statistics: Callable[[], None]

  @property
  def step(self) -> int:
    return int(self.global_step.numpy())

  @property
  def chief(self) -> bool:
    return distribute.is_chief(self.strategy)

  def save(self, step: int) -> None:
    """Averages the replicas' copies of the moving statistics, then saves the
    checkpoint of `step`."""
    self.average_statistics()
    self.manager.save(checkpoint_number=step)

  def remove_worker_checkpoints(self) -> None:
    """On a worker other than the chief, deletes its checkpoint directory."""
    if not self.chief:
      shutil.rmtree(self.manager.directory, ignore_errors=True)


@dataclasses.dataclass(frozen=True)
class Optimization:
  """The SGD of a run: learning-rate schedule (in epochs) and momentum.

  The rate is `lr * batch_size / lr_scale_batch_size` after a linear warm-up
  of `warmup_epochs`, multiplied by `lr_decay_factor` at each of
  `decay_epochs`.
  """
  lr: float
  lr_scale_batch_size: int
  warmup_epochs: float
  decay_epochs: Sequence[float]
  lr_decay_factor: float
  momentum: float
  mixed_precision: Optional[str]

  def schedule(self, batch_size: int, steps_per_epoch: int
               ) -> schedules.WarmupStepDecay:
    return schedules.WarmupStepDecay(
        base_lr=self.lr * batch_size / self.lr_scale_batch_size,
        warmup_steps=int(self.warmup_epochs * steps_per_epoch),
        decay_steps=[int(e * steps_per_epoch) for e in self.decay_epochs],
        decay_factor=self.lr_decay_factor)


def build_run(workdir: str, strategy: tf.distribute.Strategy,
              make_task: Callable[[], pretext.Task], *,
              optimization: Optimization, batch_size: int,
              steps_per_epoch: int, total_steps: int,
              keep_checkpoints: int) -> Run:
  """Builds the task (`make_task()`), the optimizer and the step counter in
  `strategy`'s scope, and the checkpoint manager of `workdir` (restores
  nothing: see `resume`)."""
  with strategy.scope():
    task = make_task()
    optimizer = make_optimizer(
        optimization.schedule(batch_size, steps_per_epoch),
        optimization.momentum, optimization.mixed_precision)
    optimizer.build(task.trainable_variables)
    global_step = tf.Variable(0, dtype=tf.int64, trainable=False,
                              name="global_step")
  checkpoint = tf.train.Checkpoint(optimizer=optimizer, step=global_step,
                                   **task.checkpoint_items(),
                                   **_seed_states(task))
  manager = tf.train.CheckpointManager(
      checkpoint,
      distribute.worker_dir(artifacts.checkpoint_dir(workdir), strategy),
      max_to_keep=keep_checkpoints)
  average_statistics = distribute.replica_averager(
      strategy, [v for model in task.checkpoint_items().values()
                 for v in model.non_trainable_variables])
  return Run(strategy, task, optimizer, global_step, manager, total_steps,
             average_statistics)


def resume(run: Run, workdir: str) -> None:
  """Restores the newest of the chief's checkpoints in `workdir` into `run`
  (every worker resumes from it); nothing if there is none.

  Raises:
    ValueError: the run's backbone layout computes differently today
      (`restore.check_resumable`).
    cli.UserError: the checkpoint is truncated or corrupt.
  """
  existing = artifacts.existing_checkpoints(
      _checkpoint_paths(artifacts.checkpoint_dir(workdir)))
  if not existing:
    return
  restore.check_resumable(workdir, run.task.backbone)
  artifacts.restore_checkpoint(run.manager.checkpoint, existing[-1]
                               ).assert_existing_objects_matched()
  if not run.step:  # A checkpoint from before `step`.
    run.global_step.assign(run.optimizer.iterations)
  log.info("Resumed from %s (step %d).", existing[-1], run.step)


def run_length(source: data.Source, split: str, batch_size: int,
               epochs: float, max_steps: Optional[int]) -> Tuple[int, int]:
  """(steps per epoch of `split`, total steps: `epochs` of them, at most
  `max_steps`).

  Raises:
    cli.UserError: `epochs` is less than one step (and `max_steps` is not 0).
  """
  steps_per_epoch = max(source.num_examples(split) // batch_size, 1)
  total_steps = int(epochs * steps_per_epoch)
  if max_steps is not None:
    total_steps = min(total_steps, max_steps)
  if total_steps == 0 and max_steps != 0:
    raise cli.UserError(
        f"train.epochs = {epochs} is less than one step ({steps_per_epoch} "
        "steps per epoch); raise train.epochs.")
  return steps_per_epoch, total_steps


def distributed_dataset(strategy, source, split, preprocess, batch_size, seed,
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


def make_optimizer(learning_rate, momentum, mixed_precision):
  """SGD with momentum; under mixed_float16 wrapped in dynamic loss scaling."""
  optimizer = keras.optimizers.SGD(learning_rate=learning_rate, momentum=momentum)
  if mixed_precision == "mixed_float16":
    optimizer = keras.optimizers.LossScaleOptimizer(optimizer)
  return optimizer


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
