"""Shared pytest setup: Keras on TensorFlow, quiet logs, two logical CPU devices."""
import os
import socket

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import pytest  # pylint: disable=g-import-not-at-top
import tensorflow as tf  # pylint: disable=g-import-not-at-top

# Two logical CPUs so that MirroredStrategy tests have two replicas. Must happen
# before TensorFlow initialises its devices, hence here at collection time.
_cpus = tf.config.list_physical_devices("CPU")
tf.config.set_logical_device_configuration(
    _cpus[0], [tf.config.LogicalDeviceConfiguration()] * 2)


@pytest.fixture(name="free_ports")
def _free_ports():
  """`free_ports(n)`: n TCP ports on 127.0.0.1 free right now (loopback
  clusters in multi-worker tests)."""
  def free_ports(count):
    sockets = [socket.socket() for _ in range(count)]
    for s in sockets:
      s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
      s.close()
    return ports
  return free_ports


@pytest.fixture(name="two_cpu_strategy")
def _two_cpu_strategy():
  """MirroredStrategy over the two logical CPUs."""
  from tfrevisit import distribute  # pylint: disable=g-import-not-at-top
  return distribute.mirrored(["/cpu:0", "/cpu:1"])


@pytest.fixture(name="shallow_backbones", scope="module")
def _shallow_backbones():
  """ResNet50 and RevNet50 with one unit per stage instead of (3, 4, 6, 3),
  for the rest of the module: the same layer kinds, end points and code
  paths with a quarter of the graph to trace. For modules that test training,
  export and evaluation, not the architectures (test_models.py and
  test_revnet_memory.py build them at full depth). Models rebuilt in a
  subprocess are full depth."""
  from tfrevisit.models import resnet, revnet  # pylint: disable=g-import-not-at-top
  with pytest.MonkeyPatch.context() as patch:
    for module in (resnet, revnet):
      patch.setattr(module, "UNITS_PER_STAGE", (1, 1, 1, 1))
    yield


@pytest.fixture(autouse=True)
def _clean_global_state():
  """Every test starts and ends with an empty gin config, and ends with
  Keras's float32 policy (`train()` sets the global policy)."""
  import gin  # pylint: disable=g-import-not-at-top
  import keras  # pylint: disable=g-import-not-at-top
  gin.clear_config()
  yield
  gin.clear_config()
  keras.mixed_precision.set_global_policy("float32")
