r"""Held-out pretext accuracy of every kept checkpoint of a training workdir.

`python -m tfrevisit.study.pretext_eval --workdir TRAIN_DIR --output curve.json
 [--split SPLIT] [--num_examples 2048] [--seed 0] [--prune]`

Rebuilds the task of the workdir (task.json; data source and batch size from
its config.gin) and, for each checkpoint (oldest first), restores the network
(encoder and head) and measures the task's accuracy with `task.loss(batch,
training=False)` (moving BatchNorm statistics, no dropout; jigsaw over all its
permutations) on the same held-out images: the first `num_examples // batch
size` batches of the held-out split, preprocessed as for training (views,
crops, patches) with a fixed seed, at the training batch size (exemplar's
accuracy is a nearest neighbour among the batch). The held-out split is `val`
for tasks trained on `train` and `test` for a task trained on `trainval` (the
supervised baseline): images the network never trained on.

Writes OUTPUT as [{"step", "epoch", "accuracy"}] (epoch = step / the
training's steps per epoch; accuracy a fraction) after every checkpoint, and
skips the steps OUTPUT already holds, so an interrupted run resumes. With
--prune, all checkpoints but the newest are deleted once measured (they are
the bulk of a study workdir).
"""
import argparse
import json
import logging
import os
import sys
from typing import Dict, List, Sequence

import tensorflow as tf

from tfrevisit import artifacts
from tfrevisit import cli
from tfrevisit import data
from tfrevisit import gin_config
from tfrevisit import restore
from tfrevisit import train as _  # pylint: disable=unused-import  # config.gin binds train.*
from tfrevisit.study import grid

log = logging.getLogger("tfrevisit.study.pretext_eval")


def held_out_split(train_split: str) -> str:
  """The split of images a model trained on `train_split` never saw."""
  return "test" if train_split == "trainval" else "val"


def checkpoints(workdir: str) -> List[str]:
  """The workdir's checkpoint prefixes whose files exist, oldest first."""
  directory = artifacts.checkpoint_dir(workdir)
  state = tf.train.get_checkpoint_state(directory)
  names = [os.path.basename(p)
           for p in (state.all_model_checkpoint_paths if state else [])]
  return list(artifacts.existing_checkpoints(
      [os.path.join(directory, n) for n in names]))


def checkpoint_step(prefix: str) -> int:
  return int(prefix.rsplit("-", 1)[1])


def held_out_batches(task, source: data.Source, split: str, batch_size: int,
                     num_examples: int, seed: int) -> List[Dict[str, tf.Tensor]]:
  """`num_examples // batch_size` (at least one; `num_examples` at most the
  split's size) batches of `split` under the task's training preprocessing,
  seeded: the same images and views for every checkpoint."""
  num_examples = min(num_examples, source.num_examples(split))
  num_batches = max(1, num_examples // batch_size)
  dataset = data.make_dataset(source, split, task.train_preprocess, batch_size,
                              training=True, seed=seed)
  return list(dataset.take(num_batches))


def accuracy(task, batches: Sequence[Dict[str, tf.Tensor]]) -> float:
  """Mean per-image accuracy of the task's network on `batches`."""
  @tf.function
  def batch_sum(batch):
    _, metrics = task.loss(batch, training=False)
    correct = tf.cast(metrics["accuracy"], tf.float32)
    return tf.reduce_sum(correct), tf.cast(tf.size(correct), tf.float32)
  total = count = 0.0
  for batch in batches:
    correct, size = batch_sum(batch)
    total, count = total + float(correct), count + float(size)
  return total / count


def prune(prefixes: Sequence[str]) -> None:
  """Deletes the files of every checkpoint in `prefixes` but the last."""
  for prefix in prefixes[:-1]:
    for path in tf.io.gfile.glob(prefix + ".*"):
      tf.io.gfile.remove(path)


def pretext_curve(workdir: str, output: str, split: str = None,
                  num_examples: int = 2048, seed: int = 0,
                  prune_checkpoints: bool = False) -> List[Dict[str, float]]:
  """Measures each unmeasured checkpoint of `workdir`; returns the curve.

  Raises:
    FileNotFoundError: not a training workdir, or no checkpoint.
  """
  config = artifacts.read_config(workdir)
  gin_config.parse_gin([artifacts.config_path(workdir)], [])
  train_split = grid.gin_value(config, "train.train_split", "train")
  batch_size = grid.gin_value(config, "train.batch_size")
  source = gin_config.configured_source()
  prefixes = checkpoints(workdir)
  if not prefixes:
    raise FileNotFoundError(f"No checkpoint in {artifacts.checkpoint_dir(workdir)}.")
  curve = []
  if os.path.exists(output):
    with open(output) as f:
      curve = json.load(f)
  done = {point["step"] for point in curve}
  todo = [p for p in prefixes if checkpoint_step(p) not in done]
  steps_per_epoch = max(source.num_examples(train_split) // batch_size, 1)
  if todo:
    task, _ = restore.restore_task(workdir, todo[0])
    split = split or held_out_split(train_split)
    batches = held_out_batches(task, source, split, batch_size, num_examples,
                               seed)
    for prefix in todo:
      artifacts.restore_checkpoint(tf.train.Checkpoint(**task.checkpoint_items()),
                                   prefix).expect_partial()
      step = checkpoint_step(prefix)
      curve.append({"step": step, "epoch": round(step / steps_per_epoch, 4),
                    "accuracy": accuracy(task, batches), "split": split})
      curve.sort(key=lambda point: point["step"])
      log.info("step %d: held-out %s accuracy %.4f", step, split,
               curve[-1]["accuracy"])
      _write(output, curve)
  if prune_checkpoints:
    prune(prefixes)
  return curve


def _write(path: str, value) -> None:
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  with open(f"{path}.tmp", "w") as f:
    json.dump(value, f, indent=1)
  os.replace(f"{path}.tmp", path)


def parse_args(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--workdir", required=True, help="a training workdir.")
  parser.add_argument("--output", required=True, help="the curve's JSON file.")
  parser.add_argument("--split", default=None,
                      help="held-out split (default: val, or test for a "
                      "model trained on trainval).")
  parser.add_argument("--num_examples", type=int, default=2048,
                      help="held-out images per checkpoint.")
  parser.add_argument("--seed", type=int, default=0,
                      help="seed of the held-out images' order and views.")
  parser.add_argument("--prune", action="store_true",
                      help="then delete all checkpoints but the newest.")
  cli.add_verbose_flag(parser)
  return parser.parse_args(argv)


@cli.entry_point
def main(argv=None):
  args = parse_args(argv)
  logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
  if not os.path.exists(artifacts.config_path(args.workdir)):
    raise cli.UserError(f"--workdir {args.workdir}: no {artifacts.CONFIG_FILE}; "
                        "pass a `tfrevisit.train` workdir.")
  cli.begin_work()
  curve = pretext_curve(args.workdir, args.output, args.split,
                        args.num_examples, args.seed, args.prune)
  print(json.dumps(curve[-1]))
  return 0


if __name__ == "__main__":
  sys.exit(main())
