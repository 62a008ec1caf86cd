"""The one-command device check: its no-GPU exit, its bindings and its CPU
smoke run."""
import os
import subprocess
import sys

import gin
import numpy as np
import pytest
import tensorflow as tf

from tfrevisit import gin_config
from tfrevisit import train  # pylint: disable=unused-import (registers train.*)
from tfrevisit.bench import device_check

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HAS_GPU = bool(tf.config.list_physical_devices("GPU"))


@pytest.mark.skipif(HAS_GPU, reason="a GPU is visible")
def test_without_a_gpu_says_so_and_exits_with_its_own_status(capsys):
  assert device_check.main([]) == device_check.NO_GPU_STATUS == 3
  out = capsys.readouterr().out
  assert out.startswith("no GPU visible")
  assert "--cpu_smoke" in out


@pytest.mark.slow  # A fresh TensorFlow import: 10-30 s on a loaded CPU.
def test_command_line_exit_status_without_a_gpu():
  env = dict(os.environ, CUDA_VISIBLE_DEVICES="", PYTHONPATH=REPO)
  result = subprocess.run(
      [sys.executable, "-m", "tfrevisit.bench.device_check"], cwd=REPO,
      env=env, capture_output=True, text=True, timeout=300, check=False)
  assert result.returncode == device_check.NO_GPU_STATUS, result.stderr[-2000:]
  assert "no GPU visible" in result.stdout


@pytest.mark.parametrize("check", [*device_check.CONFIGS, "anchor"])
@pytest.mark.parametrize("smoke", [False, True])
def test_gpu_and_smoke_runs_have_the_same_training_options(check, smoke):
  bindings = device_check._config_bindings(check, steps=30, smoke=smoke)  # pylint: disable=protected-access
  config = "rotation" if check == "anchor" else check
  gin_config.parse_gin(
      [os.path.join(gin_config.CONFIG_DIR, f"{config}.gin")], bindings)
  assert gin.query_parameter("train.max_steps") == 30
  assert gin.query_parameter("train.log_every_steps") == 15
  assert gin.query_parameter("train.steps_per_loop") == 5
  assert gin.query_parameter("train.mixed_precision") == "mixed_float16"
  assert gin.query_parameter("train.jit_compile") is True
  assert gin.query_parameter("backbone.filters_factor") == (
      1 if smoke else 4 if check == "anchor" else
      gin_config.configured_backbone().filters_factor)
  if check == "anchor" and not smoke:  # NVIDIA's batch: 256 views of 224.
    assert gin.query_parameter("train.batch_size") * 4 == 256
    assert gin.query_parameter("rotation.image_size") == 224


def test_short_runs_call_the_step_once_per_log_interval():
  bindings = device_check._config_bindings("rotation", steps=4, smoke=True)  # pylint: disable=protected-access
  assert "train.steps_per_loop = 2" in bindings
  assert "train.log_every_steps = 2" in bindings


def test_checks_after_the_time_budget_are_skipped(tmp_path, capsys):
  status = device_check.main(["--cpu_smoke", "--time_budget_s", "0",
                              "--workdir", str(tmp_path)])
  lines = capsys.readouterr().out.splitlines()
  assert status == 0
  assert [line.split()[:2] for line in lines[3:-1]] == [
      [check, "skip"] for check in device_check.CHECKS]
  assert not os.listdir(tmp_path)


def test_a_worker_past_the_budget_is_stopped():
  result = device_check._worker(["--worker", "nccl", "--cpu_smoke"], timeout=1)  # pylint: disable=protected-access
  assert result["error"].startswith("stopped: time budget spent")


def test_summary_table_marks_failures():
  rows = [{"check": "rotation", "ok": True, "images_per_sec": 812.25,
           "peak_mib": 30000.0, "loss": 1.3862, "note": "XLA on"},
          {"check": "nccl", "ok": False, "note": "boom"}]
  lines = device_check.format_table(rows).splitlines()
  assert lines[1].split()[:5] == ["rotation", "ok", "812.2", "30000", "1.3862"]
  assert lines[2].split() == ["nccl", "FAIL", "-", "-", "-", "boom"]


# The rotation check's worker in this process, on the suite's two logical CPUs
# and the one-unit-per-stage RevNet50; the full-depth run through `main()`,
# one fresh process per check, is `test_cpu_smoke_runs_every_check`.
@pytest.mark.usefixtures("shallow_backbones")
def test_cpu_smoke_trains_with_the_gpu_options(tmp_path):
  result = device_check.run_config("rotation", str(tmp_path), steps=4,
                                   smoke=True, export=True)
  row = device_check.format_table(
      [device_check._config_row("rotation", result)]).splitlines()[1]
  assert row.split()[:2] == ["rotation", "ok"], row
  for option in ("revnet50 k=1 reversible", "XLA", "mixed_float16 (loss scale",
                 "2 steps/call", f"{device_check.SMOKE_REPLICAS} replica(s)"):
    assert option in row, row
  assert tf.train.latest_checkpoint(
      str(tmp_path / "checkpoints")).endswith("ckpt-4")
  with np.load(tmp_path / "eval.npz") as evaluated:
    assert evaluated["images"].shape[0] == evaluated["outputs"].shape[0] > 0
    assert np.isfinite(evaluated["outputs"]).all()


# Several fresh processes at full depth: 10-20 min on a loaded 2-core CPU.
@pytest.mark.slow
def test_cpu_smoke_runs_every_check(tmp_path, capsys, monkeypatch):
  monkeypatch.setenv("PYTHONPATH", REPO)
  checks = ["rotation", "anchor", "mirrored", "export", "revnet_memory"]
  status = device_check.main(["--cpu_smoke", "--checks", *checks,
                              "--steps", "2", "--time_budget_s", "3600",
                              "--workdir", str(tmp_path)])
  out = capsys.readouterr().out
  assert status == 0, out
  names = [line.split()[0] for line in out.splitlines()[2:-1]]
  assert names == ["gpu", "rotation", "anchor", "mirrored", "export",
                   "revnet"], out
  assert "FAIL" not in out and "skip" not in out
