"""Tests for the probe registry: one interface, every probe registered."""
import inspect

import gin
import numpy as np

from tfrevisit import gin_config
from tfrevisit.evaluation import probes
from tfrevisit.evaluation.inputs import ProbeInputs


def test_every_probe_is_registered_with_what_it_needs():
  assert {name: probes.needs(name) for name in probes.PROBES.names()} == {
      "linear": "features", "mlp": "features", "linear_sgd": "features",
      "knn": "features", "fewshot": "features",
      "linear_sgd_images": "images", "finetune": "images"}


def test_every_probe_takes_its_inputs_first_and_defaults_for_the_rest():
  for name in probes.PROBES.names():
    parameters = list(
        inspect.signature(probes.PROBES.get(name)).parameters.values())
    assert parameters[0].name == "inputs", name
    assert all(p.default is not p.empty for p in parameters[1:]), name


def test_configured_probe_passes_the_bindings_of_its_fit_function():
  """`select_l2_and_fit.l2_grid` reaches the linear probe through the
  command line's configured probe, not through the library function."""
  rng = np.random.default_rng(0)
  labels = np.arange(60) % 3
  features = (np.eye(3)[labels] + 0.1 * rng.normal(size=(60, 3))).astype(
      np.float32)
  inputs = ProbeInputs(3, features={name: (features, labels) for name in (
      "train", "val", "trainval", "test")})
  gin.parse_config(["select_l2_and_fit.l2_grid = [0.5]",
                    "select_l2_and_fit.max_extra_decades = 0"])
  configured = gin_config.configured_probe("linear")(inputs)
  plain = probes.PROBES.get("linear")(inputs)
  assert configured["l2_grid"] == [0.5]
  assert len(plain["l2_grid"]) >= 7 and 0.5 not in plain["l2_grid"]
