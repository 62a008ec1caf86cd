"""tf.distribute strategies by name, and helpers for multi-worker file output."""
import json
import os
from typing import Callable, Optional

import numpy as np
import tensorflow as tf

from tfrevisit.registry import Registry

STRATEGIES = Registry("distribution strategy")


@STRATEGIES.register("auto")
def _auto():
  """MultiWorkerMirrored when TF_CONFIG names a cluster, else Mirrored."""
  if _cluster_spec():
    return _multi_worker()
  return mirrored()


@STRATEGIES.register("mirrored")
def mirrored(devices=None):
  """`devices` (default: all GPUs of this host, NCCL all-reduce, else its CPU).

  Without GPUs, gradients are reduced through one device: CPU collectives keep
  per-process state keyed by instance number, which breaks a second strategy
  in the same process (tests, notebooks; TF 2.21).
  """
  if tf.config.list_logical_devices("GPU"):
    return tf.distribute.MirroredStrategy(devices)
  return tf.distribute.MirroredStrategy(
      devices, cross_device_ops=tf.distribute.ReductionToOneDevice())


@STRATEGIES.register("multi_worker")
def _multi_worker(collective_timeout_s: Optional[float] = None):
  """MultiWorkerMirroredStrategy from TF_CONFIG.

  Args:
    collective_timeout_s: `CommunicationOptions.timeout_seconds`: a collective
      (all-reduce, broadcast) that has not completed after this many seconds
      fails with DeadlineExceeded, and the error reaches every worker through
      the coordination service, so the survivors of a dead worker exit instead
      of blocking in the collective. It bounds every collective, the first
      step's too (which waits for the slowest worker's tracing). None: no
      timeout.
  """
  options = tf.distribute.experimental.CommunicationOptions(
      timeout_seconds=collective_timeout_s)
  return tf.distribute.MultiWorkerMirroredStrategy(
      communication_options=options)


@STRATEGIES.register("tpu")
def _tpu():
  resolver = tf.distribute.cluster_resolver.TPUClusterResolver()
  tf.config.experimental_connect_to_cluster(resolver)
  tf.tpu.experimental.initialize_tpu_system(resolver)
  return tf.distribute.TPUStrategy(resolver)


@STRATEGIES.register("default")
def _default():
  """No distribution: the default strategy on the first device."""
  return tf.distribute.get_strategy()


def make_strategy(name: str, collective_timeout_s: Optional[float] = None
                 ) -> tf.distribute.Strategy:
  """The strategy `name`; `collective_timeout_s` applies to multi-worker ones
  (see `_multi_worker`)."""
  if name == "multi_worker" or (name == "auto" and _cluster_spec()):
    return _multi_worker(collective_timeout_s)
  return STRATEGIES.get(name)()


def _cluster_spec():
  return json.loads(os.environ.get("TF_CONFIG", "{}")).get("cluster")


def is_chief(strategy: tf.distribute.Strategy) -> bool:
  """True on the worker that writes checkpoints, summaries and exports."""
  resolver = getattr(strategy, "cluster_resolver", None)
  if resolver is None or not _cluster_spec():
    return True
  task_type, task_id = resolver.task_type, resolver.task_id
  return task_type in (None, "chief") or (task_type == "worker" and task_id == 0
                                          and "chief" not in resolver.cluster_spec().jobs)


def worker_dir(directory: str, strategy: tf.distribute.Strategy) -> str:
  """Where this worker writes: `directory` on the chief, a scratch dir elsewhere.

  Multi-worker checkpointing needs every worker to save (the save is a
  collective), but only the chief's copy is kept.
  """
  if is_chief(strategy):
    return directory
  return os.path.join(directory, f".worker{strategy.cluster_resolver.task_id}")


def replica_averager(strategy: tf.distribute.Strategy,
                     variables) -> Callable[[], None]:
  """A function that sets each variable's copies on all replicas to their mean.

  For the BatchNorm moving statistics: Keras creates them without a
  cross-replica aggregation, so each replica updates its own copy from its own
  batches and a read (a checkpoint, an export) sees only replica 0's. Averaging
  them (across all workers, too) before saving gives the statistics of every
  replica's data. Float variables that are distributed are averaged, in one
  all-reduce of their concatenation; others are left as they are. Build it
  once (it traces one graph) and call it in cross-replica context (outside
  `strategy.run`); under several workers every worker must call it.
  """
  variables = [
      v for v in variables if tf.as_dtype(v.dtype).is_floating and isinstance(
          getattr(v, "value", v), tf.distribute.DistributedValues)]
  if not variables or strategy.num_replicas_in_sync == 1:
    return lambda: None
  sizes = [int(np.prod(v.shape)) for v in variables]

  @tf.function
  def average():
    local = strategy.run(lambda: tf.concat(
        [tf.reshape(tf.cast(v.value, tf.float32), [-1]) for v in variables], 0))
    mean = strategy.reduce(tf.distribute.ReduceOp.MEAN, local, axis=None)
    for variable, part in zip(variables, tf.split(mean, sizes)):
      variable.assign(tf.cast(tf.reshape(part, variable.shape), variable.dtype))

  return average
