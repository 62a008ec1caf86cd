"""The study's grid: cells, the architectures they name, and gin blocks.

A cell is one trained model and its evaluations. Blocks are gin-configured
products of tasks x architectures x widths x training budgets x seeds that
each ask for some evaluations; `grid` merges them into one ordered list of
cells, so a cell named by several blocks (e.g. the full grid and the seeds) is
trained once and gets the union of their evaluations.

Training budgets: a cell without `epochs` trains its task config's recipe as
written (budget "short", named TASK-ARCH-kK-sSEED; the first edition's cells,
run with its code and probe, are labelled "first edition" by
`results.normalise_cell`); a cell with `epochs` E trains the same recipe
stretched to E epochs (warm-up and decay epochs scaled by E / the config's
epochs) and is named TASK-ARCH-kK-eE-sSEED. Its budget label (e.g.
"converged", "pilot") says which comparison it belongs to.
"""
import ast
import dataclasses
import fnmatch
import functools
import os
import re
from typing import Dict, List, Optional, Sequence, Tuple, Union

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
# Tasks whose network sees patches (the spread of a patch task is estimated
# apart from that of the tasks on whole images).
PATCH_TASKS = ("relative_patch_location", "jigsaw")
# The budget label of cells without `epochs` (the first edition's recipes).
SHORT = "short"
# The label of the first edition's cell files (they have no budget): its
# code (before the release's backbones) and probe (before the fixed one).
FIRST_EDITION = "first edition"


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
    epochs: training epochs (the task's recipe stretched to them); None: the
      task config's own (the first edition's recipes: budget "short").
    budget: the budget label ("short" without `epochs`).
  """
  task: str
  architecture: str
  filters_factor: int
  seed: int
  evals: Tuple[str, ...]
  epochs: Optional[float] = None
  budget: str = SHORT

  @property
  def name(self) -> str:
    budget = "" if self.epochs is None else f"-e{self.epochs:g}"
    return (f"{self.task}-{self.architecture}-k{self.filters_factor}{budget}"
            f"-s{self.seed}")

  @property
  def key(self) -> Tuple[str, str, int, Optional[float], int]:
    return (self.task, self.architecture, self.filters_factor, self.epochs,
            self.seed)

  def train_bindings(self) -> List[str]:
    """Gin bindings that turn the task's config into this cell's."""
    arch = ARCHITECTURES[self.architecture]
    return [f'backbone.name = "{arch.backbone}"',
            f"backbone.last_relu = {arch.last_relu}",
            f"backbone.filters_factor = {self.filters_factor}",
            f"train.seed = {self.seed}"]


Epochs = Union[None, float, Sequence[float], Dict[str, Union[float, Sequence[float]]]]


def _task_epochs(epochs: Epochs, task: str) -> List[Optional[float]]:
  """The budgets (epochs) of `task` in a block's `epochs`; [None] for none."""
  if isinstance(epochs, dict):
    if task not in epochs:
      raise ValueError(f"block.epochs has no budget for task {task!r}; add "
                       "one (e.g. {..., " f"{task!r}: 4" "}).")
    epochs = epochs[task]
  if epochs is None:
    return [None]
  values = list(epochs) if isinstance(epochs, (list, tuple)) else [epochs]
  if not values or not all(isinstance(e, (int, float)) and e > 0 for e in values):
    raise ValueError(f"block.epochs for {task!r} must be positive numbers; "
                     f"got {epochs!r}.")
  return [float(e) for e in values]


@gin.configurable("block")
def block(tasks: Sequence[str] = TASKS,
          architectures: Sequence[str] = tuple(ARCHITECTURES),
          widths: Sequence[int] = (1,),
          seeds: Sequence[int] = (0,),
          evals: Sequence[str] = ("linear",),
          epochs: Epochs = None,
          budget: Optional[str] = None) -> List[Cell]:
  """The product tasks x architectures x widths x budgets x seeds, each with
  `evals`.

  Args:
    epochs: training budgets: None (each task config's own recipe), a number
      or list of numbers for every task, or {task: number or list}; the
      random_init task (no training) ignores it.
    budget: the cells' budget label; default "short" without `epochs`, else
      "converged".
  """
  for task in tasks:
    if task not in TASKS:
      raise ValueError(f"Unknown study task {task!r}; valid: {TASKS}.")
  for architecture in architectures:
    if architecture not in ARCHITECTURES:
      raise ValueError(f"Unknown study architecture {architecture!r}; valid: "
                       f"{tuple(ARCHITECTURES)}.")
  cells = []
  for t in tasks:
    budgets = [None] if t == "random_init" else _task_epochs(epochs, t)
    for e in budgets:
      label = budget or (SHORT if e is None else "converged")
      cells += [Cell(t, a, int(k), int(s), tuple(evals), e, label)
                for a in architectures for k in widths for s in seeds]
  return cells


def merge(blocks: Sequence[Sequence[Cell]]) -> List[Cell]:
  """Cells of all blocks, in first-appearance order, one per (task,
  architecture, k, epochs, seed), with the union of their evals and the
  budget label of the first block that names the cell."""
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
    cell_train_params: cell-name shell pattern -> extra training bindings of
      the cells it matches, applied after `train_params` (e.g. VGG19-BN's
      larger patches: the release's VGG needs inputs of 32x32 or more).
    train_minutes: task -> rough minutes to train a k=1 ResNet50 v2 cell with
      the task config's own epochs (scaled by a cell's epochs / those).
    eval_minutes: evaluation job -> rough minutes on a k=1 ResNet50 v2 cell;
      the key PRETEXT_CURVE_JOB: minutes of the pretext curve per epoch
      trained (at the `checkpoint_steps` cadence).
    architecture_cost: architecture label -> cost relative to ResNet50 v2.
    width_cost: k -> cost relative to k=1 (default k**1.5).
    checkpoint_steps: task -> training steps between checkpoints of cells
      with `epochs`; each checkpoint is a point of the held-out pretext
      curve (`tfrevisit.study.pretext_eval`), so half an epoch's steps gives
      two points per epoch. `study` requires it for every budgeted task.
  """
  cells: Tuple[Cell, ...]
  train_configs: Dict[str, str]
  eval_config_dir: str
  train_params: Tuple[str, ...] = ()
  eval_params: Tuple[str, ...] = ()
  cell_train_params: Dict[str, Tuple[str, ...]] = dataclasses.field(
      default_factory=dict)
  train_minutes: Dict[str, float] = dataclasses.field(default_factory=dict)
  eval_minutes: Dict[str, float] = dataclasses.field(default_factory=dict)
  architecture_cost: Dict[str, float] = dataclasses.field(default_factory=dict)
  width_cost: Dict[int, float] = dataclasses.field(default_factory=dict)
  checkpoint_steps: Dict[str, int] = dataclasses.field(default_factory=dict)

  def select(self, pattern: str) -> List[Cell]:
    """Cells whose name matches the shell pattern (`*` for all)."""
    return [c for c in self.cells if fnmatch.fnmatchcase(c.name, pattern)]

  def train_params_for(self, cell: Cell) -> List[str]:
    """`train_params`, then the `cell_train_params` whose pattern matches
    the cell's name, in config order."""
    return list(self.train_params) + [
        binding for pattern, bindings in self.cell_train_params.items()
        if fnmatch.fnmatchcase(cell.name, pattern) for binding in bindings]

  def eval_configs(self, name: str) -> List[str]:
    """The gin files of evaluation job `name`: common.gin, then NAME.gin."""
    return [os.path.join(self.eval_config_dir, "common.gin"),
            os.path.join(self.eval_config_dir, f"{name}.gin")]

  def recipe(self, task: str) -> "Recipe":
    """The schedule that `task`'s training config binds."""
    return read_recipe(self.train_configs[task])

  def has_pretext_curve(self, cell: Cell) -> bool:
    """Cells with a budget get the held-out pretext curve (random_init has
    no training to follow)."""
    return cell.epochs is not None and cell.task != "random_init"

  def estimated_minutes(self, cell: Cell) -> float:
    """Config estimate of a cell's minutes, training and evaluation."""
    return sum(self.estimated_stage_minutes(cell).values())

  def estimated_stage_minutes(self, cell: Cell) -> Dict[str, float]:
    """Config estimate of a cell's minutes per stage, {"train": training,
    scaled by the cell's epochs / its config's; "eval": its evaluation jobs +
    its pretext curve, per epoch}: on ResNet50 v2 at k=1, times the
    architecture's and the width's cost."""
    train = self.train_minutes.get(cell.task, 0.0)
    if cell.epochs is not None and train:
      train *= cell.epochs / self.recipe(cell.task).epochs
    evaluation = sum(self.eval_minutes.get(job, 0.0) for job in cell.evals)
    if self.has_pretext_curve(cell):
      evaluation += self.eval_minutes.get(PRETEXT_CURVE_JOB, 0.0) * cell.epochs
    cost = (self.architecture_cost.get(cell.architecture, 1.0)
            * self.width_cost.get(cell.filters_factor, cell.filters_factor ** 1.5))
    return {"train": train * cost, "eval": evaluation * cost}


# The stage that evaluates a budgeted cell's checkpoints on held-out data.
PRETEXT_CURVE_JOB = "pretext_curve"


@dataclasses.dataclass(frozen=True)
class Recipe:
  """The training schedule a task config binds (epochs of its train split)."""
  epochs: float
  warmup_epochs: Optional[float]
  decay_epochs: Optional[Tuple[float, ...]]

  def stretched(self, epochs: float) -> List[str]:
    """Gin bindings that train this recipe for `epochs`: the warm-up and
    decay epochs scaled by epochs / self.epochs (the same schedule shape)."""
    scale = epochs / self.epochs
    bindings = [f"train.epochs = {epochs:g}"]
    if self.warmup_epochs is not None:
      bindings.append(f"train.warmup_epochs = {self.warmup_epochs * scale:g}")
    if self.decay_epochs is not None:
      decays = ", ".join(f"{d * scale:g}" for d in self.decay_epochs)
      bindings.append(f"train.decay_epochs = [{decays}]")
    return bindings


@functools.lru_cache(maxsize=None)
def read_recipe(path: str) -> Recipe:
  """The `train.epochs`, `train.warmup_epochs` and `train.decay_epochs` that
  a training config file binds.

  Raises:
    ValueError: the file binds no `train.epochs`.
  """
  with open(path) as f:
    text = f.read()
  epochs = gin_value(text, "train.epochs")
  if not isinstance(epochs, (int, float)):
    raise ValueError(f"{path} binds no numeric train.epochs; a study cell "
                     "with a budget stretches that recipe.")
  decays = gin_value(text, "train.decay_epochs")
  return Recipe(float(epochs), gin_value(text, "train.warmup_epochs"),
                None if decays is None else tuple(decays))


def gin_value(config: str, name: str, default=None):
  """The value bound to `name` (e.g. "train.batch_size") in a gin config text."""
  match = re.search(rf"^{re.escape(name)}\s*=\s*([^#\n]+)", config, re.MULTILINE)
  if not match:
    return default
  try:
    return ast.literal_eval(match.group(1).strip())
  except (ValueError, SyntaxError):
    return match.group(1).strip()


def resolve_config(path: str) -> str:
  """`path` as given if it exists, else relative to the repository's configs/."""
  if os.path.isabs(path) or os.path.exists(path):
    return path
  return os.path.join(gin_config.CONFIG_DIR, path)


@functools.lru_cache(maxsize=None)
def _search_configs_dir() -> None:
  gin.add_config_file_search_path(gin_config.CONFIG_DIR)


def parse_config(files: Sequence[str], bindings: Sequence[str] = ()) -> None:
  """Parses study configs (paths as `resolve_config`; their `include`s may
  name files relative to configs/, e.g. "study/fashion_mnist_converged.gin").

  Raises:
    cli.UserError: see `gin_config.parse_gin`.
  """
  _search_configs_dir()
  gin_config.parse_gin([resolve_config(f) for f in files], bindings)


@gin.configurable("study")
def study(blocks: Sequence[Sequence[Cell]] = gin.REQUIRED,
          train_configs: Dict[str, str] = gin.REQUIRED,
          eval_config_dir: str = "study/eval",
          train_params: Sequence[str] = (),
          eval_params: Sequence[str] = (),
          cell_train_params: Dict[str, Sequence[str]] = None,
          train_minutes: Dict[str, float] = None,
          eval_minutes: Dict[str, float] = None,
          architecture_cost: Dict[str, float] = None,
          width_cost: Dict[int, float] = None,
          checkpoint_steps: Dict[str, int] = None) -> Study:
  """The gin-configured study; config paths may be relative to configs/."""
  cells = tuple(merge(blocks))
  missing = {c.task for c in cells} - set(train_configs)
  if missing:
    raise ValueError(f"study.train_configs has no config for {sorted(missing)}.")
  unpaced = {c.task for c in cells if c.epochs is not None
             and c.task != "random_init"} - set(checkpoint_steps or {})
  if unpaced:
    raise ValueError(
        f"study.checkpoint_steps has no entry for {sorted(unpaced)}: cells with "
        "a budget checkpoint every that many steps (one epoch's, e.g. "
        "57656 // batch size on Fashion-MNIST) for their pretext curve.")
  return Study(
      cells=cells,
      train_configs={t: resolve_config(p) for t, p in train_configs.items()},
      eval_config_dir=resolve_config(eval_config_dir),
      train_params=tuple(train_params), eval_params=tuple(eval_params),
      cell_train_params={p: tuple(b) for p, b in (cell_train_params or {}).items()},
      train_minutes=dict(train_minutes or {}),
      eval_minutes=dict(eval_minutes or {}),
      architecture_cost=dict(architecture_cost or {}),
      width_cost={int(k): v for k, v in (width_cost or {}).items()},
      checkpoint_steps={t: int(v) for t, v in (checkpoint_steps or {}).items()})
