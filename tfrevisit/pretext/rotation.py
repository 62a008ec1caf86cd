"""Rotation prediction (Gidaris et al. 2018): which of 0/90/180/270 degrees."""
import tensorflow as tf

from tfrevisit import models
from tfrevisit.data import recipes
from tfrevisit.pretext import base

NUM_ROTATIONS = 4


@base.register("rotation")
class RotationTask(base.Task):
  """Each image is shown at the four rotations; 4-way softmax on `logits`."""

  def __init__(self, backbone: models.Backbone, num_classes: int,
               image_size: int = 224):
    # num_classes is unused: the labels are made by the `rotate` op.
    super().__init__(backbone, num_classes, image_size=image_size)
    self.image_size = image_size
    self.train_preprocess = recipes.rotation(image_size)
    self.eval_preprocess = recipes.eval_image(image_size)
    self.encoder = self.build_encoder(NUM_ROTATIONS)

  def loss(self, batch, training):
    images = base.flatten_views(batch["image"])  # [B*4, h, w, 3]
    logits = self.encoder(images, training=training)["logits"]
    labels = tf.reshape(batch["label"], [-1])
    return base.softmax_loss_and_accuracy(logits, labels, NUM_ROTATIONS)
