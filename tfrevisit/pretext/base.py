"""The interface shared by all pretext (and the supervised) tasks.

A task owns three things: the preprocessing that turns an image into its
training input (several crops, patches or rotations per image), the network
(the backbone, whose end points are exported, plus an optional task head) and
the loss. The trainer knows nothing else about a task.

A task is built from explicit values, `TaskClass(backbone, num_classes,
**options)`: the `models.Backbone` it trains, the number of labels of the
source and its own options (e.g. `image_size`). It keeps all three
(`backbone`, `num_classes`, `options`), so that the trainer records them in
the workdir and the export in its metadata (`tfrevisit.artifacts`), from
which `get_task` rebuilds the same task.

Shapes: a task's batch is a dict with "image" [B, ...] (B images, each possibly
expanded to N views [B, N, h, w, 3]) and "label" [B] or [B, N]. `loss` returns
per-image losses [B] so that the trainer can average them over the global
batch, whatever the number of views per image.
"""
from typing import Any, Callable, Dict, List, Optional, Tuple

import keras
import tensorflow as tf

from tfrevisit import models
from tfrevisit.registry import Registry

TASKS = Registry("task")


def register(name: str) -> Callable[[type], type]:
  """Class decorator: registers a Task subclass in `TASKS` as `name`, which
  becomes its `name`."""
  def wrap(cls):
    cls.name = name
    return TASKS.register(name)(cls)
  return wrap

# The backbone output that exported models return by default: the pretext
# head's logits (rotation, supervised) or the embedding (exemplar, patches).
DEFAULT_OUTPUT = "logits"


class Task:
  """Base class: subclasses call `super().__init__` with their own options,
  then set the attributes below."""

  # The registry key (set by `register`).
  name: str
  # Preprocessing specs (tfrevisit.data.preprocess) of training batches and of
  # the evaluation of the frozen representation (no augmentation, no task views).
  train_preprocess: str
  eval_preprocess: str
  # Side of the backbone's input, in pixels (the patch size for patch tasks).
  image_size: int
  # How pixel values are scaled: "-1_to_1" or "standardization".
  value_range: str = "-1_to_1"
  # Whether the backbone runs on patches (root stride 1, strides (1,2,2,1)).
  patch_mode: bool = False

  encoder: keras.Model
  head: Optional[keras.Model] = None

  def __init__(self, backbone: models.Backbone, num_classes: int, **options):
    """Keeps what rebuilds the task: `get_task(self.name, backbone=backbone,
    num_classes=num_classes, **options)`.

    Args:
      backbone: the backbone the task trains; see `build_encoder`.
      num_classes: the number of labels of the training source.
      **options: every option of the subclass's constructor, as used;
        JSON-serialisable values.
    """
    self.backbone = backbone
    self.num_classes = num_classes
    self.options: Dict[str, Any] = options

  def build_encoder(self, num_outputs: int) -> keras.Model:
    """`self.backbone` with a `logits` head of `num_outputs`, in this task's
    patch mode.

    Inputs are [B, H, W, 3] with dynamic H, W where the architecture allows it,
    else (VGG) fixed to `self.image_size`.
    """
    return self.backbone.build(num_classes=num_outputs,
                               patch_mode=self.patch_mode,
                               input_size=self.image_size)

  @property
  def trainable_variables(self) -> List[tf.Variable]:
    variables = list(self.encoder.trainable_variables)
    if self.head is not None:
      variables += self.head.trainable_variables
    return variables

  def regularization_loss(self) -> tf.Tensor:
    """Sum of the kernels' L2 penalties (encoder and head), float32 scalar."""
    losses = list(self.encoder.losses)
    if self.head is not None:
      losses += self.head.losses
    if not losses:
      return tf.constant(0.0)
    return tf.add_n([tf.cast(l, tf.float32) for l in losses])

  def checkpoint_items(self) -> Dict[str, keras.Model]:
    items = {"encoder": self.encoder}
    if self.head is not None:
      items["head"] = self.head
    return items

  def loss(self, batch: Dict[str, tf.Tensor], training: bool
           ) -> Tuple[tf.Tensor, Dict[str, tf.Tensor]]:
    """Returns per-image losses [B] (float32) and per-image metrics {name: [B]}."""
    raise NotImplementedError


def flatten_views(images: tf.Tensor) -> tf.Tensor:
  """[B, N, h, w, c] -> [B*N, h, w, c]; the backbone runs on all views at once."""
  shape = tf.shape(images)
  return tf.reshape(images, tf.concat([[-1], shape[2:]], axis=0))


def softmax_loss_and_accuracy(logits: tf.Tensor, labels: tf.Tensor, num_views: int
                              ) -> Tuple[tf.Tensor, Dict[str, tf.Tensor]]:
  """Cross-entropy and top-1 accuracy, averaged over each image's views.

  Args:
    logits: [B*num_views, C], any float dtype.
    labels: [B*num_views] integer classes.
    num_views: views per image.

  Returns:
    per-image loss [B] and {"accuracy": [B]}, float32.
  """
  logits = tf.cast(logits, tf.float32)
  labels = tf.cast(labels, tf.int32)
  xent = tf.nn.sparse_softmax_cross_entropy_with_logits(labels=labels, logits=logits)
  correct = tf.cast(tf.equal(tf.argmax(logits, -1, output_type=tf.int32), labels),
                    tf.float32)
  per_image = lambda x: tf.reduce_mean(tf.reshape(x, [-1, num_views]), axis=1)
  return per_image(xent), {"accuracy": per_image(correct)}

