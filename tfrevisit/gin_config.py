"""Gin for the command lines: parsing, flags, and the `backbone.*` bindings.

Only the command lines (train, evaluate, export, quickstart) parse gin.
The library takes explicit values: a `models.Backbone` carries everything
that shapes the network, filled here from the `backbone.*` bindings
(`configured_backbone`), so task.json records all of it. The data sources,
tasks and probes import no gin either: they are registered here under their
configurable names (`source`, `rotation`, `knn_probe`, ...) without being
wrapped, and the command lines build them with their bindings
(`configured_source`, `configured_task`, `configured_probe`). Gin also fills
the configurables of the command lines (`train`, `evaluate`, ...).

The bindings of older versions `batch_norm.momentum`, `batch_norm.epsilon` and
`kernel_initializer.name` still work: they set the backbone's
`batch_norm_momentum`, `batch_norm_epsilon` and `kernel_initializer`, as do
`backbone.batch_norm_momentum` etc. (the names to use now); binding both names
of one setting to different values is an error.
"""
import argparse
import functools
import inspect
import logging
import os
from typing import Optional, Sequence

import gin

from tfrevisit import cli
from tfrevisit import data
from tfrevisit import models
from tfrevisit import pretext
from tfrevisit.evaluation import fewshot
from tfrevisit.evaluation import finetune
from tfrevisit.evaluation import keras_probes
from tfrevisit.evaluation import knn
from tfrevisit.evaluation import layer_plots
from tfrevisit.evaluation import linear
from tfrevisit.evaluation import linear_on_images
from tfrevisit.evaluation import probes

# The old binding of each backbone setting: (configurable, parameter).
_OLD_BINDINGS = {"batch_norm_momentum": ("batch_norm", "momentum"),
                 "batch_norm_epsilon": ("batch_norm", "epsilon"),
                 "kernel_initializer": ("kernel_initializer", "name")}

# The repository's configs/ (installed with `pip install -e .`).
CONFIG_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                          "configs")


@gin.configurable("backbone")
def configured_backbone(name: str = gin.REQUIRED,
                        filters_factor: int = gin.REQUIRED,
                        last_relu: bool = True,
                        weight_decay: Optional[float] = None,
                        batch_norm_momentum: Optional[float] = None,
                        batch_norm_epsilon: Optional[float] = None,
                        kernel_initializer: Optional[str] = None,
                        **options) -> models.Backbone:
  """The `models.Backbone` that the `backbone.*` bindings describe, e.g.
  `backbone.name = "revnet50"`, `backbone.filters_factor = 16`,
  `backbone.batch_norm_epsilon = 1e-5`, `backbone.memory_efficient = False`
  (a family option). A None setting takes the old binding (`batch_norm.*`,
  `kernel_initializer.name`) if bound, else `models.Backbone`'s default.

  Raises:
    ValueError: a setting bound under both names, to different values.
  """
  settings = {"batch_norm_momentum": batch_norm_momentum,
              "batch_norm_epsilon": batch_norm_epsilon,
              "kernel_initializer": kernel_initializer}
  old = {**_old_batch_norm(), **_old_kernel_initializer()}
  for field, value in settings.items():
    old_value = old[field]
    if value is not None and old_value is not None and value != old_value:
      configurable, parameter = _OLD_BINDINGS[field]
      raise ValueError(
          f"backbone.{field} = {value!r} contradicts the old binding "
          f"{configurable}.{parameter} = {old_value!r}; bind only "
          f"backbone.{field}.")
    if value is None:
      settings[field] = old_value
  return models.Backbone(
      name, filters_factor, last_relu, weight_decay, options,
      **{field: value for field, value in settings.items()
         if value is not None})


@gin.configurable("batch_norm")
def _old_batch_norm(momentum: Optional[float] = None,
                    epsilon: Optional[float] = None):
  """`batch_norm.momentum` and `.epsilon`, the old names of
  `backbone.batch_norm_momentum` and `.batch_norm_epsilon` (still read: the
  config.gin of older runs binds them)."""
  return {"batch_norm_momentum": momentum, "batch_norm_epsilon": epsilon}


@gin.configurable("kernel_initializer")
def _old_kernel_initializer(name: Optional[str] = None):
  """`kernel_initializer.name`: the old `backbone.kernel_initializer`."""
  return {"kernel_initializer": name}


def parse_gin(files: Sequence[str], bindings: Sequence[str]) -> None:
  """Parses gin files and bindings.

  Raises:
    cli.UserError: a missing file or include, or a bad binding (unknown
      name, bad syntax), with gin's message naming the culprit.
  """
  for path in files:
    if not os.path.exists(path):
      raise cli.UserError(f"gin config {path!r} does not exist; check --gin.")
  quiet = _IncludeLookupFilter()
  logging.getLogger().addFilter(quiet)
  try:
    gin.parse_config_files_and_bindings(files, bindings)
  except (ValueError, SyntaxError, OSError) as e:  # OSError: a missing include
    raise cli.UserError(f"bad gin config: {cli.one_line(e)}") from e
  finally:
    logging.getLogger().removeFilter(quiet)


class _IncludeLookupFilter(logging.Filter):
  """Drops gin's "Path not found" error for an include found on a search
  path (e.g. the study's, relative to configs/): gin first tries the working
  directory and logs that error; a missing include still raises."""

  def filter(self, record: logging.LogRecord) -> bool:
    return not record.getMessage().startswith(
        ("Path not found: ", "system_path_file_exists:"))


def check_required(name: str) -> None:
  """Raises gin's error for the `gin.REQUIRED` parameters of configurable
  `name` that no binding sets, as calling it would, before a command builds
  anything else (so that it names what to bind first).

  Raises:
    RuntimeError: "Required bindings for `name` not provided in config: [...]"
      (a user error for `cli.entry_point`).
  """
  bound = gin.get_bindings(name)
  missing = [parameter for parameter, value in inspect.signature(
      gin.get_configurable(name)).parameters.items()
             if value.default is gin.REQUIRED and parameter not in bound]
  if missing:
    raise RuntimeError(f"Required bindings for `{name}` not provided in "
                       f"config: {missing}")


def add_gin_flags(parser: argparse.ArgumentParser) -> None:
  """--gin FILE and --gin_param BINDING, both repeatable, and --verbose."""
  parser.add_argument("--gin", action="append", default=[],
                      help="gin config file; repeat to combine.")
  parser.add_argument("--gin_param", action="append", default=[],
                      help="gin binding such as 'train.batch_size = 8'; repeatable.")
  cli.add_verbose_flag(parser)


# --- Evaluation (tfrevisit/evaluation): configurable names as before issue
# 30. The functions are registered, not wrapped: they stay plain, and the
# command lines call their configured versions (`configured_probe`,
# `gin.get_configurable`).
_FEATURE_ARGUMENTS = ["train_features", "train_labels", "eval_features",
                      "eval_labels", "num_classes"]
_EVALUATION_CONFIGURABLES = (
    (linear.select_l2_and_fit,
     ["train", "val", "trainval", "test", "num_classes"]),
    (keras_probes.train_mlp, _FEATURE_ARGUMENTS),
    (keras_probes.train_linear_sgd, _FEATURE_ARGUMENTS),
    (keras_probes.mlp_probe, ["inputs", "fit"]),
    (knn.knn_probe, ["inputs"]),
    (fewshot.fewshot_probe, ["inputs"]),
    (linear_on_images.train_linear_sgd_on_images, ["context", "num_classes"]),
    (finetune.train_finetune, ["context", "num_classes"]),
    (layer_plots.write_plots, ["rows", "workdir"]),
)
for _function, _denylist in _EVALUATION_CONFIGURABLES:
  gin.register(_function.__name__, denylist=_denylist)(_function)


def _configured(function):
  """`function` with its gin bindings if it is registered, else itself."""
  registered = any(function is f for f, _ in _EVALUATION_CONFIGURABLES)
  return gin.get_configurable(function) if registered else function


def configured_probe(name: str) -> probes.Probe:
  """Probe `name` of `probes.PROBES` with its gin bindings: its own
  (`knn_probe.ks`) and those of the function it trains with, its `fit`
  argument (`train_mlp.epochs`, `select_l2_and_fit.max_iterations`)."""
  probe = probes.PROBES.get(name)
  fit = inspect.signature(probe).parameters.get("fit")
  options = {"fit": _configured(fit.default)} if fit else {}
  return functools.partial(_configured(probe), **options)


# --- Data sources and pretext tasks (tfrevisit/data, tfrevisit/pretext):
# configurable names as before issue 30 (`source`, `rotation`, ...). Registered,
# not wrapped: the command lines build them with their bindings through
# `configured_source` and `configured_task`.
_DATA_AND_TASK_CONFIGURABLES = {
    "source": data.get_source,
    **{name: pretext.TASKS.get(name) for name in pretext.TASKS.names()},
}
for _name, _configurable in _DATA_AND_TASK_CONFIGURABLES.items():
  gin.register(_name)(_configurable)


def configured_source() -> data.Source:
  """The data source that the `source.*` bindings describe (`data.get_source`),
  e.g. `source.name = "imagenet2012"`, `source.data_dir = "/data"`."""
  return gin.get_configurable(data.get_source)()


def configured_task(name: str, *, backbone: models.Backbone,
                    num_classes: int) -> pretext.Task:
  """Task `name` (`pretext.get_task`) with the options its bindings give,
  e.g. `rotation.image_size = 32`; the others take the task's defaults.

  Raises:
    ValueError: an unknown task, listing the known ones.
  """
  return gin.get_configurable(pretext.TASKS.get(name))(
      backbone=backbone, num_classes=num_classes)
