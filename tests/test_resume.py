"""Exact resume and preemption of the trainer.

A run interrupted anywhere and resumed must end with the weights of an
uninterrupted run; the reference is that run itself (same seed, same process).
"""
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time

import gin
import keras
import numpy as np
import pytest
import tensorflow as tf

from tfrevisit import data
from tfrevisit import distribute
from tfrevisit import gin_config
from tfrevisit import train
from tfrevisit.data import sources
from tfrevisit.training import loop

# One unit per stage: these tests exercise the loop, files and probes, not depth.
pytestmark = pytest.mark.usefixtures("shallow_backbones")

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# A tiny rotation run: 64 random images, batch 8 (8 steps per epoch), so that
# 12 steps cross an epoch boundary.
TINY = [
    'train.task = "rotation"', "train.batch_size = 8", "train.epochs = 2",
    "train.max_steps = 12", "train.warmup_epochs = 0", "train.decay_epochs = ()",
    "train.lr = 0.05", "train.log_every_steps = 1",
    "train.checkpoint_every_steps = 4", "train.export = False",
    'source.name = "random"', "source.num_examples = 64",
    "source.image_shape = (24, 24, 3)",
    'backbone.name = "resnet50_v2"', "backbone.filters_factor = 1",
    "rotation.image_size = 16",
]


class _Killed(Exception):
  """Stands for SIGKILL: nothing is saved."""


def _weights(workdir):
  """{name: value} of the newest checkpoint's encoder and head variables."""
  path = tf.train.latest_checkpoint(os.path.join(workdir, "checkpoints"))
  reader = tf.train.load_checkpoint(path)
  return path, {name: reader.get_tensor(name)
                for name, _ in tf.train.list_variables(path)
                if name.startswith(("encoder/", "head/")) and "OPTIMIZER" not in name}


def _train(workdir, bindings=(), kill_at=None, monkeypatch=None):
  """Runs `train.train_from_gin` on TINY + `bindings`; `kill_at`: raise after
  that many training calls (as if the process had been killed: no
  checkpoint)."""
  gin.clear_config()
  gin_config.parse_gin([], TINY + list(bindings))
  if kill_at is not None:
    original = loop.make_train_step

    def make_killable(*args, **kwargs):
      step_fn, calls = original(*args, **kwargs), []

      def killable(iterator, num_steps=1):
        if len(calls) == kill_at:
          raise _Killed()
        calls.append(num_steps)
        return step_fn(iterator, num_steps)
      return killable
    monkeypatch.setattr(loop, "make_train_step", make_killable)
  try:
    return train.train_from_gin(str(workdir))
  except _Killed:
    return None
  finally:
    if kill_at is not None:
      monkeypatch.setattr(loop, "make_train_step", original)


def _max_relative_difference(a, b):
  assert a.keys() == b.keys()
  return max(float(np.linalg.norm(a[k] - b[k]) / max(np.linalg.norm(a[k]), 1e-12))
             for k in a)


# 4 short runs each (~2-3 min): slow. The default suite checks exact resume at
# the input (`test_batches_after_a_skip_...`, `test_sequential_stream_...`).
@pytest.mark.slow
@pytest.mark.parametrize("replicas", [1, 2])
def test_resume_after_a_kill_matches_the_uninterrupted_run(
    tmp_path, monkeypatch, replicas, request):
  if replicas == 2:
    strategy = request.getfixturevalue("two_cpu_strategy")
    monkeypatch.setattr(distribute, "make_strategy", lambda *a, **k: strategy)
  _train(tmp_path / "whole")
  path, whole = _weights(tmp_path / "whole")
  assert path.endswith("ckpt-12")

  # Killed at a random step after the first checkpoint (4): the rerun resumes
  # from step 4 or 8 and crosses the epoch boundary (step 8).
  kill_at = random.Random(replicas).randrange(5, 12)
  _train(tmp_path / "killed", kill_at=kill_at, monkeypatch=monkeypatch)
  assert _weights(tmp_path / "killed")[0].endswith(f"ckpt-{kill_at // 4 * 4}")
  shutil.copytree(tmp_path / "killed", tmp_path / "restarted")
  _train(tmp_path / "killed")
  path, resumed = _weights(tmp_path / "killed")
  assert path.endswith("ckpt-12")
  assert _max_relative_difference(whole, resumed) <= 1e-5

  # The control: a resumed input pipeline that starts over (as before exact
  # resume) ends elsewhere, so the comparison above can fail.
  original = data.make_dataset
  monkeypatch.setattr(data, "make_dataset", lambda *args, start_batch=0, **kwargs:
                      original(*args, **kwargs))
  _train(tmp_path / "restarted")
  assert _max_relative_difference(whole, _weights(tmp_path / "restarted")[1]) > 1e-3


def test_batches_after_a_skip_are_the_batches_of_an_uninterrupted_stream():
  source = data.get_source("random", image_shape=(8, 8, 3), num_examples=10)
  spec = "crop(6)|flip_lr"
  context = tf.distribute.InputContext(num_input_pipelines=2, input_pipeline_id=1,
                                       num_replicas_in_sync=2)

  def batches(start_batch, count):
    ds = data.make_dataset(source, "train", spec, 2, training=True, seed=3,
                           input_context=context, start_batch=start_batch)
    return [b["image"] for b in ds.take(count).as_numpy_iterator()]

  # Pipeline 1's shard has 5 examples: 7 batches of 2 cover ~3 epochs.
  whole = batches(0, 7)
  for start in (1, 2, 5):
    for a, b in zip(whole[start:], batches(start, 7 - start)):
      np.testing.assert_array_equal(a, b)
  epochs = np.concatenate(whole)[:10].reshape(2, 5, -1)
  # Each epoch holds the shard's 5 examples in a new order.
  assert [bytes(x) for x in epochs[0]] != [bytes(x) for x in epochs[1]]


def _command(workdir, *bindings):
  args = [sys.executable, "-m", "tfrevisit.train", "--workdir", str(workdir)]
  for binding in TINY + list(bindings):
    args += ["--gin_param", binding]
  return args


def _env():
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
  env.pop("PYTEST_CURRENT_TEST", None)
  return env


def _wait_for_line(proc, text, timeout):
  """Reads `proc`'s output until a line contains `text`; returns all lines."""
  lines, deadline = [], time.time() + timeout
  while time.time() < deadline:
    line = proc.stdout.readline()
    if not line:
      break
    lines.append(line)
    if text in line:
      return lines
  raise AssertionError(f"{text!r} not seen:\n{''.join(lines)}")


@pytest.mark.slow
def test_sigterm_saves_at_the_current_step_and_the_rerun_resumes(tmp_path):
  workdir = tmp_path / "run"
  proc = subprocess.Popen(
      _command(workdir, "train.max_steps = 100000", "train.epochs = 100000",
               "train.checkpoint_every_steps = 100000"),
      cwd=REPO, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
      text=True)
  try:
    lines = _wait_for_line(proc, "step 2/", timeout=600)
    proc.send_signal(signal.SIGTERM)
    output = "".join(lines) + proc.communicate(timeout=300)[0]
  finally:
    proc.kill()
  assert proc.returncode == 128 + signal.SIGTERM, output
  (message,) = [l for l in output.splitlines() if "SIGTERM at step" in l]
  step = int(message.split("SIGTERM at step ")[1].split(":")[0])
  assert step >= 2
  assert tf.train.latest_checkpoint(str(workdir / "checkpoints")).endswith(
      f"ckpt-{step}")
  assert "Traceback" not in output

  rerun = subprocess.run(_command(workdir, f"train.max_steps = {step + 2}"),
                         cwd=REPO, env=_env(), stdout=subprocess.PIPE,
                         stderr=subprocess.STDOUT, text=True, timeout=600)
  assert rerun.returncode == 0, rerun.stdout
  assert f"(step {step})" in rerun.stdout  # "Resumed from ... (step N)."
  assert tf.train.latest_checkpoint(str(workdir / "checkpoints")).endswith(
      f"ckpt-{step + 2}")


@pytest.mark.slow
def test_a_dead_worker_makes_the_other_fail_within_the_timeout(tmp_path,
                                                             free_ports):
  cluster = {"worker": [f"127.0.0.1:{p}" for p in free_ports(2)]}
  procs = []
  for index in range(2):
    env = dict(_env(), TF_CONFIG=json.dumps(
        {"cluster": cluster, "task": {"type": "worker", "index": index}}))
    procs.append(subprocess.Popen(
        _command(tmp_path / "run", "train.max_steps = 100000",
                 "train.epochs = 100000", "train.collective_timeout_s = 60.0"),
        cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        text=True))
  try:
    _wait_for_line(procs[0], "step 2/", timeout=600)
    procs[1].kill()
    start = time.time()
    output = procs[0].communicate(timeout=300)[0]
    elapsed = time.time() - start
  finally:
    for proc in procs:
      proc.kill()
  assert procs[0].returncode == 1, output
  assert elapsed < 60 + 60, elapsed
  (line,) = [l for l in output.splitlines() if l.startswith("error: ")]
  assert "A worker probably died; restart all workers" in line, output


def test_sequential_stream_resumes_exactly_under_a_global_seed():
  keras.utils.set_random_seed(0)  # As `train` does; tf.data seeds differ then.
  examples = tf.data.Dataset.range(7)
  stream = lambda start: list(sources.epoch_stream(
      examples, seed=1, start=start, pipeline_size=7).take(21 - start)
                              .as_numpy_iterator())
  whole = stream(0)
  assert [p for p, _ in whole] == list(range(21))
  for start in (3, 9):
    assert stream(start) == whole[start:]
  epochs = [[int(x) for _, x in whole[i:i + 7]] for i in (0, 7, 14)]
  assert all(sorted(e) == list(range(7)) for e in epochs)
  assert epochs[0] != epochs[1] != epochs[2]
