"""The study's grid: cells, the architectures they name, and gin blocks.

A cell is one trained model and its evaluations. Blocks are gin-configured
products of tasks x architectures x widths x seeds that each ask for some
evaluations; `grid` merges them into one ordered list of cells, so a cell named
by several blocks (e.g. the full grid and the seeds) is trained once and gets
the union of their evaluations.
"""
import dataclasses
import fnmatch
import os
from typing import Dict, List, Sequence, Tuple

import gin

from tfrevisit import gin_config


@dataclasses.dataclass(frozen=True)
class Architecture:
  """A backbone variant of the paper's Table 1."""
  backbone: str     # `backbone.name`
  last_relu: bool   # False: the paper's "(-)" variant
  title: str        # the paper's name, for tables and plots


# Labels used in cell names -> backbone settings, in the paper's column order.
ARCHITECTURES = {
    "resnet50_v1": Architecture("resnet50_v1", True, "ResNet50 v1"),
    "resnet50_v2": Architecture("resnet50_v2", True, "ResNet50 v2"),
    "resnet50_v2_minus": Architecture("resnet50_v2", False, "ResNet50 v2 (-)"),
    "revnet50": Architecture("revnet50", True, "RevNet50"),
    "revnet50_minus": Architecture("revnet50", False, "RevNet50 (-)"),
    "vgg19": Architecture("vgg19", True, "VGG19-BN"),
}
TASKS = ("rotation", "exemplar", "relative_patch_location", "jigsaw", "supervised",
         "random_init")
# Reference rows rather than pretext tasks: the supervised baseline and the
# untrained network (its export at initialisation).
REFERENCES = ("supervised", "random_init")
SELF_SUPERVISED = tuple(t for t in TASKS if t not in REFERENCES)


@dataclasses.dataclass(frozen=True)
class Cell:
  """One model of the study and the evaluation jobs to run on it.

  Attributes:
    task: a name in TASKS.
    architecture: a label in ARCHITECTURES.
    filters_factor: the widening factor k.
    seed: `train.seed` (weights, input order, augmentation).
    evals: names of evaluation configs (configs/study/eval/NAME.gin), each run
      as one `tfrevisit.evaluate` call on the cell's export.
  """
  task: str
  architecture: str
  filters_factor: int
  seed: int
  evals: Tuple[str, ...]

  @property
  def name(self) -> str:
    return f"{self.task}-{self.architecture}-k{self.filters_factor}-s{self.seed}"

  @property
  def key(self) -> Tuple[str, str, int, int]:
    return (self.task, self.architecture, self.filters_factor, self.seed)

  def train_bindings(self) -> List[str]:
    """Gin bindings that turn the task's config into this cell's."""
    arch = ARCHITECTURES[self.architecture]
    return [f'backbone.name = "{arch.backbone}"',
            f"backbone.last_relu = {arch.last_relu}",
            f"backbone.filters_factor = {self.filters_factor}",
            f"train.seed = {self.seed}"]


@gin.configurable("block")
def block(tasks: Sequence[str] = TASKS,
          architectures: Sequence[str] = tuple(ARCHITECTURES),
          widths: Sequence[int] = (1,),
          seeds: Sequence[int] = (0,),
          evals: Sequence[str] = ("linear",)) -> List[Cell]:
  """The product tasks x architectures x widths x seeds, each with `evals`."""
  for task in tasks:
    if task not in TASKS:
      raise ValueError(f"Unknown study task {task!r}; valid: {TASKS}.")
  for architecture in architectures:
    if architecture not in ARCHITECTURES:
      raise ValueError(f"Unknown study architecture {architecture!r}; valid: "
                       f"{tuple(ARCHITECTURES)}.")
  return [Cell(t, a, int(k), int(s), tuple(evals))
          for t in tasks for a in architectures for k in widths for s in seeds]


def merge(blocks: Sequence[Sequence[Cell]]) -> List[Cell]:
  """Cells of all blocks, in first-appearance order, one per (task,
  architecture, k, seed), with the union of their evals."""
  merged: Dict[Tuple, Cell] = {}
  for cells in blocks:
    for cell in cells:
      if cell.key in merged:
        evals = tuple(dict.fromkeys(merged[cell.key].evals + cell.evals))
        cell = dataclasses.replace(merged[cell.key], evals=evals)
      merged[cell.key] = cell
  return list(merged.values())


@dataclasses.dataclass(frozen=True)
class Study:
  """A grid of cells and how to run them.

  Attributes:
    cells: the grid, in run order.
    train_configs: task -> its training gin file.
    eval_config_dir: directory of the evaluation configs (`common.gin`, which
      every evaluation job of a cell shares, so that they share the feature
      cache, plus one NAME.gin per evaluation job).
    train_params, eval_params: extra gin bindings for every cell.
    train_minutes: task -> rough minutes to train a k=1 ResNet50 v2 cell.
    eval_minutes: evaluation job -> rough minutes on a k=1 ResNet50 v2 cell.
    architecture_cost: architecture label -> cost relative to ResNet50 v2.
    width_cost: k -> cost relative to k=1 (default k**1.5).
  """
  cells: Tuple[Cell, ...]
  train_configs: Dict[str, str]
  eval_config_dir: str
  train_params: Tuple[str, ...] = ()
  eval_params: Tuple[str, ...] = ()
  train_minutes: Dict[str, float] = dataclasses.field(default_factory=dict)
  eval_minutes: Dict[str, float] = dataclasses.field(default_factory=dict)
  architecture_cost: Dict[str, float] = dataclasses.field(default_factory=dict)
  width_cost: Dict[int, float] = dataclasses.field(default_factory=dict)

  def select(self, pattern: str) -> List[Cell]:
    """Cells whose name matches the shell pattern (`*` for all)."""
    return [c for c in self.cells if fnmatch.fnmatchcase(c.name, pattern)]

  def eval_configs(self, name: str) -> List[str]:
    """The gin files of evaluation job `name`: common.gin, then NAME.gin."""
    return [os.path.join(self.eval_config_dir, "common.gin"),
            os.path.join(self.eval_config_dir, f"{name}.gin")]

  def estimated_minutes(self, cell: Cell) -> float:
    """Config estimate of a cell's minutes: (training + its evaluation jobs)
    on ResNet50 v2 at k=1, times the architecture's and the width's cost."""
    base = self.train_minutes.get(cell.task, 0.0) + sum(
        self.eval_minutes.get(job, 0.0) for job in cell.evals)
    return (base * self.architecture_cost.get(cell.architecture, 1.0)
            * self.width_cost.get(cell.filters_factor, cell.filters_factor ** 1.5))


def resolve_config(path: str) -> str:
  """`path` as given if it exists, else relative to the repository's configs/."""
  if os.path.isabs(path) or os.path.exists(path):
    return path
  return os.path.join(gin_config.CONFIG_DIR, path)


@gin.configurable("study")
def study(blocks: Sequence[Sequence[Cell]] = gin.REQUIRED,
          train_configs: Dict[str, str] = gin.REQUIRED,
          eval_config_dir: str = "study/eval",
          train_params: Sequence[str] = (),
          eval_params: Sequence[str] = (),
          train_minutes: Dict[str, float] = None,
          eval_minutes: Dict[str, float] = None,
          architecture_cost: Dict[str, float] = None,
          width_cost: Dict[int, float] = None) -> Study:
  """The gin-configured study; config paths may be relative to configs/."""
  cells = tuple(merge(blocks))
  missing = {c.task for c in cells} - set(train_configs)
  if missing:
    raise ValueError(f"study.train_configs has no config for {sorted(missing)}.")
  return Study(
      cells=cells,
      train_configs={t: resolve_config(p) for t, p in train_configs.items()},
      eval_config_dir=resolve_config(eval_config_dir),
      train_params=tuple(train_params), eval_params=tuple(eval_params),
      train_minutes=dict(train_minutes or {}),
      eval_minutes=dict(eval_minutes or {}),
      architecture_cost=dict(architecture_cost or {}),
      width_cost={int(k): v for k, v in (width_cost or {}).items()})
