"""Gin for the command lines: parsing, flags, and the `backbone.*` bindings.

Only the command lines (train, evaluate, export, quickstart) parse gin.
Library code takes explicit values: a `models.Backbone`, task options, source
arguments; gin fills them by calling the configurables (`train`, `evaluate`,
`source`, the tasks, and `configured_backbone` here).
"""
import argparse
import os
from typing import Optional, Sequence

import gin

from tfrevisit import cli
from tfrevisit import models

# The repository's configs/ (installed with `pip install -e .`).
CONFIG_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                          "configs")


@gin.configurable("backbone")
def configured_backbone(name: str = gin.REQUIRED,
                        filters_factor: int = gin.REQUIRED,
                        last_relu: bool = True,
                        weight_decay: Optional[float] = None,
                        **options) -> models.Backbone:
  """The `models.Backbone` that the `backbone.*` bindings describe, e.g.
  `backbone.name = "revnet50"`, `backbone.filters_factor = 16`,
  `backbone.memory_efficient = False` (a family option)."""
  return models.Backbone(name, filters_factor, last_relu, weight_decay, options)


def parse_gin(files: Sequence[str], bindings: Sequence[str]) -> None:
  """Parses gin files and bindings.

  Raises:
    cli.UserError: a missing file or a bad binding (unknown name, bad syntax),
      with gin's message naming the culprit.
  """
  for path in files:
    if not os.path.exists(path):
      raise cli.UserError(f"gin config {path!r} does not exist; check --gin.")
  try:
    gin.parse_config_files_and_bindings(files, bindings)
  except (ValueError, SyntaxError) as e:
    raise cli.UserError(f"bad gin config: {cli.one_line(e)}") from e


def add_gin_flags(parser: argparse.ArgumentParser) -> None:
  """--gin FILE and --gin_param BINDING, both repeatable, and --verbose."""
  parser.add_argument("--gin", action="append", default=[],
                      help="gin config file; repeat to combine.")
  parser.add_argument("--gin_param", action="append", default=[],
                      help="gin binding such as 'train.batch_size = 8'; repeatable.")
  cli.add_verbose_flag(parser)
