"""The study runner and report: a real one-cell run by the command lines on
random data (with its held-out pretext curve), resume and states with a
stubbed command runner, a mock grid with two training budgets through runner
and report, and the convergence rule, the statistics and each finding's
verdict on hand-made results."""
import inspect
import json
import logging
import os
import re
import subprocess
import sys
import time

import gin
import matplotlib.axes
import numpy as np
import pytest
import tensorflow as tf

from tfrevisit import cli
from tfrevisit import gin_config
from tfrevisit import restore
from tfrevisit import train
from tfrevisit.data import sources
from tfrevisit.pretext import base
from tfrevisit.study import __main__ as runner
from tfrevisit.study import cells as cells_lib
from tfrevisit.study import curves
from tfrevisit.study import findings
from tfrevisit.study import grid
from tfrevisit.study import plots
from tfrevisit.study import pretext_eval
from tfrevisit.study import report
from tfrevisit.study import stats
from tfrevisit.study import tables
from tfrevisit.study.results import (Results, budget_views, normalise_cell,
                                     model_budgets, resolve_rungs)

TINY_TRAIN = ["train.max_steps = 2", "train.batch_size = 8",
              "train.log_every_steps = 1",
              'source.name = "random"', "source.num_examples = 16",
              "source.image_shape = (32, 32, 3)", "rotation.image_size = 16"]
TINY_EVAL = """
source.name = "random"
source.num_examples = 24
source.image_shape = (32, 32, 3)
evaluate.end_points = ["block4", "pre_logits"]
evaluate.batch_size = 8
select_l2_and_fit.l2_grid = [1e-2]
select_l2_and_fit.max_iterations = 5
"""


def _tiny_study(tmp_path, architectures=("resnet50_v2", "revnet50"),
                epochs=None):
  """A 2-cell rotation study on random 32x32 images (with `epochs`: at that
  budget, a checkpoint every step); returns its gin path."""
  eval_dir = tmp_path / "eval_configs"
  eval_dir.mkdir(exist_ok=True)
  (eval_dir / "common.gin").write_text(TINY_EVAL)
  (eval_dir / "linear.gin").write_text('evaluate.probes = ["linear"]\n')
  config = tmp_path / "study.gin"
  config.write_text(
      f'study.train_configs = {{"rotation": "study/train/rotation.gin"}}\n'
      f'study.eval_config_dir = "{eval_dir}"\n'
      f"study.train_params = {TINY_TRAIN!r}\n"
      f'study.train_minutes = {{"rotation": 7}}\n'
      f'study.eval_minutes = {{"linear": 3}}\n'
      f'study.architecture_cost = {{"revnet50": 2}}\n'
      'study.checkpoint_steps = {"rotation": 1}\n'
      "study.blocks = [@block()]\n"
      'block.tasks = ["rotation"]\n'
      f"block.architectures = {list(architectures)!r}\n"
      + ("" if epochs is None else f"block.epochs = {epochs!r}\n"))
  return str(config)


def _args(config, tmp_path, *extra):
  return ["--gin", config, "--workdir", str(tmp_path / "work"),
          "--results_dir", str(tmp_path / "results"), *extra]


def test_runner_trains_and_evaluates_one_cell_by_the_command_lines(tmp_path, capsys):
  # A budgeted cell: 1 epoch of 2 steps (16 images, batch 8), a checkpoint
  # per step, each measured on held-out images by the pretext curve stage.
  config = _tiny_study(tmp_path, epochs=1)
  assert runner.main(_args(config, tmp_path, "--only", "*resnet50_v2*")) == 0
  name = "rotation-resnet50_v2-k1-e1-s0"
  result = json.load(open(tmp_path / "results" / f"{name}.json"))
  assert result["global_step"] == 2 and 0 <= result["pretext_accuracy"] <= 1
  assert result["batch_size"] == 8 and result["train_wall_time_s"] > 0
  assert (result["budget"], result["train_epochs"]) == ("converged", 1)
  # The rotation recipe's decays at 60% and 85% of its epoch.
  assert result["decay_epochs"] == pytest.approx([0.6, 0.85])
  assert {(r["eval"], r["end_point"], r["probe"]) for r in result["rows"]} == {
      ("linear", "block4", "linear"), ("linear", "pre_logits", "linear")}
  assert [(p["step"], p["epoch"], p["split"]) for p in result["pretext_curve"]] == [
      (1, 0.5, "val"), (2, 1.0, "val")]
  train_dir = tmp_path / "work" / name / "train"
  # Measured, the older checkpoint is gone; the last one's accuracy is that
  # of its network's argmax over the four rotations of the held-out images.
  prefixes = pretext_eval.checkpoints(str(train_dir))
  assert [pretext_eval.checkpoint_step(p) for p in prefixes] == [2]
  gin.clear_config()
  task, _ = restore.restore_task(str(train_dir), prefixes[0])
  source = sources.RandomSource(num_examples=16, image_shape=(32, 32, 3))
  correct = []
  for batch in pretext_eval.held_out_batches(task, source, "val", 8, 2048, 0):
    logits = task.encoder(base.flatten_views(batch["image"]),
                          training=False)["logits"].numpy()
    correct.append(logits.argmax(-1) == batch["label"].numpy().reshape(-1))
  assert result["pretext_curve"][-1]["accuracy"] == pytest.approx(
      np.mean(np.concatenate(correct)), abs=1e-6)
  assert not os.path.exists(tmp_path / "work" / name / "eval" / "features")
  gin.clear_config()
  runner.main(_args(config, tmp_path, "--list"))
  listed = capsys.readouterr().out
  assert f"{name} " in listed and "done" in listed
  assert "rotation-revnet50-k1-e1-s0" in listed and "todo" in listed


class _FakeCommands:
  """Stands in for subprocess.run: writes what train/evaluate would, and
  raises `interrupt` at the first command containing `fail_at`."""

  def __init__(self, fail_at=None, interrupt=KeyboardInterrupt):
    self.calls, self.fail_at, self.interrupt = [], fail_at, interrupt
    self.real_run = subprocess.run

  def __call__(self, command, **kwargs):
    if "--workdir" not in command:  # git, for the code version
      return self.real_run(command, **kwargs)
    workdir = command[command.index("--workdir") + 1]
    self.calls.append((command[2], workdir))
    if self.fail_at and self.fail_at in workdir:
      self.fail_at = None
      raise self.interrupt
    if command[2] == "tfrevisit.train":
      self._train(workdir, command)
    elif command[2] == "tfrevisit.study.pretext_eval":
      with open(command[command.index("--output") + 1], "w") as f:
        json.dump([{"step": 4, "epoch": 1.0, "accuracy": 0.5},
                   {"step": 8, "epoch": 2.0, "accuracy": 0.54}], f)
    else:
      with open(os.path.join(workdir, "results.json"), "w") as f:
        json.dump([{"end_point": "pre_logits", "probe": "linear",
                    "label_fraction": 1.0, "top1": 0.5, "val_top1": 0.5}], f)

  @staticmethod
  def _train(workdir, command):
    """The export metadata and TensorBoard log a run would leave; its gin
    config holds the --gin_param bindings (epochs of a budget)."""
    bindings = [command[i + 1] for i, arg in enumerate(command)
                if arg == "--gin_param"]
    assets = os.path.join(workdir, "export", "latest", "assets")
    os.makedirs(assets)
    bound = {b.split(" = ")[0] for b in bindings}
    defaults = [b for b in ("train.batch_size = 8", "train.epochs = 1")
                if b.split(" = ")[0] not in bound]
    with open(os.path.join(assets, "tfrevisit.json"), "w") as f:
      json.dump({"global_step": 7,
                 "gin_config": "\n".join(defaults + bindings)}, f)
    writer = tf.summary.create_file_writer(os.path.join(workdir, "tb"))
    with writer.as_default():
      for step, value in ((1, 0.3), (7, 0.75)):
        tf.summary.scalar("accuracy", value, step=step)
    writer.close()


def test_interrupted_cell_resumes_without_retraining(tmp_path, monkeypatch, capsys):
  config = _tiny_study(tmp_path)
  fake = _FakeCommands(fail_at="resnet50_v2-k1-s0/eval")
  monkeypatch.setattr(cells_lib.subprocess, "run", fake)
  with pytest.raises(KeyboardInterrupt):
    runner.main(_args(config, tmp_path))
  gin.clear_config()
  runner.main(_args(config, tmp_path, "--list"))
  states = {line.split()[0]: line.split()[1]
            for line in capsys.readouterr().out.splitlines()[1:3]}
  assert states == {"rotation-resnet50_v2-k1-s0": "partial",
                    "rotation-revnet50-k1-s0": "todo"}

  fake.calls.clear()
  gin.clear_config()
  assert runner.main(_args(config, tmp_path)) == 0
  stages = [(module, os.path.relpath(workdir, tmp_path / "work"))
            for module, workdir in fake.calls]
  assert stages == [
      ("tfrevisit.evaluate", "rotation-resnet50_v2-k1-s0/eval/linear"),
      ("tfrevisit.train", "rotation-revnet50-k1-s0/train"),
      ("tfrevisit.evaluate", "rotation-revnet50-k1-s0/eval/linear")]
  result = json.load(open(tmp_path / "results" / "rotation-resnet50_v2-k1-s0.json"))
  assert result["pretext_accuracy"] == pytest.approx(0.75)
  assert result["global_step"] == 7 and result["rows"][0]["eval"] == "linear"

  fake.calls.clear()
  gin.clear_config()
  runner.main(_args(config, tmp_path))
  assert not fake.calls  # Both cells are done: nothing reruns.


def test_redo_reruns_one_job_of_finished_cells_only(tmp_path, monkeypatch):
  config = _tiny_study(tmp_path)
  (tmp_path / "eval_configs" / "mlp.gin").write_text('evaluate.probes = ["mlp"]\n')
  with open(config, "a") as f:
    f.write('block.evals = ["linear", "mlp"]\nstudy.eval_minutes = {}\n')
  fake = _FakeCommands()
  monkeypatch.setattr(cells_lib.subprocess, "run", fake)
  assert runner.main(_args(config, tmp_path)) == 0
  stale = tmp_path / "work" / "rotation-revnet50-k1-s0" / "eval" / "mlp" / "stale"
  stale.write_text("from the old recipe")

  fake.calls.clear()
  gin.clear_config()
  assert runner.main(_args(config, tmp_path, "--redo", "mlp")) == 0
  assert [(module, os.path.relpath(workdir, tmp_path / "work"))
          for module, workdir in fake.calls] == [
      ("tfrevisit.evaluate", "rotation-resnet50_v2-k1-s0/eval/mlp"),
      ("tfrevisit.evaluate", "rotation-revnet50-k1-s0/eval/mlp")]
  assert not stale.exists()
  result = json.load(open(tmp_path / "results" / "rotation-revnet50-k1-s0.json"))
  assert [row["eval"] for row in result["rows"]] == ["linear", "mlp"]
  if cells_lib.code_version():  # a git checkout
    assert set(result["code_versions"]) == {"train", "eval/linear", "eval/mlp"}
  assert result["machines"] == ([cells_lib.machine()] if cells_lib.machine()
                                else [])


def test_the_machine_names_the_cpu_and_its_speed_flags(tmp_path):
  cpuinfo = tmp_path / "cpuinfo"
  processor = ("processor\t: {}\nmodel name\t: AMD EPYC 7B13\n"
               "flags\t\t: fpu sse avx2 avx512f avx512_bf16 vaes\n\n")
  cpuinfo.write_text(processor.format(0) + processor.format(1))
  assert cells_lib.machine(str(cpuinfo)) == (
      f"AMD EPYC 7B13, {os.cpu_count()} cpus, avx2 avx512f avx512_bf16")
  assert cells_lib.machine(str(tmp_path / "missing")) is None


def test_redo_needs_the_cell_workdir_and_a_known_job(tmp_path, monkeypatch,
                                                     capsys):
  config = _tiny_study(tmp_path)
  monkeypatch.setattr(cells_lib.subprocess, "run", _FakeCommands())
  assert runner.main(_args(config, tmp_path)) == 0
  for extra, error in ((["--redo", "mlp"], "no selected cell has"),
                       (["--redo", "linear", "--workdir", str(tmp_path / "new")],
                        "has no workdir under")):
    gin.clear_config()
    with pytest.raises(SystemExit, match="^2$"):
      runner.main(_args(config, tmp_path, *extra))
    assert error in capsys.readouterr().err


def test_a_killed_attempt_counts_its_wall_time_until_its_last_log_write(
    tmp_path, monkeypatch):
  config = _tiny_study(tmp_path, architectures=("vgg19",))
  monkeypatch.setattr(cells_lib.subprocess, "run", _FakeCommands())
  cell_dir = tmp_path / "work" / "rotation-vgg19-k1-s0"
  cell_dir.mkdir(parents=True)
  # What a runner killed 100 s into training leaves: "started", a log.
  (cell_dir / "logs").mkdir()
  log = cell_dir / "logs" / "train.log"
  log.write_text("step 1\n")
  started = 1_000_000.0
  os.utime(log, (started + 100, started + 100))
  (cell_dir / "state.json").write_text(json.dumps({"stages": {"train": {
      "done": False, "wall_time_s": 5.0, "cpu_time_s": 4.0,
      "started": started}}}))
  assert runner.main(_args(config, tmp_path)) == 0
  state = json.load(open(cell_dir / "state.json"))["stages"]["train"]
  assert state["done"] and "started" not in state
  # 5 s before, 100 s killed, and the (fake, instant) rerun's few ms.
  assert 105.0 <= state["wall_time_s"] < 106.0 and state["cpu_time_s"] >= 4.0


def test_failed_cell_does_not_stop_the_grid(tmp_path, monkeypatch):
  fake = _FakeCommands(fail_at="resnet50_v2-k1-s0/train",
                       interrupt=subprocess.CalledProcessError(1, "train"))
  monkeypatch.setattr(cells_lib.subprocess, "run", fake)
  assert runner.main(_args(_tiny_study(tmp_path), tmp_path)) == 1
  assert os.listdir(tmp_path / "results") == ["rotation-revnet50-k1-s0.json"]


def test_list_estimates_scale_with_measured_time(tmp_path, monkeypatch, capsys):
  config = _tiny_study(tmp_path)
  gin_config.parse_gin([config], [])
  study = grid.study()
  assert [study.estimated_minutes(c) for c in study.cells] == [10, 20]
  os.makedirs(tmp_path / "results")
  done = study.cells[0]
  with open(cells_lib.result_path(str(tmp_path / "results"), done), "w") as f:
    json.dump({"train_wall_time_s": 900, "eval_wall_time_s": 300,
               "train_cpu_time_s": 1500, "eval_cpu_time_s": 300}, f)
  text = runner.listing(study, study.cells, str(tmp_path / "work"),
                        str(tmp_path / "results"))
  assert study.estimated_stage_minutes(study.cells[1]) == {"train": 14, "eval": 6}
  # Measured 25 CPU minutes of training against an estimate of 7, 5 of
  # evaluation against 3, 20 wall minutes against 10: the remaining 14 and 6
  # become 50 and 10 CPU minutes, 40 wall minutes.
  assert ("done: 0.3 h wall, 0.5 CPU h (training 0.4, evaluation 0.1); "
          "remaining") in text
  assert (f"remaining ~1.0 CPU h (training ~{50 / 60:.1f}, evaluation "
          f"~{10 / 60:.1f}), ~0.7 h wall") in text
  assert text.splitlines()[1].split()[:3] == [done.name, "done", "20"]
  assert text.splitlines()[2].split()[:3] == [study.cells[1].name, "todo", "~20"]


def test_blocks_merge_into_cells_with_the_union_of_evals():
  cells = grid.merge([grid.block(["rotation"], ["vgg19"], evals=["linear"]),
                      grid.block(["rotation"], ["vgg19", "revnet50_minus"],
                                 evals=["mlp"])])
  assert [(c.name, c.evals) for c in cells] == [
      ("rotation-vgg19-k1-s0", ("linear", "mlp")),
      ("rotation-revnet50_minus-k1-s0", ("mlp",))]
  assert 'backbone.last_relu = False' in cells[1].train_bindings()
  with pytest.raises(ValueError, match="architecture"):
    grid.block(["rotation"], ["resnet101"])


def test_the_study_config_parses_into_the_issue_grid():
  gin_config.parse_gin([os.path.join(gin_config.CONFIG_DIR, "study",
                                     "fashion_mnist.gin")], [])
  study = grid.study()
  names = {c.name for c in study.cells}
  assert len(names) == len(study.cells)
  assert {c.task for c in study.cells} == set(grid.TASKS)
  assert {c.architecture for c in study.cells} == set(grid.ARCHITECTURES)
  assert {c.filters_factor for c in study.cells} == {1, 2, 4}
  assert len({c.seed for c in study.cells}) >= 3
  for cell in study.cells:
    for job in cell.evals:
      assert all(os.path.exists(p) for p in study.eval_configs(job))
  assert all(os.path.exists(p) for p in study.train_configs.values())


def test_every_study_train_config_binds_what_train_requires():
  required = [name for name, p in inspect.signature(train.train).parameters.items()
              if p.default is gin.REQUIRED]
  assert required  # task, batch_size, epochs
  gin_config.parse_gin([os.path.join(gin_config.CONFIG_DIR, "study",
                                     "fashion_mnist.gin")], [])
  configs = grid.study().train_configs
  for config in configs.values():
    gin.clear_config()
    gin_config.parse_gin([config], [])
    for name in required:
      assert gin.query_parameter(f"train.{name}") is not None, (config, name)




def test_blocks_name_and_stretch_training_budgets(tmp_path):
  cells = grid.merge([
      grid.block(["rotation", "jigsaw"], ["vgg19"],
                 epochs={"rotation": 4, "jigsaw": [2, 8]}, evals=["linear"]),
      grid.block(["rotation", "random_init"], ["vgg19"], epochs=[4],
                 budget="pilot", evals=["mlp"]),
      grid.block(["rotation"], ["vgg19"])])
  assert [(c.name, c.budget, c.evals) for c in cells] == [
      ("rotation-vgg19-k1-e4-s0", "converged", ("linear", "mlp")),
      ("jigsaw-vgg19-k1-e2-s0", "converged", ("linear",)),
      ("jigsaw-vgg19-k1-e8-s0", "converged", ("linear",)),
      ("random_init-vgg19-k1-s0", "pilot", ("mlp",)),  # no training: no budget
      ("rotation-vgg19-k1-s0", "short", ("linear",))]
  with pytest.raises(ValueError, match="no budget for task 'jigsaw'"):
    grid.block(["jigsaw"], ["vgg19"], epochs={"rotation": 4})
  with pytest.raises(ValueError, match="positive"):
    grid.block(["jigsaw"], ["vgg19"], epochs=[0])
  # rotation.gin: 1 epoch, warm-up 0.05, decays at 0.6 and 0.85 -> x4.
  config = _tiny_study(tmp_path, epochs=4)
  gin_config.parse_gin([config], [])
  study = grid.study()
  command = cells_lib.train_command(study, study.cells[0], "W")
  bindings = [command[i + 1] for i, a in enumerate(command) if a == "--gin_param"]
  assert ["train.epochs = 4", "train.warmup_epochs = 0.2",
          "train.decay_epochs = [2.4, 3.4]", "train.checkpoint_every_steps = 1",
          f"train.keep_checkpoints = {cells_lib.KEEP_ALL_CHECKPOINTS}"] == [
              b for b in bindings if b.split(" = ")[0] in (
                  "train.epochs", "train.warmup_epochs", "train.decay_epochs",
                  "train.checkpoint_every_steps", "train.keep_checkpoints")]
  # 7 minutes for rotation's own 1 epoch, x4, + linear 3 + the pretext
  # curve's 0.5 per epoch; RevNet costs 2x.
  gin.clear_config()
  with open(config, "a") as f:
    f.write('study.eval_minutes = {"linear": 3, "pretext_curve": 0.5}\n')
  gin_config.parse_gin([config], [])
  study = grid.study()
  assert [study.estimated_minutes(c) for c in study.cells] == [33, 66]
  gin.clear_config()
  with open(config, "a") as f:
    f.write("study.checkpoint_steps = {}\n")
  gin_config.parse_gin([config], [])
  with pytest.raises(ValueError, match="study.checkpoint_steps has no entry"):
    grid.study()


def test_an_include_relative_to_configs_logs_no_error(caplog):
  gin.clear_config()
  with caplog.at_level(logging.INFO):
    grid.parse_config(["study/fashion_mnist_pilot.gin"])
  assert grid.study().cells
  assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


def test_the_short_rerun_mirrors_the_converged_grids_k1_models_and_seeds():
  gin.clear_config()
  grid.parse_config(["study/fashion_mnist_converged.gin"])
  converged = [c for c in grid.study().cells
               if c.filters_factor == 1 and c.task != "random_init"]
  gin.clear_config()
  grid.parse_config(["study/fashion_mnist_short.gin"])
  short = grid.study().cells
  assert all(c.epochs is None and c.budget == "short" for c in short)
  model = lambda c: (c.task, c.architecture, c.seed)
  assert {model(c) for c in short} == {model(c) for c in converged}
  assert [c.name for c in short if "linear_sgd" in c.evals] == [
      "rotation-resnet50_v2-k1-s0"]


def test_the_converged_and_pilot_configs_parse_into_the_issue_grid():
  gin.clear_config()
  grid.parse_config(["study/fashion_mnist_converged.gin"])
  study = grid.study()
  names = [c.name for c in study.cells]
  assert len(set(names)) == len(names)
  trained = [c for c in study.cells if c.task != "random_init"]
  assert all(c.epochs is not None and c.budget == "converged" for c in trained)
  k1 = {(c.task, c.architecture) for c in trained if c.filters_factor == 1}
  assert k1 >= {(t, a) for t in ("rotation", "exemplar", "relative_patch_location",
                                 "jigsaw", "supervised")
                for a in ("resnet50_v1", "resnet50_v2", "revnet50", "vgg19")}
  assert {(c.task, c.architecture, c.filters_factor) for c in trained
          if c.filters_factor > 1} == {
              (t, "revnet50", k) for t in ("rotation", "relative_patch_location")
              for k in (2, 4)}
  # Every width at the k=1 model's longest rung (equal epochs); a longer rung
  # only as the next rung of a k=1 model that has the budget's rung.
  budgets = {c.task: min(d.epochs for d in trained if d.task == c.task)
             for c in trained}
  keys = {c.key for c in trained}
  assert all(c.epochs == max(e for t, a, k, e, _ in keys
                             if (t, a, k) == (c.task, c.architecture, 1))
             for c in trained if c.filters_factor > 1)
  longer = {c.key for c in trained if c.epochs != budgets[c.task]}
  assert {(t, a, e) for t, a, _, e, _ in longer} >= {
      (t, a, 4.0) for t in ("rotation", "supervised")
      for a in ("resnet50_v1", "resnet50_v2", "vgg19")}
  # Each longer rung of a k=1 model doubles a rung the model has.
  assert all((t, a, k, e / 2, 0) in keys for t, a, k, e, _ in longer if k == 1)
  # Seeds 1 and 2 up to seed 0's longest rung: the model's seeds can share
  # its budget.
  longest = lambda t, a, s: max(e for t_, a_, k, e, s_ in keys
                                if (t_, a_, k, s_) == (t, a, 1, s))
  seeded = {(c.task, c.architecture) for c in trained if c.seed == 2}
  assert len(seeded) >= 4 and all(
      longest(t, a, s) == longest(t, a, 0) for t, a in seeded for s in (1, 2))
  assert {stats.family(a) for _, a in seeded} == {"ResNet", "RevNet", "VGG"}
  assert any(t in grid.PATCH_TASKS for t, _ in seeded)
  # Half an epoch of checkpoints: the train split (official train minus the
  # held-out val) or trainval, over twice the batch size of the task config.
  train = 60000 - sources.held_out_size(60000, sources.HELD_OUT_FRACTION)
  for task, steps in study.checkpoint_steps.items():
    text = open(study.train_configs[task]).read()
    size = 60000 if "trainval" in text else train
    assert steps == size // (2 * grid.gin_value(text, "train.batch_size")), task
  for cell in study.cells:
    for job in cell.evals:
      assert all(os.path.exists(p) for p in study.eval_configs(job))
  # The pilot (it includes the converged config): RevNet50 at 2 and 4
  # epochs; its rung at a task's budget is that grid's RevNet50 cell.
  gin.clear_config()
  grid.parse_config(["study/fashion_mnist_pilot.gin"])
  pilot = grid.study()
  assert {(c.architecture, c.epochs, c.budget) for c in pilot.cells} == {
      ("revnet50", e, "pilot") for e in (2.0, 4.0)}
  adopted = {c.name for c in pilot.cells} & set(names)
  at_budget = {f"{t}-revnet50-k1-e{budgets[t]:g}-s0" for t in budgets}
  # Beyond them, only rungs of the converged ladder.
  assert at_budget <= adopted and adopted - at_budget <= {
      c.name for c in trained if c.epochs != budgets[c.task]}
  assert all(c.evals == ("linear", "mlp", "lowdata") for c in pilot.cells)


def test_convergence_rule_on_hand_made_curves():
  epochs = [1, 2, 3, 4]
  # From epoch 3 (= 75% of 4) to 4: +0.5 point (converged), +2 (not).
  assert curves.late_gain(epochs, [0.5, 0.6, 0.65, 0.655]) == pytest.approx(0.005)
  assert curves.converged(epochs, [0.5, 0.6, 0.65, 0.655])
  assert not curves.converged(epochs, [0.5, 0.6, 0.62, 0.64])
  # 8 epochs with points every 2: 75% is epoch 6, interpolated.
  assert curves.late_gain([2, 4, 8], [0.4, 0.6, 0.7]) == pytest.approx(
      0.7 - (0.6 + 0.1 * 2 / 4))
  assert curves.converged([1, 2], [0.9, 0.8])  # falling: no gain
  # No point at or before 75% of training: the curve cannot tell.
  assert curves.converged([4], [0.7]) is None
  assert curves.converged([8, 10], [0.7, 0.71], total_epochs=10) is None
  # A curve that stops before the end of training cannot tell either.
  assert curves.converged([5, 8], [0.7, 0.705], total_epochs=10) is None
  ladder = {2: [{"epoch": 1, "accuracy": 0.5}, {"epoch": 2, "accuracy": 0.6}],
            4: [{"epoch": e, "accuracy": a}
                for e, a in ((1, .5), (2, .6), (3, .64), (4, .645))],
            8: [{"epoch": 6, "accuracy": 0.65}, {"epoch": 8, "accuracy": 0.652}]}
  assert curves.choose_budget(ladder) == 4
  assert curves.choose_budget({2: ladder[2]}) is None
  # Converged at 4, rising at 8 (+5 points from epoch 6): none is picked.
  rising_8 = [{"epoch": 6, "accuracy": 0.60}, {"epoch": 8, "accuracy": 0.65}]
  assert curves.choose_budget({4: ladder[4], 8: rising_8}) is None
  assert curves.choose_budget({2: ladder[2], 4: ladder[4], 8: ladder[8]}) == 4
  # After a decay at epoch 6.8 of 8: from the first point after it (7) on.
  after = [(6, 0.60), (6.5, 0.601), (7, 0.611), (7.5, 0.612), (8, 0.6105)]
  assert curves.gain_after(*zip(*after), 6.8) == pytest.approx(-0.0005)
  assert curves.gain_after([1.5, 2], [0.5, 0.6], 1.7) is None
  # Two points a few steps apart after the decay (0.001 of its 0.4 epochs).
  assert curves.gain_after([1.5, 1.999, 2], [0.5, 0.6, 0.61], 1.6) is None
  assert curves.gain_after([1.5, 1.68, 2], [0.5, 0.6, 0.61], 1.6) == (
      pytest.approx(0.01))


def test_contrasts_against_pooled_spreads_and_welch():
  # Own seeds of two models: std 0.01 (df 2) and 0.02 (df 2), 3 seeds each.
  a = stats.estimate({0: 0.79, 1: 0.80, 2: 0.81},
                     stats.Spread(0.01, 2, "a"))
  b = stats.estimate({0: 0.68, 1: 0.70, 2: 0.72},
                     stats.Spread(0.02, 2, "b"))
  difference = stats.contrast([(1.0, a), (-1.0, b)])
  va, vb = 0.01 ** 2 / 3, 0.02 ** 2 / 3
  welch_df = (va + vb) ** 2 / (va ** 2 / 2 + vb ** 2 / 2)
  assert difference.difference == pytest.approx(0.10)
  assert difference.se == pytest.approx(np.sqrt(va + vb))
  assert difference.df == pytest.approx(welch_df)
  # One shared estimate keeps its own degrees of freedom: t(0.975, 6) = 2.447.
  shared = stats.Spread(0.01, 6, "pooled")
  c = stats.Comparison(0.0, 0.0, 0.0)
  c = stats.contrast([(1.0, stats.Estimate(0.8, 1, shared)),
                      (-1.0, stats.Estimate(0.77, 1, shared))])
  assert c.df == 6 and c.se == pytest.approx(0.01 * np.sqrt(2))
  assert c.half_width == pytest.approx(2.447 * 0.01 * np.sqrt(2), rel=1e-3)
  assert c.classify() == stats.UNDECIDED  # 3 pp < 3.46 pp
  assert c.classify(margin=0.07) == stats.NOT_GREATER  # 3 + 3.46 < 7 pp
  assert stats.contrast([(1.0, stats.Estimate(0.9, 1, shared)),
                         (-1.0, stats.Estimate(0.8, 1, shared))]
                        ).classify() == stats.GREATER
  assert stats.contrast([(1.0, stats.Estimate(0.9, 1, None))]).classify() == (
      stats.UNKNOWN)
  # Pooling: squared deviations 2e-4 and 8e-4 over df 2 + 2.
  pooled = stats.pooled({"a": [0.79, 0.80, 0.81], "b": [0.68, 0.70, 0.72],
                         "c": [0.5]}, "test")
  assert (pooled.std, pooled.df) == (pytest.approx(np.sqrt(1e-3 / 4)), 4)


def test_spread_hierarchy_and_bootstrap_rank_correlation():
  values = {("rotation", "resnet50_v2", 1): {0: 0.80, 1: 0.82, 2: 0.81},
            ("jigsaw", "revnet50", 1): {0: 0.70, 1: 0.74},
            ("rotation", "resnet50_v1", 1): {0: 0.75},
            ("exemplar", "vgg19", 1): {0: 0.6}}
  table = stats.SpreadTable(values)
  overall = np.sqrt(1e-3 / 3)  # all seeded models: (2e-4 + 8e-4) / (2 + 1)
  own = table.spread(("rotation", "resnet50_v2", 1))
  assert own.source.startswith("own") and own.df == 2
  # ResNet on whole images: the seeded ResNet rotation model's spread, 0.01
  # (df 2), above its floor (0.23 x 1.83 pp).
  resnet = table.spread(("rotation", "resnet50_v1", 1))
  assert (resnet.std, resnet.df) == (pytest.approx(0.01), 2)
  # VGG has no seeded model: all seeded models pooled.
  vgg = table.spread(("exemplar", "vgg19", 1))
  assert (vgg.std, vgg.df) == (pytest.approx(overall), 3)
  # The floor: the 5% quantile of a std with df degrees of freedom when the
  # true one is the overall: chi2(0.05, 2) = 0.1026, chi2(0.05, 1) = 0.00393.
  assert table.floor(2) == pytest.approx(overall * np.sqrt(0.1026 / 2), rel=1e-3)
  assert table.floor(1) == pytest.approx(overall * np.sqrt(0.00393), rel=1e-3)
  # A group below it is raised to it and keeps its df.
  near_zero = stats.SpreadTable({**values, ("rotation", "resnet50_v2", 1): {
      0: 0.80, 1: 0.8002, 2: 0.8004}})
  overall = np.sqrt((8e-8 + 8e-4) / 3)
  resnet = near_zero.spread(("rotation", "resnet50_v1", 1))
  assert (resnet.std, resnet.df) == (
      pytest.approx(overall * np.sqrt(0.1026 / 2), rel=1e-3), 2)
  assert near_zero.describe()[0] == (
      "ResNet/image: s = 0.02 pp (family and task type: "
      "rotation/resnet50_v2/k1 (df=2); used: 0.37 pp (floor))")
  assert stats.bootstrap_spearman([([1, 2, 3, 4], [2, 4, 6, 9])]) == (1, 1, 1)
  rho, low, high = stats.bootstrap_spearman(
      [([1, 2, 3, 4, 5], [1, 3, 2, 5, 4]), ([1, 2, 3], [3, 2, 1])])
  assert rho == pytest.approx((0.8 - 1) / 2) and low < rho < high
  assert stats.spearman([1, 2, 3], [1, 1, 1]) != stats.spearman([1, 2, 3], [1, 1, 1])


# Hand-made results: each model's seeds spread evenly around its mean.


def _cell(task, architecture, k=1, seed=0, layers=None, val=None, pretext=None,
          mlp=None, fractions=None, sgd=None, epochs=None, budget="short",
          iterations=None):
  """A cell file; layers/val: {end point: top-1}; fractions: {fraction:
  pre_logits top-1 per label subset}."""
  rows = []
  for e, top1 in (layers or {}).items():
    rows.append({"eval": "linear", "end_point": e, "probe": "linear",
                 "label_fraction": 1.0, "top1": top1,
                 "val_top1": (val or layers)[e],
                 "iterations": (iterations or {}).get(e, 40)})
  for fraction, subsets in (fractions or {}).items():
    rows += [{"eval": "lowdata", "end_point": "pre_logits", "probe": "linear",
              "label_fraction": fraction, "subset_seed": i, "top1": top1,
              "val_top1": top1, "iterations": 40}
             for i, top1 in enumerate(subsets)]
  if mlp is not None:
    rows.append({"eval": "mlp", "end_point": "pre_logits", "probe": "mlp",
                 "label_fraction": 1.0, "top1": mlp, "val_top1": mlp,
                 "epochs": 30})
  if sgd is not None:
    rows.append({"eval": "linear_sgd", "end_point": "pre_logits",
                 "probe": "linear_sgd", "label_fraction": 1.0, "top1": sgd[-1],
                 "test_top1_per_epoch": sgd, "epochs": len(sgd)})
  budget_name = "" if epochs is None else f"-e{epochs:g}"
  cell = {"cell": f"{task}-{architecture}-k{k}{budget_name}-s{seed}",
          "task": task, "architecture": architecture, "filters_factor": k,
          "seed": seed, "pretext_accuracy": pretext, "batch_size": 32,
          "num_crops": 8, "global_step": 100, "train_wall_time_s": 600.0,
          "eval_wall_time_s": 300.0, "train_cpu_time_s": 900.0,
          "eval_cpu_time_s": 360.0, "rows": rows}
  if epochs is None:
    cell["epochs"] = 1  # the first edition's name for the training epochs
  else:
    cell.update(budget=budget, train_epochs=epochs, pretext_curve=[
        {"step": 10 * e, "epoch": e, "accuracy": pretext - 0.1 / e}
        for e in range(1, int(epochs) + 1)])
  return normalise_cell(cell)


def _seeded(task, architecture, means, spread, k=1, opposite=(), **kwargs):
  """3 seeds of a model at mean - spread, mean, mean + spread of each value
  of `means` ({end point: mean top-1}); the `opposite` end points move the
  other way."""
  sign = lambda e: -1 if e in opposite else 1
  return [_cell(task, architecture, k, seed,
                layers={e: m + sign(e) * (seed - 1) * spread
                        for e, m in means.items()},
                **kwargs) for seed in range(3)]


def _verdict(finding, cells):
  return finding(Results(cells))


def _architecture_grid(ssl_means, supervised_means, spread):
  cells = []
  for task, means in [*ssl_means.items(), ("supervised", supervised_means)]:
    for architecture, mean in means.items():
      cells += _seeded(task, architecture, {"pre_logits": mean}, spread)
  return cells


ARCHS = ("resnet50_v1", "resnet50_v2", "revnet50", "vgg19")


def test_finding_1_ranges_against_supervised_with_and_without_vgg():
  flat = dict(zip(ARCHS, (0.80, 0.802, 0.804, 0.80)))
  # Self-supervised ranges of 10-20 pp (also without VGG), supervised 0.4;
  # ResNet50 v1 beats v2 in rotation and loses in exemplar.
  wide = {"rotation": dict(zip(ARCHS, (0.80, 0.70, 0.75, 0.60))),
          "exemplar": dict(zip(ARCHS, (0.70, 0.80, 0.75, 0.60))),
          "jigsaw": dict(zip(ARCHS, (0.70, 0.75, 0.80, 0.60)))}
  found = _verdict(findings.architecture_matters,
                   _architecture_grid(wide, flat, 0.002))
  assert found.verdict == findings.HOLDS, found.evidence
  assert "rank swaps beyond the combined spread: " in found.evidence
  assert "ResNet50 v1 vs ResNet50 v2" in found.evidence
  # The supervised range is the larger one: contradicted.
  found = _verdict(findings.architecture_matters, _architecture_grid(
      {t: flat for t in wide}, wide["rotation"], 0.002))
  assert found.verdict == findings.FAILS
  # Ranges large only through VGG: holds with it, contradicted without it.
  vgg_only = {t: {**flat, "vgg19": 0.5} for t in wide}
  found = _verdict(findings.architecture_matters,
                   _architecture_grid(vgg_only, flat, 0.002))
  assert found.verdict == findings.FAILS
  # Seeds 5 pp apart: nothing beyond the spread.
  found = _verdict(findings.architecture_matters,
                   _architecture_grid(wide, flat, 0.05))
  assert found.verdict == findings.INCONCLUSIVE


def _degradation_grid(skip_pre_logits, vgg_pre_logits, spread,
                      untrained_iterations=40):
  untrained = {"block3": 0.70, "block4": 0.70, "pre_logits": 0.70}
  cells = [_cell("random_init", a, layers=untrained)
           for a in ("resnet50_v2", "revnet50")]
  cells.append(_cell("random_init", "vgg19",
                     layers={"fc6": 0.50, "pre_logits": 0.50},
                     iterations={"pre_logits": untrained_iterations}))
  for task in ("rotation", "exemplar"):
    for architecture in ("resnet50_v2", "revnet50"):
      cells += _seeded(task, architecture, {"block3": 0.75, "block4": 0.80,
                                            "pre_logits": skip_pre_logits},
                       spread, opposite=("pre_logits",))
    cells += _seeded(task, "vgg19", {"fc6": 0.80, "pre_logits": vgg_pre_logits},
                     spread, opposite=("pre_logits",))
  return cells


def test_finding_2_gain_at_the_late_layers():
  # Skip nets gain 12 pp at pre_logits, 10 at block4; VGG 10 against 30.
  found = _verdict(findings.pre_logits_degrade,
                   _degradation_grid(0.82, 0.60, 0.002))
  assert found.verdict == findings.HOLDS, found.evidence
  assert "D = gain(pre_logits) - gain(block4): +2.00 pp" in found.evidence
  # Skip nets lose 10 pp of their gain at pre_logits.
  found = _verdict(findings.pre_logits_degrade,
                   _degradation_grid(0.70, 0.60, 0.002))
  assert found.verdict == findings.FAILS
  found = _verdict(findings.pre_logits_degrade,
                   _degradation_grid(0.82, 0.60, 0.08))
  assert found.verdict == findings.INCONCLUSIVE
  # An untrained VGG fit that stopped after 1 iteration is no evidence.
  found = _verdict(findings.pre_logits_degrade,
                   _degradation_grid(0.82, 0.60, 0.002, untrained_iterations=1))
  assert found.verdict == findings.INCONCLUSIVE
  assert "random_init pre_logits stopped before its 3rd" in found.evidence


def _width_grid(gain, spread):
  cells = []
  for k in (1, 2, 4):
    mean = 0.80 + gain * (k - 1) / 3
    cells += [_cell("rotation", "revnet50", k, seed,
                    layers={"pre_logits": mean + (seed - 1) * spread},
                    fractions={0.1: [mean - 0.05 + (seed - 1) * spread] * 3})
              for seed in range(3)]
  return cells


def test_finding_3_width_with_all_and_10_percent_labels():
  found = _verdict(findings.wider_is_better, _width_grid(0.05, 0.002))
  assert found.verdict == findings.HOLDS, found.evidence
  assert "10% labels: k=4 - k=1 = +5.00 pp" in found.evidence
  assert _verdict(findings.wider_is_better, _width_grid(-0.05, 0.002)).verdict == (
      findings.FAILS)
  assert _verdict(findings.wider_is_better, _width_grid(0.05, 0.05)).verdict == (
      findings.INCONCLUSIVE)


def test_finding_4_linear_and_mlp_rankings():
  def grid_of(mlp_of):
    return [_cell("rotation", a, layers={"pre_logits": 0.70 + 0.02 * i},
                  mlp=mlp_of(i)) for i, a in enumerate(grid.ARCHITECTURES)]
  assert _verdict(findings.linear_is_adequate,
                  grid_of(lambda i: 0.71 + 0.02 * i)).verdict == findings.HOLDS
  assert _verdict(findings.linear_is_adequate,
                  grid_of(lambda i: 0.9 - 0.02 * i)).verdict == findings.FAILS
  assert _verdict(findings.linear_is_adequate, grid_of(
      lambda i: [0.8, 0.7, 0.85, 0.75, 0.9, 0.72][i])).verdict == (
          findings.INCONCLUSIVE)


def test_finding_5_pretext_against_linear_with_a_bootstrap_interval():
  def grid_of(pretext_of):
    return [_cell(t, a, layers={"pre_logits": 0.70 + 0.02 * i},
                  pretext=pretext_of(i))
            for t in ("rotation", "jigsaw", "exemplar")
            for i, a in enumerate(grid.ARCHITECTURES)]
  # Pretext accuracy orders the architectures the other way in every task.
  found = _verdict(findings.pretext_does_not_predict, grid_of(lambda i: 0.9 - 0.05 * i))
  assert found.verdict == findings.HOLDS, found.evidence
  assert _verdict(findings.pretext_does_not_predict,
                  grid_of(lambda i: 0.5 + 0.05 * i)).verdict == findings.FAILS
  assert _verdict(findings.pretext_does_not_predict, grid_of(
      lambda i: [0.6, 0.5, 0.8, 0.7, 0.65, 0.9][i])).verdict == (
          findings.INCONCLUSIVE)
  # Four architectures a task, rho -0.4 in each (the converged rotation
  # grid's numbers): the interval stays below 0.5 but spans most of rho's
  # range, too wide for a verdict; reversed orders in every task are not.
  four = list(grid.ARCHITECTURES)[:4]
  def four_of(pretext, linear):
    return [_cell(t, a, layers={"pre_logits": linear[i]}, pretext=pretext[i])
            for t in ("rotation", "jigsaw", "exemplar")
            for i, a in enumerate(four)]
  weak = _verdict(findings.pretext_does_not_predict, four_of(
      [0.8223, 0.8567, 0.84, 0.8705], [0.8192, 0.8383, 0.8164, 0.7373]))
  low, high = map(float, re.search(r"interval (\S+) to (\S+)\)",
                                   weak.evidence).groups())
  assert high < findings.RHO_THRESHOLD and high - low > findings.MAX_RHO_INTERVAL
  assert weak.verdict == findings.INCONCLUSIVE, weak.evidence
  assert _verdict(findings.pretext_does_not_predict, four_of(
      [0.9, 0.85, 0.8, 0.75], [0.7, 0.72, 0.74, 0.76])).verdict == findings.HOLDS


def test_finding_6_sgd_against_the_lbfgs_optimum():
  def cells_of(reach_epoch):
    curve = [0.70 + 0.10 * min(1.0, e / reach_epoch) for e in range(1, 201)]
    return [_cell("rotation", "resnet50_v2", layers={"pre_logits": 0.80},
                  sgd=curve)]
  found = _verdict(findings.sgd_is_slow, cells_of(400))
  assert found.verdict == findings.HOLDS and "more than 200" in found.evidence
  assert _verdict(findings.sgd_is_slow, cells_of(5)).verdict == findings.FAILS
  # Within 0.5 pp (the fixed tolerance) at epoch 48 of a 50-epoch ramp.
  found = _verdict(findings.sgd_is_slow, cells_of(50))
  assert found.verdict == findings.INCONCLUSIVE
  assert "within 0.5 pp after 48 epochs" in found.evidence


def test_best_layer_is_chosen_on_val_not_test():
  # Test says block4 (85 > 82), validation says block3 (84 > 80).
  cell = _cell("rotation", "revnet50",
               layers={"block3": 0.82, "block4": 0.85, "pre_logits": 0.80},
               val={"block3": 0.84, "block4": 0.80, "pre_logits": 0.79})
  results = Results([cell])
  assert results.best_layer("rotation", "revnet50") == "block3"
  assert tables.best_layer_entry(results, "rotation", "revnet50") == "82.0 (block3)"


def test_first_edition_cells_load_as_their_own_budget():
  path = os.path.join(os.path.dirname(runner.DEFAULT_RESULTS_DIR), "cells",
                      "rotation-resnet50_v2-k1-s0.first_edition.json")
  cell = normalise_cell(json.load(open(path)))
  assert (cell["budget"], cell["train_epochs"]) == ("first edition", 1)
  mlp = [r for r in cell["rows"] if r["probe"] == "mlp"]
  assert mlp and all("epochs" not in r and r["probe_epochs"] == 30 for r in mlp)
  assert cell["heldout_pretext_accuracy"] is None


def test_mock_grid_with_two_budgets_through_runner_and_report(tmp_path,
                                                             monkeypatch):
  config = _tiny_study(tmp_path)
  with open(config, "a") as f:
    f.write("study.blocks = [@block(), @converged/block()]\n"
            'converged/block.tasks = ["rotation"]\n'
            'converged/block.architectures = ["resnet50_v2", "revnet50"]\n'
            "converged/block.epochs = 2\n")
  fake = _FakeCommands()
  monkeypatch.setattr(cells_lib.subprocess, "run", fake)
  assert runner.main(_args(config, tmp_path)) == 0
  # The budgeted cells ran the pretext curve between training and evaluation.
  assert [m for m, w in fake.calls if "-e2-" in w] == [
      "tfrevisit.train", "tfrevisit.study.pretext_eval", "tfrevisit.evaluate"] * 2
  cells = [normalise_cell(json.load(open(p)))
           for p in sorted((tmp_path / "results").glob("*.json"))]
  assert sorted((c["cell"], c["budget"], c["train_epochs"]) for c in cells) == [
      ("rotation-resnet50_v2-k1-e2-s0", "converged", 2),
      ("rotation-resnet50_v2-k1-s0", "short", 1),
      ("rotation-revnet50-k1-e2-s0", "converged", 2),
      ("rotation-revnet50-k1-s0", "short", 1)]
  assert set(budget_views(cells)) == {"short", "converged"}
  out = tmp_path / "docs"
  (out / "study").mkdir(parents=True)
  (out / "study" / "stale.png").write_text("an old plot")
  plan = report.planned_cells([config])[config]
  missing = grid.Cell("rotation", "vgg19", 1, 0, (), epochs=2, budget="converged")
  written = report.write_report(cells, str(out), {"study.gin": {
      **plan, missing.name: missing}})
  assert not (out / "study" / "stale.png").exists()
  assert {"layers-short.png", "layers-converged.png",
          "pretext_curves.png"} <= set(written)
  header = open(written["results.csv"]).readline().strip().split(",")
  assert "budget" in header and "train_epochs" in header and "epochs" not in header
  text = open(written["study.md"]).read()
  # Budgets side by side: one entry per budget, the verdicts in two columns.
  assert "| rotation | 50.0 · 50.0 | 50.0 · 50.0 |" in text
  assert "| finding | short | converged (2 of 3 cells run) |" in text
  assert text.count("Verdict") == 1 and "**short: " in text and "**converged: " in text
  assert "1 of 5" not in text and "4 of 5 cells done" in text
  assert "`rotation-vgg19-k1-e2-s0`" in text
  assert "*pretext_curves.png.* Held-out pretext accuracy" in text
  # The fake curve rises 2 points over its last 25% (epoch 1.5 to 2).
  assert "| no (+2.00) |" in text
  assert "- converged: 2 cells, 0.0 h wall" in text
  if cells_lib.machine():
    assert f"); on {cells_lib.machine()} (2 cells)\n" in text


def test_report_tables_diagnostics_and_readme_from_hand_made_results(tmp_path):
  cells = (_seeded("rotation", "revnet50", {"block3": 0.80, "pre_logits": 0.82},
                   0.01)
           + [_cell("rotation", "vgg19", layers={"fc6": 0.85, "pre_logits": 0.70}),
              _cell("random_init", "vgg19", layers={"fc6": 0.80, "pre_logits": 0.1},
                    iterations={"pre_logits": 2}),
              {**_cell("rotation", "vgg19", layers={"fc6": 0.86, "pre_logits": 0.75},
                       epochs=4, budget="converged", pretext=0.9),
               "decay_epochs": [1.2, 1.7]},
              _cell("rotation", "vgg19", 1, 0, layers={"fc6": 0.80}, epochs=2,
                    budget="pilot", pretext=0.8)])
  views = {b: Results(c) for b, c in budget_views(cells).items()}
  # The pilot's cell is a rung of the converged ladder, not a view.
  assert list(views) == ["first edition", "converged"]
  assert tables.table1(views, tables.best_layer_entry) == [
      ["task", "RevNet50", "VGG19-BN"],
      ["rotation", "82.0 ± 1.0, n=3 (pre_logits) · -", "85.0 (fc6) · 86.0 (fc6)"],
      ["random_init", "- · -", "80.0 (fc6) · 80.0 (fc6)"]]
  assert tables.gain_table(views["converged"]) == [
      ["task", "VGG19-BN"], ["rotation", "fc6 +6.0, pre_logits +65.0"]]
  diagnostics = tables.diagnostics_table(views)
  # The first edition: 3 RevNet seeds x 2 rows, VGG and the untrained VGG's 2.
  assert diagnostics[1] == ["first edition", "10", "1", "0 (10 unknown)",
                            "0 (10 unknown)", "0 (10 unknown)"]
  # Curves at 0.9 - 0.1 / epoch: +2.5 points over the last 25% of 2
  # epochs, +0.8 over those of 4; +2.5 from epoch 2 (the first point after
  # the 4-epoch run's last decay, at 1.7) to 4.
  assert tables.pilot_table(cells)[1:] == [
      ["rotation", "VGG19-BN k=1", "0",
       "2 ep: no (+2.50), 80.0 (fc6); "
       "4 ep: yes (+0.83; +2.50 after the last decay), 86.0 (fc6)", "4"]]
  readme = tmp_path / "README.md"
  readme.write_text(f"# Title\n\n{report.README_BEGIN}\nold table\n"
                    f"{report.README_END}\n\n## Next\n")
  report.update_readme(str(readme), cells)
  text = readme.read_text()
  assert text.startswith(f"# Title\n\n{report.README_BEGIN}\n| task |")
  assert text.endswith(f"{report.README_END}\n\n## Next\n")
  assert "old table" not in text and "| finding | first edition | converged |" in text
  readme.write_text("# No block\n")
  with pytest.raises(cli.UserError, match="no study summary block"):
    report.update_readme(str(readme), cells)


def test_report_names_the_grid_cells_not_yet_run(tmp_path):
  cells = [{**_cell("rotation", a, layers={"pre_logits": 0.8}), "budget": "short"}
           for a in ("resnet50_v2", "vgg19")]
  planned = ["rotation-resnet50_v2-k1-s0", "jigsaw-vgg19-k1-s0",
             "rotation-vgg19-k1-s0", "supervised-vgg19-k1-s0"]
  assert report.coverage(cells, planned) == (
      "Grid: 2 of 4 cells done; not yet run: `jigsaw-vgg19-k1-s0`, "
      "`supervised-vgg19-k1-s0`.")
  assert report.coverage(cells, planned[:1]) == "Grid: all 1 cells done."
  assert report.coverage(cells, None) == ""
  # Through the command line, the plan is each study config's grid.
  results_dir = tmp_path / "cells"
  results_dir.mkdir()
  (results_dir / f"{cells[0]['cell']}.json").write_text(json.dumps(cells[0]))
  readme = tmp_path / "README.md"
  readme.write_text(f"{report.README_BEGIN}\n{report.README_END}\n")
  config = _tiny_study(tmp_path)
  report.main(["--results_dir", str(results_dir), "--out_dir", str(tmp_path),
               "--readme", str(readme), "--plan", config])
  line = (f"Grid `{config}`: 1 of 2 cells done; not yet run: "
          "`rotation-revnet50-k1-s0`.")
  assert line in (tmp_path / "study.md").read_text()
  assert line in readme.read_text()
  # The verdicts of a budget whose grid has not all run say on how much.
  header = "| finding | short (1 of 2 cells run) |"
  assert header in (tmp_path / "study.md").read_text()
  assert header in readme.read_text()
  # The cell's 900 CPU s of training and 360 of evaluation, split.
  assert (f"{1260 / 3600:.1f} CPU h (training {900 / 3600:.1f}, evaluation "
          f"{360 / 3600:.1f})") in (tmp_path / "study.md").read_text()


def test_running_children_cpu_matches_os_times_of_a_busy_child():
  """/proc polling against os.times(): a child that burned CPU and exited is
  counted by os.times() once waited for; while it runs, the poll sees it."""
  child = subprocess.Popen(
      [sys.executable, "-c", "import time\nt = time.process_time()\n"
       "while time.process_time() - t < 0.6: pass\ntime.sleep(2)"])
  try:
    time_before = os.times()
    deadline = time.time() + 10
    polled = 0.0
    while polled < 0.6 and time.time() < deadline:
      time.sleep(0.1)
      polled = cells_lib._running_children_cpu_s()
  finally:
    child.wait()
  after = os.times()
  waited = (after.children_user + after.children_system
            - time_before.children_user - time_before.children_system)
  assert 0.6 <= polled <= waited + 0.05


def test_a_killed_attempt_counts_its_last_polled_cpu_time(tmp_path,
                                                          monkeypatch):
  config = _tiny_study(tmp_path, architectures=("vgg19",))
  monkeypatch.setattr(cells_lib.subprocess, "run", _FakeCommands())
  cell_dir = tmp_path / "work" / "rotation-vgg19-k1-s0"
  (cell_dir / "logs").mkdir(parents=True)
  (cell_dir / "logs" / "train.log").write_text("step 1\n")
  (cell_dir / "logs" / "train.cpu").write_text("30.0\n")
  # eval/linear was killed before its first poll: no .cpu file.
  (cell_dir / "logs" / "eval_linear.log").write_text("\n")
  stage = {"done": False, "wall_time_s": 0.0, "cpu_time_s": 4.0,
           "started": time.time()}
  (cell_dir / "state.json").write_text(json.dumps({"stages": {
      "train": stage, "eval/linear": dict(stage)}}))
  assert runner.main(_args(config, tmp_path)) == 0
  stages = json.load(open(cell_dir / "state.json"))["stages"]
  assert stages["train"]["cpu_time_s"] >= 34.0
  assert "unrecorded_cpu_attempts" not in stages["train"]
  assert stages["eval/linear"]["unrecorded_cpu_attempts"] == 1
  assert not (cell_dir / "logs" / "train.cpu").exists()
  cell = json.load(open(cell_dir / "cell.json"))
  assert cell["unrecorded_cpu_attempts"] == 1
  assert "`rotation-vgg19-k1-s0` (1)" in tables.unrecorded_cpu([cell])


def test_a_running_stage_writes_its_cpu_time_every_poll(tmp_path, monkeypatch):
  monkeypatch.setattr(cells_lib, "CPU_POLL_S", 0.1)
  cpu_path = tmp_path / "train.cpu"
  child_cpu = []
  with cells_lib._polling_children_cpu(str(cpu_path)):
    subprocess.run([sys.executable, "-c", "import time\nt = time.process_time()\n"
                    "while time.process_time() - t < 0.5: pass\n"
                    "time.sleep(0.5)"], check=True)
    child_cpu.append(float(cpu_path.read_text()))
  assert child_cpu[0] >= 0.4
  assert not cpu_path.exists()


def test_each_budget_compares_with_the_untrained_network_of_its_era():
  old = _cell("random_init", "vgg19", layers={"pre_logits": 0.1})
  new = {**_cell("random_init", "vgg19", layers={"pre_logits": 0.68}),
         "budget": "converged"}  # the label the converged grid gives it
  trained = [_cell("rotation", "vgg19", layers={"pre_logits": 0.70}),
             _cell("rotation", "vgg19", layers={"pre_logits": 0.75}, epochs=2,
                   budget="converged", pretext=0.9)]
  views = budget_views(trained + [old, new])
  untrained = {b: [c["rows"][0]["top1"] for c in v if c["task"] == "random_init"]
               for b, v in views.items()}
  assert untrained == {"first edition": [0.1], "converged": [0.68]}
  # Without a reference of its era, a budget takes every untrained cell.
  assert len([c for c in budget_views(trained + [new])["first edition"]
              if c["task"] == "random_init"]) == 1


def test_the_report_lists_every_diagnosed_row_of_todays_probe():
  first = _cell("rotation", "vgg19", layers={"pre_logits": 0.55},
                iterations={"pre_logits": 1})
  first["rows"][0]["converged"] = False
  capped = _cell("rotation", "vgg19", layers={"fc6": 0.7, "pre_logits": 0.6},
                 epochs=2, budget="converged", pretext=0.9)
  capped["rows"][1].update(hit_max_iterations=True, converged=False,
                           l2_at_edge=False, stopped_early=False)
  capped["rows"].append({**capped["rows"][1], "subset_seed": 2, "l2": 100.0,
                         "label_fraction": 0.01, "iterations": 5,
                         "top1": 0.635, "hit_max_iterations": False,
                         "converged": True, "l2_at_edge": True})
  views = {b: Results(c) for b, c in budget_views([first, capped]).items()}
  text = "\n".join(report._diagnostics(views))
  assert ("Stopped early (first edition): rotation-vgg19-k1-s0 pre_logits @1 "
          "(1 iterations, top-1 55.0).") in text
  assert "Not converged (first edition)" not in text
  assert ("Hit the iteration cap (converged): rotation-vgg19-k1-e2-s0 "
          "pre_logits @1 (40 iterations, top-1 60.0).") in text
  assert ("Not converged (converged): rotation-vgg19-k1-e2-s0 pre_logits @1 "
          "(40 iterations, top-1 60.0).") in text
  assert ("L2 at the grid's edge (converged): rotation-vgg19-k1-e2-s0 "
          "pre_logits @0.01 subset 2 (L2 100, 5 iterations, top-1 63.5).\n"
          ) in text


def test_the_pilots_cells_are_rungs_of_the_converged_ladder():
  # No converged exemplar cell has run yet: the pilot's exemplar cell is the
  # converged grid's (adopted by name) and stands in its view already.
  pilot = _cell("exemplar", "revnet50", layers={"pre_logits": 0.8}, epochs=2,
                budget="pilot", pretext=0.9)
  converged = _cell("rotation", "vgg19", layers={"pre_logits": 0.7}, epochs=4,
                    budget="converged", pretext=0.9)
  views = budget_views([pilot, converged])
  assert [c["cell"] for c in views["converged"]] == [
      "exemplar-revnet50-k1-e2-s0", "rotation-vgg19-k1-e4-s0"]
  assert list(views) == ["converged"]


def test_the_short_budget_rerun_stands_beside_the_first_edition():
  first = _cell("rotation", "vgg19", layers={"pre_logits": 0.55})
  rerun = {**_cell("rotation", "vgg19", layers={"pre_logits": 0.62}),
           "budget": "short"}  # the runner labels today's short cells
  old = _cell("random_init", "vgg19", layers={"pre_logits": 0.1})
  new = {**_cell("random_init", "vgg19", layers={"pre_logits": 0.68}),
         "budget": "converged"}
  converged = _cell("rotation", "vgg19", layers={"pre_logits": 0.70}, epochs=2,
                    budget="converged", pretext=0.9)
  views = budget_views([converged, rerun, first, new, old])
  assert list(views) == ["first edition", "short", "converged"]
  top1 = {b: Results(v).top1("rotation", "vgg19") for b, v in views.items()}
  assert top1 == {"first edition": {0: 0.55}, "short": {0: 0.62},
                  "converged": {0: 0.70}}
  untrained = {b: [c["rows"][0]["top1"] for c in v if c["task"] == "random_init"]
               for b, v in views.items()}
  assert untrained == {"first edition": [0.1], "short": [0.68],
                       "converged": [0.68]}
  # A plan counts the cells of today's code only.
  assert report.coverage([first], ["rotation-vgg19-k1-s0"]) == (
      "Grid: 0 of 1 cells done; not yet run: `rotation-vgg19-k1-s0`.")
  assert report.coverage([first, rerun], ["rotation-vgg19-k1-s0"]) == (
      "Grid: all 1 cells done.")


def test_the_report_lists_cells_still_rising_at_the_end_of_their_budget():
  # _cell's curve is pretext - 0.1 / epoch at epochs 1..E: over the last 25%
  # a 2-epoch run gains (0.1 + 0.05) / 2 - 0.05 = 2.5 points (linearly
  # interpolated at epoch 1.5), a 4-epoch run 0.1 / 3 - 0.1 / 4 = 0.83.
  rising = _cell("rotation", "vgg19", layers={"pre_logits": 0.7}, epochs=2,
                 budget="converged", pretext=0.9)
  flat = _cell("rotation", "revnet50", layers={"pre_logits": 0.7}, epochs=4,
               budget="converged", pretext=0.9)
  assert tables.still_rising([rising, flat, _cell("rotation", "vgg19")]) == [
      "`rotation-vgg19-k1-e2-s0` (+2.50 pts)"]
  # With its schedule: +5 points from epoch 1 (the first point after a decay
  # at 0.8) to 2.
  assert tables.still_rising([{**rising, "decay_epochs": [0.5, 0.8]}]) == [
      "`rotation-vgg19-k1-e2-s0` (+2.50 pts; +5.00 after the last decay)"]


def test_the_report_says_which_curves_read_the_test_split():
  def curve_on(split, cell):
    cell["pretext_curve"] = [{**p, "split": split} for p in cell["pretext_curve"]]
    return cell
  rotation = curve_on("val", _cell("rotation", "revnet50", epochs=2,
                                   budget="converged", pretext=0.9))
  supervised = curve_on("test", _cell("supervised", "revnet50", epochs=2,
                                      budget="converged", pretext=0.9))
  assert report.curve_split_note([rotation]) == ""
  assert report.curve_split_note([rotation, supervised]) == (
      " One decision reads the test split: supervised trains on trainval (as "
      "the release), so its held-out pretext curve, which decides only whether "
      "a model trains a longer rung, is measured on test (the other tasks' "
      "curves on val: rotation).")


def test_the_report_names_the_cells_that_cut_other_patches():
  cells = [dict(_cell("relative_patch_location", a, epochs=2,
                      budget="converged", pretext=0.9), patch_size=size)
           for a, size in (("resnet50_v1", 16), ("revnet50", 16), ("vgg19", 32))]
  rotation = _cell("rotation", "vgg19", epochs=2, budget="converged",
                   pretext=0.9)
  assert report.patch_size_note(cells[:2] + [rotation]) == ""
  assert report.patch_size_note(cells + [rotation]) == (
      " The patch tasks cut 16x16-pixel patches, except "
      "`relative_patch_location-vgg19-k1-e2-s0` (32x32) (see the notes).")


def test_cell_train_params_bind_the_cells_they_match(tmp_path, monkeypatch):
  config = _tiny_study(tmp_path)
  with open(config, "a") as f:
    f.write('study.train_configs = {"rotation": "study/train/rotation.gin", '
            '"relative_patch_location": "study/train/relpatch.gin"}\n'
            'block.tasks = ["rotation", "relative_patch_location"]\n'
            'study.cell_train_params = {"*-revnet50-*": ['
            '"rotation.image_size = 8", "relative_patch_location.patch_size = 32"]}\n'
            'study.checkpoint_steps = {}\n')
  gin_config.parse_gin([config], [])
  study = grid.study()
  bindings = {c.name: [b for b in cells_lib.train_command(study, c, "W")
                       if "image_size" in b or "patch_size" in b]
              for c in study.cells}
  # After the study's own bindings, so a cell's override wins.
  assert bindings == {
      "rotation-resnet50_v2-k1-s0": ["rotation.image_size = 16"],
      "rotation-revnet50-k1-s0": ["rotation.image_size = 16",
                                  "rotation.image_size = 8",
                                  "relative_patch_location.patch_size = 32"],
      "relative_patch_location-resnet50_v2-k1-s0": ["rotation.image_size = 16"],
      "relative_patch_location-revnet50-k1-s0": [
          "rotation.image_size = 16", "rotation.image_size = 8",
          "relative_patch_location.patch_size = 32"]}
  fake = _FakeCommands()
  monkeypatch.setattr(cells_lib.subprocess, "run", fake)
  gin.clear_config()
  assert runner.main(_args(config, tmp_path, "--only", "*-revnet50-*")) == 0
  result = lambda name: json.load(open(tmp_path / "results" / f"{name}.json"))
  assert result("relative_patch_location-revnet50-k1-s0")["patch_size"] == 32
  assert result("rotation-revnet50-k1-s0")["patch_size"] is None


def test_vgg19s_patch_cells_cut_patches_its_five_pools_can_take():
  for config in ("study/fashion_mnist_converged.gin", "study/fashion_mnist_short.gin"):
    gin.clear_config()
    grid.parse_config([config])
    study = grid.study()
    for cell in study.cells:
      if cell.task in grid.PATCH_TASKS:
        text = "\n".join([open(study.train_configs[cell.task]).read()]
                         + study.train_params_for(cell))
        size = [int(v) for v in re.findall(rf"^{cell.task}\.patch_size = (\d+)",
                                           text, re.MULTILINE)][-1]
        # Five 2x2 VALID max-pools leave a 1x1 map of 32 pixels.
        assert size == (32 if cell.architecture == "vgg19" else 16), cell.name


def _flat_curve(cell):
  """The cell with a pretext curve that gained nothing: converged."""
  cell["pretext_curve"] = [{**p, "accuracy": 0.5} for p in cell["pretext_curve"]]
  return cell


def test_each_model_is_reported_at_the_smallest_rung_that_converged():
  # _cell's curves: 2 epochs rise 2.5 points over the last 25%, 4 epochs 0.83,
  # 8 epochs 0.42 (see the test above).
  vgg = {e: _cell("rotation", "vgg19", layers={"pre_logits": top1}, epochs=e,
                  budget="converged", pretext=0.9)
         for e, top1 in ((2, 0.70), (4, 0.74), (8, 0.76))}
  rev_2 = _flat_curve(_cell("rotation", "revnet50", layers={"pre_logits": 0.80},
                            epochs=2, budget="converged", pretext=0.9))
  rev_4 = _cell("rotation", "revnet50", layers={"pre_logits": 0.81}, epochs=4,
                budget="converged", pretext=0.9)
  rising = {e: _cell("rotation", "resnet50_v1", layers={"pre_logits": top1},
                     epochs=e, budget="converged", pretext=0.9)
            for e, top1 in ((1, 0.60), (2, 0.62))}
  # Converged by the rule at 2 epochs, still rising at 4 (+2 points from
  # epoch 3 to 4): 2 epochs were not the model's convergence, so its largest
  # rung is reported.
  relapse = [_flat_curve(_cell("supervised", "revnet50", epochs=e,
                               layers={"pre_logits": 0.8}, budget="converged",
                               pretext=0.9)) for e in (2, 4)]
  relapse[1]["pretext_curve"] = [{"step": e, "epoch": e, "accuracy": 0.5 + 0.02 * e}
                                 for e in range(1, 5)]
  assert [c["cell"] for c in resolve_rungs(relapse)[0]] == [
      "supervised-revnet50-k1-e4-s0"]
  assert [c["cell"] for c in resolve_rungs(relapse[:1])[0]] == [
      "supervised-revnet50-k1-e2-s0"]
  cells = list(vgg.values()) + [rev_4, rev_2] + list(rising.values())
  kept, superseded = resolve_rungs(cells)
  assert [c["cell"] for c in kept] == [
      "rotation-vgg19-k1-e4-s0", "rotation-revnet50-k1-e2-s0",
      "rotation-resnet50_v1-k1-e2-s0"]
  assert len(superseded) == 4
  # The tables see one rung per model: its top-1, not a mean over rungs.
  converged = Results(budget_views(cells)["converged"])
  assert converged.top1("rotation", "vgg19") == {0: 0.74}
  assert converged.top1("rotation", "revnet50") == {0: 0.80}
  assert converged.top1("rotation", "resnet50_v1") == {0: 0.62}
  notes = tables.rung_notes(cells)
  assert len(notes) == 2
  assert ("`rotation-vgg19-k1-e2-s0` (+2.50 pts): reported at 4 epochs; "
          "`rotation-vgg19-k1-e8-s0` (+0.42 pts): reported at 4 epochs") in notes[0]
  assert "`rotation-revnet50-k1-e4-s0` (+0.83 pts): reported at 2 epochs" in notes[0]
  # Still rising where it is reported (a 1-epoch curve has one point: 0 gain
  # cannot be read, so its e1 rung does not converge either).
  assert notes[1].endswith(": `rotation-resnet50_v1-k1-e2-s0` (+2.50 pts).")


def test_a_models_seeds_share_the_budget_at_which_every_seed_converged():
  # Seed 0 converged at 2 epochs (flat) and stayed converged at 4; seed 1
  # rose at 2 (+2.50) and converged at 4 (+0.83); seed 2 rose at 2 and has
  # no 4-epoch rung yet.
  cells = [_flat_curve(_cell("rotation", "revnet50", seed=0, epochs=2,
                             layers={"pre_logits": 0.80}, budget="converged",
                             pretext=0.9)),
           _flat_curve(_cell("rotation", "revnet50", seed=0, epochs=4,
                             layers={"pre_logits": 0.82}, budget="pilot",
                             pretext=0.9))]
  cells += [_cell("rotation", "revnet50", seed=s, epochs=e,
                  layers={"pre_logits": 0.79 + 0.01 * s + 0.02 * (e == 4)},
                  budget="converged", pretext=0.9)
            for s, e in ((1, 2), (2, 2), (1, 4))]
  # Seed 2 has not converged yet: the budget is the largest of the seeds'.
  assert model_budgets(cells) == {("rotation", "revnet50", 1): (4, (2,))}
  kept, superseded = resolve_rungs(cells)
  assert [c["cell"] for c in kept] == ["rotation-revnet50-k1-e4-s0",
                                       "rotation-revnet50-k1-e4-s1"]
  # The seeds' spread is taken at one budget: seed 0's 2-epoch cell, which
  # converged by itself, is not mixed with seed 1's 4-epoch one.
  assert Results(budget_views(cells)["converged"]).top1(
      "rotation", "revnet50") == {0: 0.82, 1: pytest.approx(0.82)}
  notes = tables.rung_notes(cells)
  assert ("`rotation-revnet50-k1-e2-s2` (+2.50 pts): reported at 4 epochs, "
          "where this seed is not trained yet") in notes[0]
  assert "`rotation-revnet50-k1-e2-s0` (+0.00 pts): reported at 4 epochs;" in notes[0]
  # Every seed of the model shows its ladder; the picked budget is shared.
  assert [row[2] + ": " + row[4] for row in tables.pilot_table(cells)[1:]] == [
      f"{seed}: 4, not converged (seed 2)" for seed in range(3)]
  # Without seed 1's 4-epoch rung, seeds 1 and 2 have not converged: the
  # model is reported at its largest rung, 2 epochs, and the table says so.
  assert model_budgets(cells[:4]) == {("rotation", "revnet50", 1): (2, (1, 2))}
  assert tables.pilot_table(cells[:4])[1][4] == "2, not converged (seed 1, 2)"


def test_pretext_curves_fade_the_rungs_the_tables_do_not_report(tmp_path,
                                                                 monkeypatch):
  # VGG19-BN converged at 4 epochs (+0.83), so its rising 2-epoch run is
  # superseded: drawn faint and without a legend entry.
  cells = [_cell("rotation", "vgg19", layers={"pre_logits": 0.7}, epochs=e,
                 budget="converged", pretext=0.9) for e in (2, 4)]
  drawn = []
  original = matplotlib.axes.Axes.plot
  def plot(ax, x, y, **kwargs):
    drawn.append((len(x), kwargs.get("alpha"), kwargs.get("label")))
    return original(ax, x, y, **kwargs)
  monkeypatch.setattr(matplotlib.axes.Axes, "plot", plot)
  assert plots.pretext_curves(Results(cells), str(tmp_path / "curves.png"))
  assert sorted(drawn) == [(2, 0.25, None), (4, None, "VGG19-BN k=1")]


def test_budget_coverage_counts_each_budgets_trained_cells_of_todays_code():
  planned = [grid.Cell("rotation", "vgg19", 1, 0, (), epochs=4, budget="converged"),
             grid.Cell("jigsaw", "vgg19", 1, 0, (), epochs=4, budget="converged"),
             grid.Cell("random_init", "vgg19", 1, 0, ()),
             grid.Cell("rotation", "vgg19", 1, 0, ())]
  cells = [{"cell": "rotation-vgg19-k1-e4-s0", "budget": "converged"},
           {"cell": "random_init-vgg19-k1-s0", "budget": "short"},
           {"cell": "rotation-vgg19-k1-s0", "budget": grid.FIRST_EDITION}]
  runs = report.budget_coverage(cells, {"c.gin": {c.name: c for c in planned}})
  assert runs == {"converged": (1, 2), "short": (0, 1)}
  header = tables.verdict_table({"short": [], "converged": []},
                                {**runs, "short": (1, 1)})[0]
  assert header == ["finding", "short", "converged (1 of 2 cells run)"]
