"""The quick start end to end, shrunk to seconds with gin overrides."""
import json
import os

import pytest

from tfrevisit import quickstart

# One unit per stage: these tests exercise the loop, files and probes, not depth.
pytestmark = pytest.mark.usefixtures("shallow_backbones")

TINY_TRAIN = ["train.max_steps = 3", "train.batch_size = 16", 'source.name = "random"',
              "source.num_examples = 48", "source.image_shape = (32, 32, 3)"]
TINY_EVAL = ['source.name = "random"', "source.num_examples = 48",
             "source.image_shape = (32, 32, 3)", "evaluate.end_points = ['block4', 'pre_logits']",
             "select_l2_and_fit.l2_grid = [1e-2]", "select_l2_and_fit.max_iterations = 10"]


def test_quickstart_trains_exports_and_compares(tmp_path, capsys):
  rows = quickstart.main(["--workdir", str(tmp_path)]
                         + [a for b in TINY_TRAIN for a in ("--train_param", b)]
                         + [a for b in TINY_EVAL for a in ("--eval_param", b)])
  assert {(r["model"], r["end_point"]) for r in rows} == {
      (m, e) for m in quickstart.MODELS for e in ("block4", "pre_logits")}
  saved = json.load(open(tmp_path / "results.json"))
  assert len(saved) == 4
  for model in quickstart.MODELS:
    assert os.path.isdir(tmp_path / model / "export" / "latest")
  printed = capsys.readouterr().out
  assert "pre_logits" in printed and "random initialisation" in printed


def test_comparison_table_puts_models_side_by_side():
  rows = [{"model": "rotation", "end_point": "block4", "top1": 0.5},
          {"model": "random_init", "end_point": "block4", "top1": 0.25}]
  table = quickstart.comparison_table(rows).splitlines()
  assert table[1].split() == ["block4", "50.00", "25.00"]
