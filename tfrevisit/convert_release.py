r"""Converts a checkpoint of the paper's original TF1 release into an export.

python -m tfrevisit.convert_release --checkpoint PATH --backbone NAME \
    --filters_factor K [--last_relu false] [--num_classes N] [--task TASK] \
    [--image_size S] --workdir OUT

writes OUT/export/<step>/ (and OUT/export/latest): the same SavedModel,
`encoder.keras` and metadata as `tfrevisit.export` writes for a model trained
here, with `converted_from` in the metadata. PATH is a checkpoint prefix
(`model.ckpt-100000`), a directory with a `checkpoint` file, or a TF-Hub
module's directory or its `variables/` directory.

The release builds its nets with `tf.layers`, whose variables carry automatic
names: `conv2d`, `conv2d_1`, ... for convolutions (`kernel`, and `bias` for
the logits conv only) and `batch_normalization`, `batch_normalization_1`, ...
for BatchNorms (`gamma`, `beta`, `moving_mean`, `moving_variance`), numbered
per layer kind over the whole net in the order the graph creates them, under
`module/` in training checkpoints and without it in TF-Hub modules. So
conv2d_N is the (N+1)-th conv the release's code creates: the mapping lists
our layers in that order (`RELEASE_ORDER`) and reads the suffix as an integer
(the checkpoint's own order is lexicographic: conv2d_10 before conv2d_2).
Every variable of our encoder must come from exactly one checkpoint variable
of the same shape (1x1 conv kernels [1, 1, C, D] become our dense kernels
[C, D]: VGG's fc7 and every logits layer). Besides the net's, a checkpoint may
hold `global_step`, optimizer slots (`<variable>/Momentum`) and, for the patch
tasks, their head (2 convs with bias and a BatchNorm numbered after the
net's): these are left out. Anything else, a missing variable or a shape
that differs is an error naming the first such variable.

The head (`logits`) is converted when the checkpoint's logits size fits the
task (rotation: 4; supervised: `--num_classes`; exemplar, jigsaw, relative
patch location: their embedding, any size) and `--num_classes`, if given,
agrees; otherwise the export holds the encoder alone (default output
`pre_logits`) and a warning says why.
"""
import argparse
import logging
import os
import re
from typing import Any, Dict, List, Optional, Sequence, Tuple

import keras
import numpy as np
import tensorflow as tf

from tfrevisit import cli
from tfrevisit import export
from tfrevisit import models
from tfrevisit import pretext

log = logging.getLogger("tfrevisit.convert_release")

CONV, BATCH_NORM = "conv2d", "batch_normalization"
_WEIGHTS = {CONV: ("kernel", "bias"),
            BATCH_NORM: ("gamma", "beta", "moving_mean", "moving_variance")}
# module/ (training checkpoints) or nothing (TF-Hub modules), the layer's
# automatic name, the weight, and an optional optimizer slot.
_NAME = re.compile(r"^(?:module/)?(conv2d|batch_normalization)(?:_(\d+))?/"
                   r"(kernel|bias|gamma|beta|moving_mean|moving_variance)"
                   r"(/.+)?$")
_NOT_THE_NET = ("global_step",)

# Per task, the size of the head: fixed (rotation), the number of classes
# (supervised), or the embedding's `embed_dim` option (the others); and the
# option that sets the input size.
_FIXED_HEAD = {"rotation": 4}
_EMBEDDING_TASKS = ("exemplar", "jigsaw", "relative_patch_location")
_SIZE_OPTION = {"jigsaw": "patch_size", "relative_patch_location": "patch_size"}
# The patch tasks' head in training checkpoints: fc (conv), BN, fc (conv).
_PATCH_HEAD = {CONV: 2, BATCH_NORM: 1}

Key = Tuple[str, int]  # (layer kind, automatic number): ("conv2d", 7)


# Our layers in the release's creation order, per kind.


def _numbered(names, template: str) -> List[str]:
  """template.format(1), template.format(2), ... while in `names`."""
  found = []
  while template.format(len(found) + 1) in names:
    found.append(template.format(len(found) + 1))
  return found


def _resnet_order(model: keras.Model, version: int):
  """v1 units create [shortcut conv, BN], conv1, BN, conv2, BN, conv3, BN;
  v2 units BN (pre-activation), [shortcut conv], conv1, BN, conv2, BN, conv3;
  v1's root conv has a BN, v2 ends with one."""
  names = {layer.name for layer in model.layers}
  convs, batch_norms = ["root_conv"], ["root_bn"] if version == 1 else []
  for stage in range(1, 5):
    for conv1 in _numbered(names, f"block{stage}_unit{{}}_conv1"):
      unit = conv1[:-len("_conv1")]
      shortcut = [f"{unit}_shortcut"] if f"{unit}_shortcut" in names else []
      body = [f"{unit}_conv{index}" for index in (1, 2, 3)]
      convs += shortcut + body
      if version == 1:
        batch_norms += [f"{name}_bn" for name in shortcut + body]
      else:
        batch_norms += [f"{unit}_preact_bn"] + [f"{n}_bn" for n in body[:2]]
  if version == 2:
    batch_norms.append("postnorm_bn")
  return convs, batch_norms


def _revnet_order(model: keras.Model):
  """The root conv, then per unit (F: BN, conv, BN, conv, BN, conv), a final
  BN."""
  convs, batch_norms = ["root"], []
  for stage in range(1, 5):
    for unit in range(1, model.get_layer(f"block{stage}").num_units + 1):
      prefix = f"block{stage}/unit{unit}"
      convs += [f"{prefix}/conv{index}" for index in (1, 2, 3)]
      batch_norms += [f"{prefix}/bn{index}" for index in (1, 2, 3)]
  return convs, batch_norms + ["postnorm_bn"]


def _vgg_order(model: keras.Model):
  """conv, BN per layer of the five blocks, then fc6, BN, fc7, BN."""
  names = {layer.name for layer in model.layers}
  convs = [conv for block in range(1, 6)
           for conv in _numbered(names, f"block{block}_conv{{}}")]
  convs += ["fc6", "fc7"]
  return convs, [f"{name}_bn" for name in convs]


RELEASE_ORDER = {
    "resnet50_v1": lambda model: _resnet_order(model, 1),
    "resnet50_v2": lambda model: _resnet_order(model, 2),
    "revnet50": _revnet_order,
    "vgg19": _vgg_order,
}


def release_layers(model: keras.Model, name: str) -> Dict[Key, str]:
  """{(kind, number): our layer's weight prefix} for backbone `name`'s
  `model`, the logits conv last among the convs if the model has a head."""
  convs, batch_norms = RELEASE_ORDER[name](model)
  if "logits" in model.output:
    convs = convs + ["logits"]
  return {**{(CONV, i): layer for i, layer in enumerate(convs)},
          **{(BATCH_NORM, i): layer for i, layer in enumerate(batch_norms)}}


# The checkpoint.


def release_name(key: Key, weight: str, prefix: str = "") -> str:
  """The release's variable name: ("conv2d", 7), "kernel" ->
  "conv2d_7/kernel" (number 0 has no suffix)."""
  kind, number = key
  return f"{prefix}{kind}{f'_{number}' if number else ''}/{weight}"


def resolve_checkpoint(path: str) -> str:
  """The checkpoint prefix that `path` names (see the module docstring).

  Raises:
    FileNotFoundError: no checkpoint there.
  """
  for candidate in (path, os.path.join(path, "variables"),
                    os.path.join(path, "variables", "variables")):
    if tf.io.gfile.exists(candidate + ".index"):
      return candidate
  if tf.io.gfile.isdir(path) and tf.train.latest_checkpoint(path):
    return tf.train.latest_checkpoint(path)
  raise FileNotFoundError(
      f"No TF checkpoint at {path!r}: pass a checkpoint prefix (the path "
      "without .index), a directory with a `checkpoint` file, or a TF-Hub "
      "module's directory or its variables/ directory.")


def read_variables(prefix: str) -> Tuple[Dict[Tuple[Key, str], str],
                                         Dict[str, List[int]]]:
  """The net's variables in checkpoint `prefix`.

  Returns:
    ({(key, weight): checkpoint name}, {checkpoint name: shape}) for the
    variables of the release's layers; `global_step` and optimizer slots are
    left out.

  Raises:
    cli.UserError: a variable that is neither, or a weight given twice (with
      and without `module/`).
  """
  shapes = dict(tf.train.list_variables(prefix))
  variables = {}
  for name in sorted(shapes, key=_semantic_order):
    match = _NAME.match(name)
    if match is None:
      if name.split("/")[-1] in _NOT_THE_NET:
        continue
      raise cli.UserError(
          f"{prefix}: variable {name!r} is not a conv2d or batch_normalization "
          "weight of the release's nets (expected names like "
          "module/conv2d_7/kernel): is this a checkpoint of the paper's "
          "release?")
    kind, number, weight, slot = match.groups()
    if slot:
      continue
    key = ((kind, int(number or 0)), weight)
    if key in variables:
      raise cli.UserError(
          f"{prefix}: {name!r} and {variables[key]!r} are the same weight.")
    variables[key] = name
  return variables, shapes


def _semantic_order(name: str):
  """Sorts release names by kind, then the integer suffix, then the rest."""
  match = _NAME.match(name)
  if match is None:
    return (2, name)
  kind, number, weight, slot = match.groups()
  return (0 if kind == CONV else 1, int(number or 0), weight, slot or "")


def head_size(variables: Dict[Tuple[Key, str], str],
              shapes: Dict[str, List[int]]) -> Optional[int]:
  """The release net's logits size: the bias of its first conv with a bias."""
  biased = sorted(key for key, weight in variables
                  if key[0] == CONV and weight == "bias")
  return shapes[variables[biased[0], "bias"]][0] if biased else None


# The mapping.


def match_variables(model: keras.Model, backbone_name: str,
                    variables: Dict[Tuple[Key, str], str],
                    shapes: Dict[str, List[int]],
                    ignorable: Sequence[Key] = ()) -> List[Tuple[str, Any]]:
  """Pairs each weight of `model` with its checkpoint variable.

  Args:
    model: our encoder of backbone `backbone_name`.
    variables, shapes: from `read_variables`.
    ignorable: release layers whose variables may be present without a
      counterpart (a head the export leaves out).

  Returns:
    [(checkpoint name, our keras.Variable)], one per weight of `model`.

  Raises:
    cli.UserError: naming the first checkpoint variable with no counterpart,
      the first of ours missing from the checkpoint, or the first shape that
      differs.
  """
  layers = release_layers(model, backbone_name)
  ours = {weight.path: weight for weight in model.weights}
  expected = {}
  for key, layer in layers.items():
    for weight in _WEIGHTS[key[0]]:
      if f"{layer}/{weight}" in ours:
        expected[key, weight] = ours.pop(f"{layer}/{weight}")
  if ours:  # Our code's bug, not the user's.
    raise ValueError(f"No release counterpart for {sorted(ours)}.")
  what = f"the release's {backbone_name}"
  for key_weight, name in variables.items():
    if key_weight not in expected and key_weight[0] not in ignorable:
      raise cli.UserError(
          f"Checkpoint variable {name!r} has no counterpart in {what} with "
          "this --filters_factor (more layers than it has): check --backbone "
          "and the checkpoint.")
  pairs = []
  prefix = "module/" if any(n.startswith("module/")
                            for n in variables.values()) else ""
  for key_weight, variable in sorted(expected.items(), key=_key_order):
    name = variables.get(key_weight)
    if name is None:
      raise cli.UserError(
          f"The checkpoint lacks {release_name(*key_weight, prefix)!r}, "
          f"{what}'s {variable.path} {list(variable.shape)}: it is not a "
          f"complete {backbone_name} checkpoint.")
    if not _compatible(shapes[name], variable.shape):
      raise cli.UserError(
          f"Checkpoint variable {name!r} has shape {shapes[name]}, but {what} "
          f"needs {list(variable.shape)} for {variable.path}: check "
          "--backbone, --filters_factor, --last_relu and, for vgg19, "
          "--image_size (fc6's kernel covers the map left after 5 pools, "
          "size // 32).")
    pairs.append((name, variable))
  return pairs


def _key_order(item):
  ((kind, number), weight), _ = item
  return (0 if kind == CONV else 1, number, weight)


def _compatible(release_shape: Sequence[int], our_shape: Sequence[int]) -> bool:
  """Equal, or a 1x1 conv kernel [1, 1, C, D] for our dense kernel [C, D]."""
  release_shape, our_shape = list(release_shape), list(our_shape)
  return release_shape == our_shape or (
      len(our_shape) == 2 and release_shape == [1, 1] + our_shape)


def assign(prefix: str, pairs: Sequence[Tuple[str, Any]]) -> None:
  """Loads each checkpoint variable into its counterpart."""
  reader = tf.train.load_checkpoint(prefix)
  for name, variable in pairs:
    variable.assign(np.reshape(reader.get_tensor(name), variable.shape))


# The task and the export.


def build_task(task_name: str, backbone: models.Backbone,
               release_head: Optional[int], num_classes: Optional[int],
               image_size: Optional[int]) -> Tuple[pretext.Task, bool]:
  """The task whose encoder takes the converted weights.

  Returns:
    (task, whether its encoder keeps the release's head): the head is kept
    when its size fits the task and `num_classes` (if given) agrees; else
    the task's encoder is the backbone alone.
  """
  pretext.TASKS.get(task_name)  # Fails on an unknown task, listing them.
  reason = _head_mismatch(task_name, release_head, num_classes)
  options = {}
  if image_size is not None:
    options[_SIZE_OPTION.get(task_name, "image_size")] = image_size
  if task_name in _EMBEDDING_TASKS and not reason:
    options["embed_dim"] = release_head
  task = pretext.get_task(
      task_name, backbone=backbone,
      num_classes=release_head if num_classes is None else num_classes,
      **options)
  if reason:
    log.warning("Exporting the encoder without the release's head: %s.",
                reason)
    task.encoder = task.build_encoder(None)
  return task, not reason


def _head_mismatch(task_name: str, release_head: Optional[int],
                   num_classes: Optional[int]) -> Optional[str]:
  """Why the release's head cannot be the task's (None if it can)."""
  if release_head is None:
    return "the checkpoint has no logits layer"
  if num_classes is not None and num_classes != release_head:
    return (f"its logits have {release_head} classes, --num_classes asks for "
            f"{num_classes}")
  fixed = _FIXED_HEAD.get(task_name)
  if fixed is not None and fixed != release_head:
    return (f"its logits have {release_head} classes, the {task_name} task "
            f"has {fixed}")
  return None


def _ignorable(task: pretext.Task, backbone_name: str, with_head: bool,
               variables) -> List[Key]:
  """Release layers allowed in the checkpoint without a counterpart: the
  logits conv when the head is dropped, and the patch tasks' head."""
  convs, batch_norms = RELEASE_ORDER[backbone_name](task.encoder)
  ignorable = [] if with_head else [(CONV, len(convs))]
  if task.patch_mode:
    first_conv = len(convs) + 1
    ignorable += [(CONV, first_conv + i) for i in range(_PATCH_HEAD[CONV])]
    ignorable += [(BATCH_NORM, len(batch_norms) + i)
                  for i in range(_PATCH_HEAD[BATCH_NORM])]
  return [key for key in ignorable if any(k == key for k, _ in variables)]


def convert(checkpoint: str, backbone: models.Backbone, workdir: str,
            task_name: str = "rotation", num_classes: Optional[int] = None,
            image_size: Optional[int] = None) -> str:
  """Converts a release checkpoint into `workdir/export/<step>`; returns it.

  Args:
    checkpoint: see the module docstring.
    backbone: the architecture the checkpoint holds (name, k, last_relu).
    workdir: where the export goes.
    task_name: the task it was trained on: its evaluation preprocessing and
      patch mode are the export's.
    num_classes: the head size to keep (default: the checkpoint's).
    image_size: the task's input size (patch size for patch tasks); VGG's
      must give the fc6 window of the checkpoint.

  Raises:
    cli.UserError, ValueError, FileNotFoundError: on bad input (one line).
  """
  prefix = resolve_checkpoint(checkpoint)
  variables, shapes = read_variables(prefix)
  task, with_head = build_task(task_name, backbone,
                               head_size(variables, shapes), num_classes,
                               image_size)
  ignorable = _ignorable(task, backbone.name, with_head, variables)
  pairs = match_variables(task.encoder, backbone.name, variables, shapes,
                          ignorable)
  cli.begin_work()
  assign(prefix, pairs)
  used = {name for name, _ in pairs}
  ignored = sorted((n for n in shapes if n not in used), key=_semantic_order)
  step = (int(tf.train.load_checkpoint(prefix).get_tensor("global_step"))
          if "global_step" in shapes else 0)
  return export.export_task(
      task, workdir, step, gin_config="",
      default_output=pretext.DEFAULT_OUTPUT if with_head else "pre_logits",
      extra_metadata={"converted_from": {
          "format": "release TF1 checkpoint", "checkpoint":
          os.path.abspath(prefix), "variables_used": len(pairs),
          "variables_left_out": ignored, "head": with_head}})


def _bool(value: str) -> bool:
  if value.lower() not in ("true", "false"):
    raise argparse.ArgumentTypeError(f"expected true or false, got {value!r}")
  return value.lower() == "true"


def parse_args(argv=None):
  parser = argparse.ArgumentParser(
      description="Convert a checkpoint of the paper's TF1 release (or a "
                  "TF-Hub module's variables) into a tfrevisit export.")
  parser.add_argument("--checkpoint", required=True,
                      help="checkpoint prefix, directory, or TF-Hub module "
                           "(or its variables/ directory).")
  parser.add_argument("--backbone", required=True,
                      help="resnet50_v1, resnet50_v2, revnet50 or vgg19.")
  parser.add_argument("--filters_factor", type=int, required=True,
                      help="the widening factor k (the release's "
                           "filters_factor flag).")
  parser.add_argument("--last_relu", type=_bool, default=True,
                      help="false for the \"(-)\" variants.")
  parser.add_argument("--num_classes", type=int, default=None,
                      help="head size to keep (default: the checkpoint's).")
  parser.add_argument("--task", default="rotation",
                      help="the task the checkpoint was trained on.")
  parser.add_argument("--image_size", type=int, default=None,
                      help="the task's input size (patch size for patch "
                           "tasks); vgg19 needs the one it was trained at.")
  parser.add_argument("--workdir", required=True,
                      help="output directory: WORKDIR/export/<step>.")
  cli.add_verbose_flag(parser)
  return parser.parse_args(argv)


@cli.entry_point
def main(argv: Optional[Sequence[str]] = None) -> str:
  args = parse_args(argv)
  logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
  backbone = models.Backbone(args.backbone, args.filters_factor,
                             last_relu=args.last_relu)
  path = convert(args.checkpoint, backbone, args.workdir, args.task,
                 args.num_classes, args.image_size)
  print(path)
  return path


if __name__ == "__main__":
  main()
