"""One evaluation's result rows -> DIR/results.json, DIR/results.csv, a
printed table and TensorBoard scalars; DIR/run_settings.json says what the
rows were made with, so that an interrupted run resumes after its last row.

(The study's results, read back from its cell files, are
`tfrevisit.study.results`.)

A row is a flat dict, one per end point x probe x setting, e.g.
`{"end_point": "block3", "probe": "linear", "setting": "100%", "top1": 0.42,
"top5": 0.67, "l2": 1e-4, "iterations": 212, "wall_time_s": 31.5}`.
Accuracies are fractions in the files and percentages in the printed table.
"""
import csv
import io
import json
import os
import uuid
from typing import Any, Dict, List, Optional, Sequence

import numpy as np
import tensorflow as tf

Row = Dict[str, Any]
JSON_NAME = "results.json"
CSV_NAME = "results.csv"
# What the rows in results.json were made with (`resumable_rows`).
SETTINGS_NAME = "run_settings.json"
_PERCENT_COLUMNS = ("top1", "top5", "val_top1", "top1_std")


def columns_of(rows: Sequence[Row]) -> List[str]:
  """All keys of `rows`, in order of first appearance."""
  return list(dict.fromkeys(key for row in rows for key in row))


def _to_builtin(value):
  if isinstance(value, np.generic):
    return value.item()
  raise TypeError(f"Cannot write {type(value).__name__} {value!r} to results; "
                  "use numbers and strings.")


def _write_atomically(path: str, text: str):
  """Writes a temporary file next to `path`, then renames it over `path`."""
  temporary_path = f"{path}.tmp-{uuid.uuid4().hex}"
  try:
    with tf.io.gfile.GFile(temporary_path, "w") as f:
      f.write(text)
    tf.io.gfile.rename(temporary_path, path, overwrite=True)
  finally:
    if tf.io.gfile.exists(temporary_path):
      tf.io.gfile.remove(temporary_path)


def write_results(rows: Sequence[Row], workdir: str):
  """Writes `rows` to workdir/results.json and workdir/results.csv atomically.

  Each file is either the previous complete version or the new one, never
  partial, so the rows can be rewritten after every finished evaluation.

  Returns:
    (json path, csv path).
  """
  tf.io.gfile.makedirs(workdir)
  json_path = os.path.join(workdir, JSON_NAME)
  csv_path = os.path.join(workdir, CSV_NAME)
  _write_atomically(json_path,
                    json.dumps(list(rows), indent=1, default=_to_builtin))
  text = io.StringIO()
  writer = csv.DictWriter(text, fieldnames=columns_of(rows), restval="",
                          lineterminator="\n")
  writer.writeheader()
  writer.writerows(rows)
  _write_atomically(csv_path, text.getvalue())
  return json_path, csv_path


def resumable_rows(workdir: str, settings: Dict[str, Any]) -> List[Row]:
  """The rows an interrupted run left in `workdir`, if it ran with the same
  `settings` (JSON-serialisable: the model, the configuration), else [];
  records `settings` for the next run.

  Rows of other settings, or of a run that did not record them, are not
  reused: the evaluation reruns them (and overwrites results.json).
  """
  tf.io.gfile.makedirs(workdir)
  path = os.path.join(workdir, SETTINGS_NAME)
  settings = json.loads(json.dumps(settings, default=_to_builtin))
  previous = None
  if tf.io.gfile.exists(path):
    with tf.io.gfile.GFile(path) as f:
      previous = json.load(f)
  has_rows = tf.io.gfile.exists(os.path.join(workdir, JSON_NAME))
  _write_atomically(path, json.dumps(settings, indent=1, sort_keys=True))
  return read_results(workdir) if has_rows and previous == settings else []


def _scalars(row: Row) -> Dict[str, float]:
  """A row's accuracies: top1, top5, and top1 per k (kNN) or per shot."""
  scalars = {key: row[key] for key in ("top1", "top5") if key in row}
  for values, accuracies, name in (("ks", "top1_per_k", "k"),
                                   ("shots", "top1_per_shot", "shot")):
    for value, accuracy in zip(row.get(values, []), row.get(accuracies, [])):
      scalars[f"top1_{name}{value}"] = accuracy
  return scalars


def write_tensorboard(rows: Sequence[Row], logdir: str, step: int = 0):
  """Writes the rows' accuracies as TensorBoard scalars at `step`.

  Tags are `[model/]probe[@label fraction]/end_point/accuracy`, e.g.
  `linear/block4/top1` or `knn@0.1/pre_logits/top1_k200`; the fraction is
  left out when all labels are used.
  """
  with tf.summary.create_file_writer(logdir).as_default():
    for row in rows:
      prefix = "/".join(filter(None, [row.get("model"), row["probe"]]))
      if row.get("label_fraction", 1.0) < 1:
        prefix += f"@{row['label_fraction']:g}"
      for name, value in _scalars(row).items():
        tf.summary.scalar(f"{prefix}/{row['end_point']}/{name}", value,
                          step=step)


def read_results(workdir: str) -> List[Row]:
  """The rows of workdir/results.json."""
  path = os.path.join(workdir, JSON_NAME)
  if not tf.io.gfile.exists(path):
    raise FileNotFoundError(f"No {path}; run the evaluation with --workdir "
                            f"{workdir} first.")
  with tf.io.gfile.GFile(path) as f:
    try:
      return json.load(f)
    except json.JSONDecodeError as error:
      raise ValueError(f"{path} is not valid JSON ({error}); delete it and "
                       "rerun the evaluation.") from error


def _format_cell(column: str, value) -> str:
  if value is None or value == "":
    return "-"
  if isinstance(value, list):  # e.g. top1_per_k: [0.75, 0.70] -> [0.75, 0.7]
    return f"[{', '.join(_format_cell('', v) for v in value)}]"
  if column in _PERCENT_COLUMNS:
    return f"{100 * value:.2f}"
  if isinstance(value, float):
    return f"{value:.4g}"
  return str(value)


def format_table(rows: Sequence[Row],
                 columns: Optional[Sequence[str]] = None) -> str:
  """A fixed-width text table of `rows`; accuracies shown in percent.

  Args:
    rows: result rows.
    columns: columns to show, in order; all of them by default.

  Returns:
    The table as one string with a header and a rule.
  """
  columns = list(columns or columns_of(rows))
  header = [f"{c} %" if c in _PERCENT_COLUMNS else c for c in columns]
  cells = [[_format_cell(c, row.get(c)) for c in columns] for row in rows]
  widths = [max(len(text) for text in column)
            for column in zip(header, *cells)]

  def line(texts):
    return "  ".join(t.rjust(w) for t, w in zip(texts, widths)).rstrip()
  return "\n".join([line(header), line("-" * w for w in widths)]
                   + [line(row) for row in cells])
