"""Running one cell by the command lines, and the files it leaves.

Workdir of a cell (never committed):
  CELL/train/             `tfrevisit.train` workdir (checkpoints, tb/, export/)
  CELL/eval/pretext_curve/curve.json
                          cells with a budget: the held-out pretext accuracy
                          of each checkpoint (`tfrevisit.study.pretext_eval`,
                          which then deletes all checkpoints but the newest)
  CELL/eval/features/     the feature cache shared by the evaluation jobs
  CELL/eval/JOB/          one `tfrevisit.evaluate` workdir per job
  CELL/logs/STAGE.log     each stage's output, appended on every attempt
  CELL/state.json         finished stages, wall time and CPU time (user +
                          system, all threads) per stage, summed over
                          attempts (an attempt whose runner was killed
                          counts its wall time until its log's last write,
                          and its CPU time as last polled, at most
                          `CPU_POLL_S` before the kill), and each stage's
                          code version and the machines its attempts ran on
  CELL/logs/STAGE.cpu     while a stage runs: its CPU seconds so far
The result, CELL/cell.json, is also copied to the committed results
directory (docs/study/cells/CELL.json); the report reads only those files.
"""
import contextlib
import functools
import glob
import json
import logging
import os
import resource
import shutil
import subprocess
import sys
import threading
import time
from typing import Any, Dict, List, Optional

from tfrevisit.study import grid

log = logging.getLogger("tfrevisit.study")

RESULT_FILE = "cell.json"
STATE_FILE = "state.json"
TRAIN_STAGE = "train"
# How often a running stage's CPU time is written to its .cpu file, seconds.
CPU_POLL_S = 60.0
# The repository root, so that subprocesses import this same tfrevisit.
_PACKAGE_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))))


def _write_json(path: str, value: Any) -> None:
  """Writes atomically: a temporary sibling, renamed over `path`."""
  os.makedirs(os.path.dirname(path), exist_ok=True)
  temporary = f"{path}.tmp"
  with open(temporary, "w") as f:
    json.dump(value, f, indent=1)
  os.replace(temporary, path)


def read_json(path: str, default=None):
  if not os.path.exists(path):
    return default
  with open(path) as f:
    return json.load(f)


def result_path(results_dir: str, cell: grid.Cell) -> str:
  return os.path.join(results_dir, f"{cell.name}.json")


def state_of(cell: grid.Cell, workdir: str, results_dir: str) -> str:
  """`done` (committed result exists), `partial` (workdir exists) or `todo`."""
  if os.path.exists(result_path(results_dir, cell)):
    return "done"
  if os.path.exists(os.path.join(workdir, cell.name)):
    return "partial"
  return "todo"


@functools.lru_cache(maxsize=None)
def code_version() -> Optional[str]:
  """The commit of the tfrevisit checkout that runs the stages, with
  "-dirty" if its package or configs differ from it; None outside git."""
  def git(*args):
    return subprocess.run(["git", "-C", _PACKAGE_ROOT, *args], check=True,
                          capture_output=True, text=True).stdout.strip()
  try:
    commit = git("rev-parse", "--short=7", "HEAD")
    dirty = git("status", "--porcelain", "--", "tfrevisit", "configs")
  except (OSError, subprocess.CalledProcessError):
    return None
  return commit + ("-dirty" if dirty else "")


# CPU flags that change how fast TensorFlow's CPU kernels run.
_SPEED_FLAGS = ("avx2", "avx512f", "avx512_bf16", "amx_bf16")


@functools.lru_cache(maxsize=None)
def machine(cpuinfo: str = "/proc/cpuinfo") -> Optional[str]:
  """This machine's CPU, e.g. "Intel(R) Xeon(R) Processor, 2 cpus, avx2
  avx512f amx_bf16" (model, logical CPUs, the `_SPEED_FLAGS` it has); None
  without `cpuinfo`."""
  try:
    with open(cpuinfo) as f:
      info = f.read()
  except OSError:
    return None
  fields = dict(line.split(":", 1) for line in info.splitlines()
                if ":" in line)
  fields = {k.strip(): v.strip() for k, v in fields.items()}
  flags = set(fields.get("flags", "").split())
  speed_flags = " ".join(f for f in _SPEED_FLAGS if f in flags)
  return ", ".join(filter(None, [fields.get("model name", "unknown CPU"),
                                 f"{os.cpu_count()} cpus", speed_flags]))


def _children_cpu_s() -> float:
  usage = resource.getrusage(resource.RUSAGE_CHILDREN)
  return usage.ru_utime + usage.ru_stime


def _process_cpu_s(pid: str) -> float:
  """User + system CPU seconds of process `pid`, all its threads and its
  waited-for children (0 for a process that is gone)."""
  try:
    with open(f"/proc/{pid}/stat") as f:
      fields = f.read().rsplit(")", 1)[1].split()
  except OSError:
    return 0.0
  # After the command name: utime, stime, cutime, cstime are fields 12-15.
  return sum(int(v) for v in fields[11:15]) / os.sysconf("SC_CLK_TCK")


def _running_children_cpu_s() -> Optional[float]:
  """CPU seconds of this process's running children (None without /proc)."""
  paths = glob.glob("/proc/self/task/*/children")
  if not paths:
    return None
  pids = [pid for path in paths for pid in open(path).read().split()]
  return sum(_process_cpu_s(pid) for pid in pids)


@contextlib.contextmanager
def _polling_children_cpu(cpu_path: str):
  """Writes the CPU seconds of this process's running children to `cpu_path`
  every `CPU_POLL_S` while the block runs (one stage at a time runs), so that
  a killed runner loses at most one interval of its stage's CPU time."""
  stop = threading.Event()

  def poll():
    while not stop.wait(CPU_POLL_S):
      cpu = _running_children_cpu_s()
      if cpu:  # None: no /proc; 0: between commands, keep the last value.
        with open(cpu_path, "w") as f:
          f.write(f"{cpu}\n")

  thread = threading.Thread(target=poll, daemon=True)
  thread.start()
  try:
    yield
  finally:
    stop.set()
    thread.join()
    if os.path.exists(cpu_path):
      os.remove(cpu_path)


def _count_killed_attempt(stage: Dict[str, Any], log_path: str) -> None:
  """Adds the times of an attempt whose runner was killed (it left "started"
  behind): wall time from its start to its log's last write, CPU time as last
  polled (the stage's .cpu file). An attempt killed before its first poll
  counts in "unrecorded_cpu_attempts"."""
  started = stage.pop("started", None)
  if started is None:
    return
  if os.path.exists(log_path):
    stage["wall_time_s"] += max(0.0, os.path.getmtime(log_path) - started)
  cpu_path = log_path[:-len(".log")] + ".cpu"
  if os.path.exists(cpu_path):
    with open(cpu_path) as f:
      stage["cpu_time_s"] += float(f.read())
    os.remove(cpu_path)
  else:
    stage["unrecorded_cpu_attempts"] = stage.get("unrecorded_cpu_attempts", 0) + 1


def _run_stage(name: str, command: List[str], cell_dir: str,
               state: Dict[str, Any]) -> None:
  """Runs `command` unless `name` is finished; records its wall and CPU time.

  Raises:
    subprocess.CalledProcessError: the command failed (its log says why).
  """
  stages = state.setdefault("stages", {})
  stage = stages.setdefault(name, {"done": False, "wall_time_s": 0.0,
                                  "cpu_time_s": 0.0})
  if stage["done"]:
    return
  log_path = os.path.join(cell_dir, "logs", f"{name.replace('/', '_')}.log")
  os.makedirs(os.path.dirname(log_path), exist_ok=True)
  env = dict(os.environ)
  env["PYTHONPATH"] = os.pathsep.join(
      p for p in (_PACKAGE_ROOT, env.get("PYTHONPATH")) if p)
  log.info("%s: %s (log: %s)", os.path.basename(cell_dir), name, log_path)
  _count_killed_attempt(stage, log_path)
  stage["code"] = code_version()
  this_machine = machine()
  if this_machine and this_machine not in stage.setdefault("machines", []):
    stage["machines"].append(this_machine)
  start, start_cpu = time.time(), _children_cpu_s()
  stage["started"] = start
  _write_json(os.path.join(cell_dir, STATE_FILE), state)
  try:
    with open(log_path, "a") as out, _polling_children_cpu(
        log_path[:-len(".log")] + ".cpu"):
      out.write(f"\n$ {' '.join(command)}\n")
      out.flush()
      subprocess.run(command, stdout=out, stderr=subprocess.STDOUT, env=env,
                     check=True)
    stage["done"] = True
  finally:
    stage["wall_time_s"] += time.time() - start
    stage["cpu_time_s"] += _children_cpu_s() - start_cpu
    del stage["started"]
    _write_json(os.path.join(cell_dir, STATE_FILE), state)


def budget_bindings(study: grid.Study, cell: grid.Cell) -> List[str]:
  """The gin bindings of a cell's budget: its task's recipe stretched to the
  cell's epochs, and checkpoints every `study.checkpoint_steps[task]` steps,
  all kept until the pretext curve has read them; [] without a budget."""
  if cell.epochs is None:
    return []
  bindings = study.recipe(cell.task).stretched(cell.epochs)
  if cell.task in study.checkpoint_steps:
    bindings += [
        f"train.checkpoint_every_steps = {study.checkpoint_steps[cell.task]}",
        f"train.keep_checkpoints = {KEEP_ALL_CHECKPOINTS}"]
  return bindings


# More checkpoints than any budget the study can afford makes.
KEEP_ALL_CHECKPOINTS = 1000


def train_command(study: grid.Study, cell: grid.Cell, train_dir: str) -> List[str]:
  command = [sys.executable, "-m", "tfrevisit.train",
             "--gin", study.train_configs[cell.task], "--workdir", train_dir]
  for binding in (cell.train_bindings() + budget_bindings(study, cell)
                  + study.train_params_for(cell)):
    command += ["--gin_param", binding]
  return command


def pretext_curve_command(train_dir: str, curve_dir: str) -> List[str]:
  return [sys.executable, "-m", "tfrevisit.study.pretext_eval",
          "--workdir", train_dir,
          "--output", os.path.join(curve_dir, CURVE_FILE), "--prune"]


CURVE_FILE = "curve.json"


def eval_command(study: grid.Study, job: str, export: str, eval_dir: str
                 ) -> List[str]:
  command = [sys.executable, "-m", "tfrevisit.evaluate", "--hub_module", export,
             "--workdir", eval_dir]
  for path in study.eval_configs(job):
    command += ["--gin", path]
  for binding in study.eval_params:
    command += ["--gin_param", binding]
  return command


def _share_feature_cache(cell_dir: str, eval_dir: str) -> None:
  """Points eval_dir/features at the cell's one feature cache."""
  shared = os.path.join(cell_dir, "eval", "features")
  os.makedirs(shared, exist_ok=True)
  os.makedirs(eval_dir, exist_ok=True)
  link = os.path.join(eval_dir, "features")
  if not os.path.lexists(link):
    os.symlink(os.path.relpath(shared, eval_dir), link)


def forget_job(cell: grid.Cell, workdir: str, job: str) -> None:
  """Marks evaluation job `job` of a started cell unfinished and deletes its
  outputs, so that `run_cell` runs it again (after its recipe changed);
  training and the other jobs stay done.

  Raises:
    ValueError: the cell has no workdir under `workdir` (redoing an
      evaluation needs the cell's export).
  """
  cell_dir = os.path.join(workdir, cell.name)
  if not os.path.isdir(cell_dir):
    raise ValueError(
        f"{cell.name} has no workdir under {workdir}; redoing eval/{job} "
        "needs its export. Run on the machine that holds it, or leave the "
        "cell out with --only.")
  state_path = os.path.join(cell_dir, STATE_FILE)
  state = read_json(state_path, {})
  if state.get("stages", {}).pop(f"eval/{job}", None) is not None:
    _write_json(state_path, state)
  shutil.rmtree(os.path.join(cell_dir, "eval", job), ignore_errors=True)


def run_cell(study: grid.Study, cell: grid.Cell, workdir: str,
             results_dir: str, keep_features: bool = False) -> Dict[str, Any]:
  """Trains, evaluates and collects one cell; resumes what is unfinished.

  The feature cache (GBs per cell) is deleted once the cell is finished
  unless `keep_features`.

  Returns:
    The cell's result (see `collect`), also written to CELL/cell.json and
    results_dir/CELL.json.
  """
  cell_dir = os.path.join(workdir, cell.name)
  state = read_json(os.path.join(cell_dir, STATE_FILE), {})
  train_dir = os.path.join(cell_dir, "train")
  _run_stage(TRAIN_STAGE, train_command(study, cell, train_dir), cell_dir, state)
  if study.has_pretext_curve(cell):
    curve_dir = os.path.join(cell_dir, "eval", grid.PRETEXT_CURVE_JOB)
    os.makedirs(curve_dir, exist_ok=True)
    _run_stage(f"eval/{grid.PRETEXT_CURVE_JOB}",
               pretext_curve_command(train_dir, curve_dir), cell_dir, state)
  export = os.path.join(train_dir, "export", "latest")
  for job in cell.evals:
    eval_dir = os.path.join(cell_dir, "eval", job)
    _share_feature_cache(cell_dir, eval_dir)
    _run_stage(f"eval/{job}", eval_command(study, job, export, eval_dir),
               cell_dir, state)
  result = collect(cell, cell_dir, state)
  _write_json(os.path.join(cell_dir, RESULT_FILE), result)
  os.makedirs(results_dir, exist_ok=True)
  shutil.copyfile(os.path.join(cell_dir, RESULT_FILE),
                  result_path(results_dir, cell))
  if not keep_features:
    shutil.rmtree(os.path.join(cell_dir, "eval", "features"), ignore_errors=True)
  return result


def last_scalar(tb_dir: str, tag: str) -> Optional[float]:
  """The last logged value of scalar `tag` in TensorBoard event files."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  last = None
  for path in sorted(glob.glob(os.path.join(tb_dir, "events.out.tfevents.*"))):
    for event in tf.compat.v1.train.summary_iterator(path):
      for value in event.summary.value:
        if value.tag == tag:
          number = (float(tf.make_ndarray(value.tensor))
                    if value.HasField("tensor") else value.simple_value)
          last = (event.step, number) if last is None or event.step >= last[0] else last
  return None if last is None else last[1]


def _stage_total(stages: Dict[str, Dict], key: str, prefix: str) -> float:
  """Sum of `key` over the stages whose name starts with `prefix`."""
  return sum(stage.get(key, 0.0) for name, stage in stages.items()
             if name.startswith(prefix))


def _floats(values) -> Optional[List[float]]:
  return None if values is None else [float(v) for v in values]


def collect(cell: grid.Cell, cell_dir: str, state: Dict[str, Any]
            ) -> Dict[str, Any]:
  """A cell's result: its settings, training facts and evaluation rows.

  Returns:
    {"cell", "task", "architecture", "filters_factor", "seed", "budget"
    (label), "backbone", "last_relu", "global_step", "batch_size",
    "train_epochs" (the epochs trained), "decay_epochs" (the learning
    rate's decays, in epochs), "num_crops", "patch_size" (patch tasks:
    pixels; else None), "pretext_accuracy"
    (training accuracy of the last logged interval, a fraction),
    "pretext_curve" (cells with a budget: [{"step", "epoch", "accuracy"}]
    on held-out images, see `tfrevisit.study.pretext_eval`),
    "train_wall_time_s", "eval_wall_time_s", "train_cpu_time_s",
    "eval_cpu_time_s" (seconds, summed over attempts; evaluation includes
    the pretext curve), "unrecorded_cpu_attempts" (killed attempts whose CPU
    time is missing from those sums), "code_versions" ({stage: commit} where
    recorded), "machines" (the CPUs its stages ran on, where recorded),
    "rows": the evaluation rows, each with an "eval" (job name) column}.
  """
  train_dir = os.path.join(cell_dir, "train")
  metadata = read_json(os.path.join(train_dir, "export", "latest", "assets",
                                     "tfrevisit.json"), {})
  config = metadata.get("gin_config", "")
  arch = grid.ARCHITECTURES[cell.architecture]
  rows = []
  for job in cell.evals:
    job_rows = read_json(os.path.join(cell_dir, "eval", job, "results.json"), [])
    rows += [{"eval": job, **row} for row in job_rows]
  stages = state.get("stages", {})
  total = functools.partial(_stage_total, stages)
  curve = read_json(os.path.join(cell_dir, "eval", grid.PRETEXT_CURVE_JOB,
                                 CURVE_FILE))
  return {
      "cell": cell.name, "task": cell.task, "architecture": cell.architecture,
      "filters_factor": cell.filters_factor, "seed": cell.seed,
      "budget": cell.budget,
      "backbone": arch.backbone, "last_relu": arch.last_relu,
      "global_step": metadata.get("global_step"),
      "batch_size": grid.gin_value(config, "train.batch_size"),
      "train_epochs": grid.gin_value(config, "train.epochs"),
      "decay_epochs": _floats(grid.gin_value(config, "train.decay_epochs")),
      "num_crops": grid.gin_value(config, "exemplar.num_crops"),
      "patch_size": (grid.gin_value(config, f"{cell.task}.patch_size")
                     if cell.task in grid.PATCH_TASKS else None),
      "pretext_accuracy": last_scalar(os.path.join(train_dir, "tb"), "accuracy"),
      **({"pretext_curve": curve} if curve is not None else {}),
      "train_wall_time_s": total("wall_time_s", TRAIN_STAGE),
      "eval_wall_time_s": total("wall_time_s", "eval/"),
      "train_cpu_time_s": total("cpu_time_s", TRAIN_STAGE),
      "eval_cpu_time_s": total("cpu_time_s", "eval/"),
      "unrecorded_cpu_attempts": int(total("unrecorded_cpu_attempts", "")),
      "code_versions": {name: stage["code"] for name, stage in stages.items()
                        if stage.get("code")},
      "machines": sorted({m for stage in stages.values()
                          for m in stage.get("machines", [])}),
      "rows": rows,
  }
