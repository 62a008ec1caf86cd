"""User errors on the command lines: one line `error: ...`, exit status 2."""
import os
import subprocess
import sys

import gin
import pytest

from tfrevisit import cli
from tfrevisit import evaluate
from tfrevisit import export
from tfrevisit import quickstart
from tfrevisit import train
from tfrevisit.study import __main__ as study_main
from tfrevisit.study import report
from tfrevisit.training import run as run_lib

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SMALL = "\n".join([
    'train.task = "rotation"', "train.batch_size = 8", "train.epochs = 1",
    'source.name = "random"', "source.num_examples = 64",
    "source.image_shape = (32, 32, 3)", 'backbone.name = "resnet50_v2"',
    "backbone.filters_factor = 1", "rotation.image_size = 32"])


def _user_error(capsys, main, argv):
  """Runs `main(argv)`; asserts exit status 2 and returns the stderr line."""
  with pytest.raises(SystemExit) as exit_info:
    main(argv)
  assert exit_info.value.code == cli.EXIT_USER_ERROR
  lines = capsys.readouterr().err.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith("error: "), lines
  return lines[0]


@pytest.mark.parametrize("binding,message", [
    ("train.bogus = 1", "error: bad gin config: Configurable 'train' doesn't "
     "have a parameter named 'bogus'. In bindings string line 10 train.bogus = 1"),
    ("train.batch_size = ", "error: bad gin config: Unable to parse value. "
     "(line 10)"),
    ('train.task = "colorization"', "error: Unknown task "
     "'colorization'; valid choices: exemplar, jigsaw, relative_patch_location, "
     "rotation, supervised."),
    ("train.batch_size = 0", "error: train.batch_size = 0 must be an integer "
     ">= the number of replicas (2)."),  # conftest: two logical CPUs.
    ("train.epochs = 0", "error: train.epochs = 0 must be > 0 (for a run "
     "without training, set train.max_steps = 0)."),
    ("train.epochs = 0.01", "error: train.epochs = 0.01 is less than one step "
     "(8 steps per epoch); raise train.epochs."),
    ("train.lr = 0", "error: train.lr = 0 must be > 0."),
    ("train.max_steps = -1", "error: train.max_steps = -1 must be >= 0."),
    ('train.mixed_precision = "fp8"', "error: Unknown train.mixed_precision "
     "'fp8'; valid choices: (None, 'mixed_float16', 'mixed_bfloat16')."),
])
def test_train_user_errors_are_one_line(tmp_path, capsys, binding, message):
  workdir = tmp_path / "run"
  assert _user_error(capsys, train.main, [
      "--gin_param", SMALL, "--gin_param", binding,
      "--workdir", str(workdir)]) == message
  assert not workdir.exists()


@pytest.mark.parametrize("source,message", [
    ('source.name = "image_folder"\nsource.data_dir = "/nonexistent"',
     "error: Image folder /nonexistent/train does not exist."),
    ('source.name = "cifar10"\nsource.data_dir = "{tmp}"',
     "error: Size of split 'train' of TFDS dataset 'cifar10' is unknown (is it "
     "prepared in data_dir='{tmp}'?)."),
])
def test_missing_or_unprepared_data(tmp_path, capsys, source, message):
  bindings = [b for b in SMALL.splitlines() if not b.startswith("source.")]
  workdir = tmp_path / "run"
  assert _user_error(capsys, train.main, [
      "--gin_param", "\n".join(bindings),
      "--gin_param", source.format(tmp=tmp_path), "--workdir", str(workdir)]
                     ) == message.format(tmp=tmp_path)
  assert not workdir.exists()


def test_missing_gin_file_and_required_binding(tmp_path, capsys):
  assert _user_error(capsys, train.main, [
      "--gin", "nope.gin", "--workdir", str(tmp_path)]) == (
          "error: gin config 'nope.gin' does not exist; check --gin.")
  assert _user_error(capsys, train.main, ["--workdir", str(tmp_path)]) == (
      "error: Required bindings for `train` not provided in config: "
      "['task', 'batch_size', 'epochs']")
  config = tmp_path / "includes.gin"
  config.write_text('include "study/nope.gin"\n')
  assert _user_error(capsys, train.main, [
      "--gin", str(config), "--workdir", str(tmp_path)]).startswith(
          "error: bad gin config: Unable to open file: study/nope.gin.")


def test_batch_size_must_divide_among_replicas():
  knobs = dict(epochs=1, max_steps=None, lr=0.1, checkpoint_every_steps=1,
               keep_checkpoints=1, log_every_steps=1)
  run_lib.check_knobs(batch_size=8, num_replicas=2, **knobs)
  with pytest.raises(cli.UserError, match=r"^train.batch_size = 1 must be an "
                     r"integer >= the number of replicas \(2\).$"):
    run_lib.check_knobs(batch_size=1, num_replicas=2, **knobs)
  with pytest.raises(cli.UserError, match="not divisible by the number of "
                     r"replicas \(2\); use a multiple of 2.$"):
    run_lib.check_knobs(batch_size=7, num_replicas=2, **knobs)
  with pytest.raises(cli.UserError, match="log_every_steps = 0 must be >= 1"):
    run_lib.check_knobs(batch_size=8, num_replicas=2,
                        **dict(knobs, log_every_steps=0))


def test_other_commands_user_errors(tmp_path, capsys):
  assert _user_error(capsys, export.main, ["--workdir", str(tmp_path)]) == (
      f"error: {tmp_path}/task.json is missing: {str(tmp_path)!r} is not a "
      "tfrevisit training workdir (run `python -m tfrevisit.train --workdir "
      "...` first).")
  missing = str(tmp_path / "missing")
  assert _user_error(capsys, evaluate.main, [
      "--hub_module", missing, "--workdir", str(tmp_path / "eval"),
      "--gin_param", 'source.name = "random"']) == (
          f"error: --hub_module {missing!r} is not a SavedModel directory; "
          "pass the directory that `python -m tfrevisit.export` wrote, e.g. "
          "WORKDIR/export/latest.")
  assert _user_error(capsys, quickstart.main, [
      "--workdir", str(tmp_path), "--train_param", "train.lr = -1"]) == (
          "error: train.lr = -1 must be > 0.")
  assert _user_error(capsys, report.main, [
      "--results_dir", missing, "--out_dir", str(tmp_path)]) == (
          f"error: No cell results in {missing}; run `python -m tfrevisit.study` "
          "first.")
  gin.clear_config()
  assert _user_error(capsys, study_main.main, [
      "--gin", os.path.join(REPO, "configs", "study", "fashion_mnist.gin"),
      "--workdir", str(tmp_path), "--only", "nothing*"]) == (
          "error: No cell matches --only 'nothing*'; see --list.")


def test_verbose_shows_the_traceback(tmp_path, capsys, monkeypatch):
  argv = ["--gin_param", SMALL, "--gin_param", "train.lr = 0",
          "--workdir", str(tmp_path)]
  for extra, env in (["--verbose"], "0"), ([], "1"):
    monkeypatch.setenv(cli.VERBOSE_ENV, env)
    gin.clear_config()
    with pytest.raises(SystemExit):
      train.main(argv + extra)
    err = capsys.readouterr().err
    assert "Traceback" in err and "check_knobs" in err
    assert err.strip().splitlines()[-1] == "error: train.lr = 0 must be > 0."


def test_unexpected_errors_keep_their_traceback(tmp_path, monkeypatch):
  def failing_train(*args, **kwargs):
    cli.begin_work()
    raise ValueError("a bug")

  monkeypatch.setattr(train, "train_from_gin", failing_train)
  with pytest.raises(ValueError, match="a bug"):
    train.main(["--workdir", str(tmp_path)])
  monkeypatch.setattr(train, "train_from_gin", lambda *a, **k: {}[0])
  gin.clear_config()
  with pytest.raises(KeyError):
    train.main(["--workdir", str(tmp_path)])


def test_command_line_prints_one_line_and_exits_2(tmp_path):
  result = subprocess.run(
      [sys.executable, "-m", "tfrevisit.train", "--workdir", str(tmp_path),
       "--gin_param", SMALL, "--gin_param", "train.batch_size = 0"],
      capture_output=True, text=True, cwd=REPO, timeout=120,
      env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"))
  assert result.returncode == 2
  assert "Traceback" not in result.stderr
  assert result.stderr.strip().splitlines()[-1] == (
      "error: train.batch_size = 0 must be an integer >= the number of "
      "replicas (1).")
