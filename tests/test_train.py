"""The trainer: resume, its workdir, bad input and the paper configs."""
import glob
import json
import os
import subprocess
import sys

import gin
import numpy as np
import pytest
import tensorflow as tf

from tfrevisit import gin_config
from tfrevisit import models
from tfrevisit import train
from tfrevisit.training import loop

# One unit per stage: these tests exercise the loop, files and probes, not depth.
pytestmark = pytest.mark.usefixtures("shallow_backbones")

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SMALL_ROTATION = [
    'train.task = "rotation"', "train.batch_size = 8", "train.epochs = 1",
    "train.warmup_epochs = 0", "train.decay_epochs = ()", "train.log_every_steps = 1",
    'source.name = "random"', "source.num_examples = 64", "source.image_shape = (32, 32, 3)",
    'backbone.name = "resnet50_v2"', "backbone.filters_factor = 1",
    "rotation.image_size = 32",
]


def _snapshot(checkpoint):
  """Values of the encoder's and the optimizer's variables, in creation order
  (names get suffixes like `sgd_1` when a second model is built)."""
  variables = checkpoint.encoder.variables + checkpoint.optimizer.variables
  return [v.numpy() for v in variables]


def test_resume_continues_from_the_last_checkpoint(tmp_path, monkeypatch):
  snapshots = []
  original_loop = loop.train_loop

  def spy(step_fn, iterator, optimizer, global_step, save, manager, total_steps,
          **kwargs):
    snapshots.append(("start", int(optimizer.iterations.numpy()), _snapshot(manager.checkpoint)))
    metrics = original_loop(step_fn, iterator, optimizer, global_step, save,
                            manager, total_steps, **kwargs)
    snapshots.append(("end", int(optimizer.iterations.numpy()), _snapshot(manager.checkpoint)))
    return metrics

  monkeypatch.setattr(loop, "train_loop", spy)
  workdir = str(tmp_path / "run")
  bindings = SMALL_ROTATION + ["train.checkpoint_every_steps = 2", "train.export = False"]
  gin_config.parse_gin([], bindings + ["train.max_steps = 4"])
  train.train_from_gin(workdir)
  checkpoints = tf.train.get_checkpoint_state(os.path.join(workdir, "checkpoints"))
  assert checkpoints.model_checkpoint_path.endswith("ckpt-4")

  gin.clear_config()
  gin_config.parse_gin([], bindings + ["train.max_steps = 6"])
  train.train_from_gin(workdir)
  (_, _, saved), (_, start_step, restored), (_, end_step, _) = (
      snapshots[1], snapshots[2], snapshots[3])
  assert (start_step, end_step) == (4, 6)
  assert len(saved) == len(restored)
  for index, (value, restored_value) in enumerate(zip(saved, restored)):
    np.testing.assert_array_equal(restored_value, value, err_msg=str(index))
  checkpoints = tf.train.get_checkpoint_state(os.path.join(workdir, "checkpoints"))
  assert checkpoints.model_checkpoint_path.endswith("ckpt-6")


def test_resuming_a_revnet_run_of_layout_one_is_refused(tmp_path, capsys):
  workdir = str(tmp_path / "run")
  bindings = SMALL_ROTATION + ['backbone.name = "revnet50"',
                               "train.max_steps = 1", "train.export = False"]
  gin_config.parse_gin([], bindings)
  train.train_from_gin(workdir)
  gin.clear_config()
  task_file = os.path.join(workdir, "task.json")
  info = json.load(open(task_file))
  assert info.pop("layout") == models.LAYOUT
  json.dump(info, open(task_file, "w"))

  with pytest.raises(SystemExit, match="^2$"):
    train.main(["--gin_param", "\n".join(bindings), "--workdir", workdir])
  assert "This revnet50 was trained with backbone layout 1" in (
      capsys.readouterr().err)
  assert "layout" not in json.load(open(task_file))


def test_workdir_holds_config_summaries_and_encoder(tmp_path):
  workdir = str(tmp_path / "run")
  gin_config.parse_gin([], SMALL_ROTATION + ["train.max_steps = 2"])
  metrics = train.train_from_gin(workdir)
  assert 0.0 <= metrics["accuracy"] <= 1.0 and metrics["images_per_sec"] > 0
  config = open(os.path.join(workdir, "config.gin")).read()
  assert "train.batch_size = 8" in config and "backbone.filters_factor = 1" in config
  assert glob.glob(os.path.join(workdir, "tb", "events.out.tfevents.*"))


def test_nan_loss_stops_with_a_clear_message(tmp_path):
  workdir = str(tmp_path / "run")
  gin_config.parse_gin([], SMALL_ROTATION + ["train.max_steps = 3", "train.lr = 1e30"])
  with pytest.raises(FloatingPointError, match="last good checkpoint"):
    train.train_from_gin(workdir)


@pytest.mark.parametrize("bad_binding,error", [
    ("train.bogus = 1", "bogus"),
    ('train.task = "colorization"', "valid choices"),
    ('backbone.name = "alexnet"', "valid choices"),
])
def test_bad_input_fails_fast_without_a_workdir(tmp_path, capsys, bad_binding,
                                                error):
  workdir = tmp_path / "run"
  with pytest.raises(SystemExit, match="^2$"):
    train.main(["--gin_param", "\n".join(SMALL_ROTATION), "--gin_param", bad_binding,
                "--workdir", str(workdir)])
  assert error in capsys.readouterr().err
  assert not workdir.exists()


def test_missing_dataset_directory_fails_fast(tmp_path, capsys):
  workdir = tmp_path / "run"
  with pytest.raises(SystemExit, match="^2$"):
    train.main(["--workdir", str(workdir),
                "--gin_param", "\n".join(b for b in SMALL_ROTATION
                                         if not b.startswith("source.")),
                "--gin_param", 'source.name = "image_folder"',
                "--gin_param", 'source.data_dir = "/nonexistent/imagenet"'])
  assert "nonexistent" in capsys.readouterr().err
  assert not workdir.exists()


PAPER_CONFIGS = {  # config -> its smaller-input override for CI
    "rotation": "rotation.image_size = 64",
    "supervised": "supervised.image_size = 64",
    "exemplar": "exemplar.image_size = 64",
    "relpatch": "relative_patch_location.patch_size = 64",
    "jigsaw": "jigsaw.patch_size = 64",
}


# 30-40 s each: the default suite runs rotation's; `-m slow` runs the others.
@pytest.mark.parametrize("config", [
    config if config == "rotation" else pytest.param(config, marks=pytest.mark.slow)
    for config in sorted(PAPER_CONFIGS)])
def test_paper_config_runs_one_step_on_mock_data(tmp_path, config):
  train.main(["--gin", os.path.join(REPO, "configs", f"{config}.gin"),
              "--gin_param", "backbone.filters_factor = 1",
              "--gin_param", "train.batch_size = 2",
              "--gin_param", "train.max_steps = 1",
              "--gin_param", PAPER_CONFIGS[config],
              "--workdir", str(tmp_path), "--mock_data"])
  assert tf.train.latest_checkpoint(str(tmp_path / "checkpoints")).endswith("ckpt-1")
  assert os.path.isdir(tmp_path / "export" / "latest")


@pytest.mark.slow
@pytest.mark.parametrize("config", sorted(PAPER_CONFIGS))
def test_paper_config_full_width_builds(config):
  gin_config.parse_gin([os.path.join(REPO, "configs", f"{config}.gin")], [])
  backbone = gin_config.configured_backbone()
  task = gin_config.configured_task(gin.query_parameter("train.task"),
                                    backbone=backbone, num_classes=1000)
  assert task.encoder.output["pre_logits"].shape[-1] == 512 * backbone.filters_factor


@pytest.mark.slow
@pytest.mark.parametrize("options", [
    "train.jit_compile = False",
    # The GPU options: XLA compiles each worker's forward and backward pass
    # (the all-reduce across workers stays outside), loss scaling.
    "train.jit_compile = True\ntrain.steps_per_loop = 2\n"
    'train.mixed_precision = "mixed_float16"'])
def test_multi_worker_trains_in_sync_on_loopback(tmp_path, free_ports, options):
  cluster = {"worker": [f"127.0.0.1:{p}" for p in free_ports(2)]}
  procs = []
  for index in range(2):
    env = dict(os.environ, TF_CONFIG=json.dumps(
        {"cluster": cluster, "task": {"type": "worker", "index": index}}))
    env.pop("PYTEST_CURRENT_TEST", None)
    procs.append(subprocess.Popen(
        [sys.executable, "-m", "tfrevisit.train",
         "--gin_param", "\n".join(SMALL_ROTATION), "--gin_param", "train.max_steps = 2",
         "--gin_param", "train.export = False", "--gin_param", options,
         "--workdir", str(tmp_path / "run")],
        env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
  outputs = [p.communicate(timeout=300)[0] for p in procs]
  assert all(p.returncode == 0 for p in procs), outputs
  checkpoint = tf.train.latest_checkpoint(str(tmp_path / "run" / "checkpoints"))
  assert checkpoint.endswith("ckpt-2")
  assert not glob.glob(str(tmp_path / "run" / "checkpoints" / ".worker*"))
