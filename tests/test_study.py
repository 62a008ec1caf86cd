"""The study runner and report: a real one-cell run by the command lines on
random data, resume and states with a stubbed command runner, and the report
from hand-made cell results."""
import inspect
import json
import os
import subprocess

import gin
import numpy as np
import pytest
import tensorflow as tf

from tfrevisit import cli
from tfrevisit import gin_config
from tfrevisit import train
from tfrevisit.study import __main__ as runner
from tfrevisit.study import cells as cells_lib
from tfrevisit.study import findings
from tfrevisit.study import grid
from tfrevisit.study import report
from tfrevisit.study.results import Results

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


def _tiny_study(tmp_path, architectures=("resnet50_v2", "revnet50")):
  """A 2-cell rotation study on random 32x32 images; returns its gin path."""
  eval_dir = tmp_path / "eval_configs"
  eval_dir.mkdir()
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
      "study.blocks = [@block()]\n"
      'block.tasks = ["rotation"]\n'
      f"block.architectures = {list(architectures)!r}\n")
  return str(config)


def _args(config, tmp_path, *extra):
  return ["--gin", config, "--workdir", str(tmp_path / "work"),
          "--results_dir", str(tmp_path / "results"), *extra]


def test_runner_trains_and_evaluates_one_cell_by_the_command_lines(tmp_path, capsys):
  config = _tiny_study(tmp_path)
  assert runner.main(_args(config, tmp_path, "--only", "*resnet50_v2*")) == 0
  name = "rotation-resnet50_v2-k1-s0"
  result = json.load(open(tmp_path / "results" / f"{name}.json"))
  assert result["global_step"] == 2 and 0 <= result["pretext_accuracy"] <= 1
  assert result["batch_size"] == 8 and result["train_wall_time_s"] > 0
  assert {(r["eval"], r["end_point"], r["probe"]) for r in result["rows"]} == {
      ("linear", "block4", "linear"), ("linear", "pre_logits", "linear")}
  assert not os.path.exists(tmp_path / "work" / name / "eval" / "features")
  gin.clear_config()
  runner.main(_args(config, tmp_path, "--list"))
  listed = capsys.readouterr().out
  assert f"{name} " in listed and "done" in listed
  assert "rotation-revnet50-k1-s0" in listed and "todo" in listed


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
      self._train(workdir)
    else:
      with open(os.path.join(workdir, "results.json"), "w") as f:
        json.dump([{"end_point": "pre_logits", "probe": "linear",
                    "label_fraction": 1.0, "top1": 0.5}], f)

  @staticmethod
  def _train(workdir):
    assets = os.path.join(workdir, "export", "latest", "assets")
    os.makedirs(assets)
    with open(os.path.join(assets, "tfrevisit.json"), "w") as f:
      json.dump({"global_step": 7, "gin_config": "train.batch_size = 8\n"}, f)
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
  # Measured 30 CPU and 20 wall minutes against an estimate of 10: the
  # remaining estimate of 20 becomes 60 CPU and 40 wall minutes.
  assert "remaining ~1.0 CPU h, ~0.7 h wall" in text
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


def _hand_made_cells():
  """rotation on two architectures (ResNet50 v2 with 2 seeds) and one VGG
  exemplar cell; per-layer linear top-1, MLP and an SGD curve."""
  def cell(task, architecture, seed, layers, pretext, mlp=None, k=1, sgd=None):
    rows = [{"eval": "linear", "end_point": e, "probe": "linear",
             "label_fraction": 1.0, "top1": v} for e, v in layers.items()]
    if mlp is not None:
      rows.append({"eval": "mlp", "end_point": "pre_logits", "probe": "mlp",
                   "label_fraction": 1.0, "top1": mlp})
    if sgd is not None:
      rows.append({"eval": "linear_sgd", "end_point": "pre_logits",
                   "probe": "linear_sgd", "label_fraction": 1.0, "top1": sgd[-1],
                   "test_top1_per_epoch": sgd})
    return {"cell": f"{task}-{architecture}-k{k}-s{seed}", "task": task,
            "architecture": architecture, "filters_factor": k, "seed": seed,
            "pretext_accuracy": pretext, "batch_size": 32, "num_crops": 8,
            "global_step": 100, "train_wall_time_s": 600.0,
            "eval_wall_time_s": 300.0, "rows": rows}
  return [
      cell("rotation", "resnet50_v2", 0, {"block3": 0.80, "pre_logits": 0.82},
           0.9, mlp=0.84, sgd=list(np.linspace(0.5, 0.80, 20))),
      cell("rotation", "resnet50_v2", 1, {"block3": 0.78, "pre_logits": 0.84},
           0.92, mlp=0.86),
      cell("rotation", "vgg19", 0, {"block3": 0.85, "pre_logits": 0.70}, 0.95,
           mlp=0.72),
      cell("rotation", "resnet50_v2", 0, {"block3": 0.83, "pre_logits": 0.88},
           0.93, k=4),
      cell("exemplar", "vgg19", 0, {"block3": 0.75, "pre_logits": 0.60}, 0.4),
  ]


def test_report_table_and_evidence_from_hand_made_results():
  untrained = _hand_made_cells()[-1] | {
      "cell": "random_init-vgg19-k1-s0", "task": "random_init",
      "pretext_accuracy": None, "rows": [
          {"eval": "linear", "end_point": e, "probe": "linear",
           "label_fraction": 1.0, "top1": v}
          for e, v in {"block3": 0.80, "pre_logits": 0.60}.items()]}
  results = Results(_hand_made_cells() + [untrained])
  table = report.table1(results)
  assert table[0] == ["task", "ResNet50 v2", "VGG19-BN"]
  # ResNet50 v2: pre_logits 83.0 ± 1.4 over 2 seeds is also its best layer.
  assert table[1] == ["rotation", "83.0 ± 1.4, n=2 (pre_logits) / 83.0 ± 1.4, n=2",
                      "85.0 (block3) / 70.0"]
  assert table[2] == ["exemplar", "-", "75.0 (block3) / 60.0"]
  assert table[3] == ["random_init", "-", "80.0 (block3) / 60.0"]
  # Only VGG has an untrained cell: rotation adds 10 pp at pre_logits and
  # 5 at block3; exemplar nothing at pre_logits and -5 at block3.
  assert report.gain_table(results) == [
      ["task", "VGG19-BN"], ["rotation", "+10.0 / +10.0 (pre_logits)"],
      ["exemplar", "+0.0 / +0.0 (pre_logits)"]]
  assert results.seed_spread() == pytest.approx(np.std([0.82, 0.84], ddof=1))
  verdicts = {f.title[:3]: f for f in findings.all_findings(results)}
  assert verdicts["(2)"].verdict == findings.HOLDS  # VGG drops 15 pp, ResNet 0.
  assert all("random_init" not in f.evidence for f in verdicts.values())
  assert "pre_logits - best (block3) = -15.00 pp" in verdicts["(2)"].evidence
  assert verdicts["(3)"].verdict == findings.HOLDS  # k=4 - k=1 = +5 pp > 2s.
  # SGD gets within 2s = 2.83 pp of L-BFGS after 20 epochs: neither rule.
  assert verdicts["(6)"].verdict == findings.INCONCLUSIVE


def test_report_writes_csv_plots_and_markdown(tmp_path):
  (tmp_path / "study").mkdir()
  (tmp_path / "study" / "notes.md").write_text("Trained at commit abc1234.\n")
  written = report.write_report(_hand_made_cells(), str(tmp_path))
  for name in ("layers.png", "width.png", "pretext_vs_linear.png",
               "linear_vs_mlp.png", "sgd_convergence.png"):
    assert os.path.getsize(written[name]) > 1000
  lines = open(written["results.csv"]).read().splitlines()
  assert len(lines) == 1 + 14 and "test_top1_per_epoch" not in lines[0]
  assert lines[0].startswith("cell,task,architecture,filters_factor,seed,"
                             "pretext_accuracy")
  text = open(written["study.md"]).read()
  assert "![layers.png](study/layers.png)" in text
  assert text.count("Verdict: **") == 6 and "5 cells, 1.2 hours of wall time" in text
  # s = std(82, 84) = 1.41 pp over the two seeds of rotation on ResNet50 v2.
  assert "exceeds 2s (2s = 2.83 pp)" in text
  assert text.index("Trained at commit abc1234.") < text.index("## Plots")


def test_report_replaces_only_the_readme_summary_block(tmp_path):
  readme = tmp_path / "README.md"
  readme.write_text(f"# Title\n\n{report.README_BEGIN}\nold table\n"
                    f"{report.README_END}\n\n## Next\n")
  report.update_readme(str(readme), Results(_hand_made_cells()))
  text = readme.read_text()
  assert text.startswith(f"# Title\n\n{report.README_BEGIN}\n| task |")
  assert text.endswith(f"{report.README_END}\n\n## Next\n")
  assert "old table" not in text and text.count("**") == 2 * 6
  assert "| rotation | 83.0 ± 1.4, n=2 (pre_logits) / 83.0 ± 1.4, n=2 |" in text
  readme.write_text("# No block\n")
  with pytest.raises(cli.UserError, match="no study summary block"):
    report.update_readme(str(readme), Results(_hand_made_cells()))


def test_report_names_the_grid_cells_not_yet_run(tmp_path):
  results = Results(_hand_made_cells())
  planned = ["rotation-resnet50_v2-k1-s0", "jigsaw-vgg19-k1-s0",
             "rotation-vgg19-k1-s0", "supervised-vgg19-k1-s0"]
  assert report.coverage(results, planned) == (
      "Grid: 2 of 4 cells done; not yet run: `jigsaw-vgg19-k1-s0`, "
      "`supervised-vgg19-k1-s0`.")
  assert report.coverage(results, planned[:1]) == "Grid: all 1 cells done."
  assert report.coverage(results, None) == ""
  # Through the command line, the plan is the study config's grid.
  results_dir = tmp_path / "cells"
  results_dir.mkdir()
  for cell in _hand_made_cells()[:1]:
    (results_dir / f"{cell['cell']}.json").write_text(json.dumps(cell))
  readme = tmp_path / "README.md"
  readme.write_text(f"{report.README_BEGIN}\n{report.README_END}\n")
  report.main(["--results_dir", str(results_dir), "--out_dir", str(tmp_path),
               "--readme", str(readme), "--gin", _tiny_study(tmp_path)])
  line = ("Grid: 1 of 2 cells done; not yet run: `rotation-revnet50-k1-s0`.")
  assert line in (tmp_path / "study.md").read_text()
  assert line in readme.read_text()
