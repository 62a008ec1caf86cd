"""The one-command device check: its no-GPU exit, its bindings and its CPU
smoke run."""
import inspect
import os
import subprocess
import sys

import gin
import pytest
import tensorflow as tf

from tfrevisit import gin_config
from tfrevisit import train
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


@pytest.mark.parametrize("config", device_check.CONFIGS)
@pytest.mark.parametrize("smoke", [False, True])
def test_config_bindings_parse_with_the_paper_config(config, smoke):
  bindings = device_check._config_bindings(config, steps=30, smoke=smoke)  # pylint: disable=protected-access
  gin_config.parse_gin(
      [os.path.join(gin_config.CONFIG_DIR, f"{config}.gin")], bindings)
  assert gin.query_parameter("train.max_steps") == 30
  assert gin.query_parameter("train.log_every_steps") == 15
  expected = "mixed_bfloat16" if smoke else "mixed_float16"
  assert gin.query_parameter("train.mixed_precision") == expected
  if smoke:
    assert gin.query_parameter("backbone.filters_factor") == 1
  has_jit = "jit_compile" in inspect.signature(train.train).parameters
  assert any("jit_compile" in b for b in bindings) == (has_jit and not smoke)


def test_summary_table_marks_failures():
  rows = [{"check": "rotation", "ok": True, "images_per_sec": 812.25,
           "peak_mib": 30000.0, "loss": 1.3862, "note": "XLA on"},
          {"check": "nccl", "ok": False, "note": "boom"}]
  lines = device_check.format_table(rows).splitlines()
  assert lines[1].split()[:5] == ["rotation", "ok", "812.2", "30000", "1.3862"]
  assert lines[2].split() == ["nccl", "FAIL", "-", "-", "-", "boom"]


@pytest.mark.slow  # Several fresh processes: 3-8 min on a loaded 2-core CPU.
def test_cpu_smoke_runs_every_check(tmp_path, capsys, monkeypatch):
  monkeypatch.setenv("PYTHONPATH", REPO)
  status = device_check.main(["--cpu_smoke", "--configs", "rotation",
                              "--steps", "2", "--workdir", str(tmp_path)])
  out = capsys.readouterr().out
  assert status == 0, out
  checks = [line.split()[0] for line in out.splitlines()[2:-1]]
  assert checks == ["gpu", "rotation", "revnet", "mirrored", "export"], out
  assert "FAIL" not in out
