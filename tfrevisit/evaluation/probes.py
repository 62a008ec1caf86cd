"""The probes: one interface, one registry (`PROBES`), every probe listed here.

A probe is a function `probe(inputs, **options) -> row`, registered under the
name that `evaluate.probes` lists, with what it `needs`:
  inputs: a `inputs.ProbeInputs`: C, and either the feature splits of one end
    point (needs "features": {"train", "val", "trainval", "test"} ->
    (features [N, D], labels [N]), see `splits`) or an
    `inputs.ImageProbeContext` (needs "images": the export, the data and the
    end point; the probe reads images itself).
  options: its hyper-parameters, with defaults. A probe that trains a model
    takes the training function as `fit` (default: the plain function); the
    command line passes the gin-configured one (`gin_config.configured_probe`),
    so that `train_mlp.epochs = 10` or `select_l2_and_fit.max_iterations` in
    a config reach it.
  row: {"top1", "top5"} on the reported split (fractions) plus whatever else
    the probe reports (chosen L2, epochs, wall time...), JSON-serialisable.
To add a probe, write such a function and register it below.
"""
from typing import Any, Callable, Dict

from tfrevisit.evaluation import fewshot
from tfrevisit.evaluation import finetune
from tfrevisit.evaluation import keras_probes
from tfrevisit.evaluation import knn
from tfrevisit.evaluation import linear
from tfrevisit.evaluation import linear_on_images
from tfrevisit.evaluation.inputs import FEATURES, IMAGES
from tfrevisit.registry import Registry

Probe = Callable[..., Dict[str, Any]]
PROBES = Registry("probe")

# The paper's L-BFGS logistic regression, L2 chosen on train -> val.
PROBES.register("linear", needs=FEATURES)(linear.linear_probe)
# The paper's MLP and the release's SGD linear layer, Keras `fit`.
PROBES.register("mlp", needs=FEATURES)(keras_probes.mlp_probe)
PROBES.register("linear_sgd", needs=FEATURES)(keras_probes.linear_sgd_probe)
# Weighted k-nearest neighbours; n-shot ridge regression (big_vision's).
PROBES.register("knn", needs=FEATURES)(knn.knn_probe)
PROBES.register("fewshot", needs=FEATURES)(fewshot.fewshot_probe)
# The release's SGD evaluation on augmented images through the frozen encoder.
PROBES.register("linear_sgd_images", needs=IMAGES)(
    linear_on_images.linear_sgd_images_probe)
# The encoder and a linear head trained end to end.
PROBES.register("finetune", needs=IMAGES)(finetune.finetune_probe)


def needs(name: str) -> str:
  """What probe `name` takes from `evaluate`: "features" or "images"."""
  return PROBES.properties(name)["needs"]

