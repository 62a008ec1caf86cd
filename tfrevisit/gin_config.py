"""Gin parsing shared by the command lines, and where the configs live."""
import argparse
import os
from typing import Sequence

import gin

# The repository's configs/ (installed with `pip install -e .`).
CONFIG_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                          "configs")


def parse_gin(files: Sequence[str], bindings: Sequence[str]) -> None:
  """Parses gin files and bindings; a missing file or a bad binding fails here,
  before any work, with gin's message naming the culprit."""
  for path in files:
    if not os.path.exists(path):
      raise FileNotFoundError(f"gin config {path!r} does not exist.")
  gin.parse_config_files_and_bindings(files, bindings)


def add_gin_flags(parser: argparse.ArgumentParser) -> None:
  """--gin FILE and --gin_param BINDING, both repeatable."""
  parser.add_argument("--gin", action="append", default=[],
                      help="gin config file; repeat to combine.")
  parser.add_argument("--gin_param", action="append", default=[],
                      help="gin binding such as 'train.batch_size = 8'; repeatable.")
