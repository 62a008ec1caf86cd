"""Tests for writing, reading and printing evaluation results."""
import csv
import os

import numpy as np
import pytest
import tensorflow as tf

from tfrevisit.evaluation import result_files

ROWS = [
    dict(end_point="block3", probe="linear", setting="100%",
         top1=np.float32(0.4123), top5=0.6789, l2=1e-4, iterations=212,
         wall_time_s=31.5),
    dict(end_point="pre_logits", probe="mlp", setting="10%", top1=0.5,
         top5=0.75, wall_time_s=3.0),
]


def test_json_round_trip(tmp_path):
  json_path, _ = result_files.write_results(ROWS, str(tmp_path))
  assert json_path == os.path.join(str(tmp_path), "results.json")
  rows = result_files.read_results(str(tmp_path))
  assert rows[1] == ROWS[1]
  assert rows[0]["top1"] == pytest.approx(0.4123)
  assert rows[0]["iterations"] == 212
  assert sorted(os.listdir(tmp_path)) == ["results.csv", "results.json"]


def test_rows_resume_only_under_the_same_settings(tmp_path):
  workdir = str(tmp_path)
  settings = {"hub_module": "/m", "global_step": 450, "grid": (1e-2, 1e-3)}
  assert result_files.resumable_rows(workdir, settings) == []  # a first run
  result_files.write_results(ROWS[:1], workdir)
  # Tuples and lists are the same setting once written as JSON.
  kept = result_files.resumable_rows(workdir, {**settings, "grid": [1e-2, 1e-3]})
  assert [r["end_point"] for r in kept] == ["block3"]
  assert result_files.resumable_rows(workdir, {**settings, "global_step": 900}) == []
  # The new settings are recorded: the old ones no longer match.
  assert result_files.resumable_rows(workdir, settings) == []
  os.remove(os.path.join(workdir, result_files.SETTINGS_NAME))
  assert result_files.resumable_rows(workdir, settings) == []  # unrecorded


def test_csv_has_all_columns_and_blanks(tmp_path):
  _, csv_path = result_files.write_results(ROWS, str(tmp_path / "new" / "dir"))
  with open(csv_path) as f:
    rows = list(csv.DictReader(f))
  assert list(rows[0]) == ["end_point", "probe", "setting", "top1", "top5",
                           "l2", "iterations", "wall_time_s"]
  assert float(rows[0]["top5"]) == 0.6789
  assert rows[1]["l2"] == "" and rows[1]["probe"] == "mlp"


def test_failed_write_keeps_previous_files(tmp_path, monkeypatch):
  result_files.write_results(ROWS[:1], str(tmp_path))

  def fail(*args, **kwargs):
    raise OSError("disk full")
  monkeypatch.setattr(tf.io.gfile, "rename", fail)
  with pytest.raises(OSError, match="disk full"):
    result_files.write_results(ROWS, str(tmp_path))
  monkeypatch.undo()
  assert len(result_files.read_results(str(tmp_path))) == 1
  assert sorted(os.listdir(tmp_path)) == ["results.csv", "results.json"]


def test_unserialisable_value_is_named(tmp_path):
  with pytest.raises(TypeError, match="ndarray"):
    result_files.write_results([dict(top1=np.zeros(3))], str(tmp_path))


def test_read_errors_name_the_fix(tmp_path):
  with pytest.raises(FileNotFoundError, match="run the evaluation"):
    result_files.read_results(str(tmp_path))
  (tmp_path / "results.json").write_text("[{\"top1\": 0.")
  with pytest.raises(ValueError, match="delete it and rerun"):
    result_files.read_results(str(tmp_path))


def test_table_shows_percentages():
  table = result_files.format_table(ROWS)
  lines = table.splitlines()
  assert len(lines) == 2 + len(ROWS)
  assert lines[0].split() == ["end_point", "probe", "setting", "top1", "%",
                              "top5", "%", "l2", "iterations", "wall_time_s"]
  assert lines[2].split() == ["block3", "linear", "100%", "41.23", "67.89",
                              "0.0001", "212", "31.5"]
  assert lines[3].split() == ["pre_logits", "mlp", "10%", "50.00", "75.00",
                              "-", "-", "3"]


def test_table_column_selection():
  table = result_files.format_table(ROWS, columns=["end_point", "top1"])
  assert table.splitlines()[-1].split() == ["pre_logits", "50.00"]


def test_table_shortens_lists_and_shows_std_in_percent():
  row = {"probe": "fewshot", "top1": 0.4337, "top1_std": 0.03906,
         "top1_per_shot": [0.43373333, 0.5700666666666667], "shots": [1, 5]}
  assert result_files.format_table([row]).splitlines()[-1].split() == [
      "fewshot", "43.37", "3.91", "[0.4337,", "0.5701]", "[1,", "5]"]
