"""What stops a training run early, and how: preemption and lost peers.

SIGTERM and SIGINT (Ctrl-C) save a checkpoint at the current step through
`tf.distribute.experimental.PreemptionCheckpointHandler` (all workers agree on
the step) and raise `Preempted`; a failed collective under several workers
becomes `WorkerLost`, with what to do.
"""
import contextlib
import logging
import signal
import threading

import tensorflow as tf

from tfrevisit import artifacts
from tfrevisit import cli

log = logging.getLogger("tfrevisit.train")


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


class WorkerLost(RuntimeError):
  """A collective with the other workers failed: one of them died or hung."""


# What a collective raises when a peer is gone: its timeout
# (`collective_timeout_s`), the coordination service's missed heartbeats, or
# the error another worker reported to the cluster.
_PEER_ERRORS = (tf.errors.DeadlineExceededError, tf.errors.UnavailableError,
                tf.errors.AbortedError, tf.errors.CancelledError,
                tf.errors.InternalError)


@contextlib.contextmanager
def preemption_handler(strategy, manager, global_step, save):
  """A `tf.distribute.experimental.PreemptionCheckpointHandler` whose
  termination signal is SIGTERM or SIGINT on any worker.

  Its `run(step_fn, *args)` runs a training call; after a signal, all workers
  agree on a step, `save` a checkpoint there (statistics averaged first) and
  raise `Preempted`. A second SIGINT raises `KeyboardInterrupt` at once. The
  previous signal handlers are restored on exit. Outside the main thread
  (no signal handlers can be installed) it yields a plain runner.

  Args:
    strategy: the run's strategy (its cluster resolver, if any, is used).
    manager: the run's `tf.train.CheckpointManager`.
    global_step: the int64 variable counting the steps run.
    save: `save(step)` writes the checkpoint of step `step`.
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


@contextlib.contextmanager
def peer_failures(strategy, global_step, workdir):
  """Under several workers, turns a failed collective into `WorkerLost`."""
  try:
    yield
  except _PEER_ERRORS as e:
    if not cluster_workers(strategy) > 1:
      raise
    raise WorkerLost(
        f"Training stopped at step {int(global_step.numpy())}: a "
        f"collective with the other workers failed ({type(e).__name__}: "
        f"{cli.one_line(e)[:300]}). A worker probably died; restart all "
        "workers to resume from the last checkpoint in "
        f"{artifacts.checkpoint_dir(workdir)}.") from e


def cluster_workers(strategy) -> int:
  """The number of tasks in `strategy`'s cluster (1 without a cluster)."""
  resolver = getattr(strategy, "cluster_resolver", None)
  if resolver is None:
    return 1
  return sum(len(tasks) for tasks in resolver.cluster_spec().as_dict().values())


class _PlainRunner:
  """`PreemptionCheckpointHandler.run` without preemption handling."""

  def run(self, fn, *args, **kwargs):
    return fn(*args, **kwargs)
