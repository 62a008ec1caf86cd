"""Relative patch location (Doersch et al. 2015): where is a neighbour patch
relative to the centre one, among the 8 positions of a 3x3 grid."""
import tensorflow as tf

from tfrevisit import models
from tfrevisit.data import recipes
from tfrevisit.pretext import base
from tfrevisit.pretext import patches

CENTRE = 4
# Neighbour positions in the row-major 3x3 grid; label i is NEIGHBOURS[i].
NEIGHBOURS = tuple(i for i in range(patches.NUM_PATCHES) if i != CENTRE)


def neighbour_centre_pairs(embeddings: tf.Tensor) -> tf.Tensor:
  """[B, 9, D] -> [B, 8, 2D]: pair i is concat(neighbour NEIGHBOURS[i], centre)."""
  neighbours = tf.gather(embeddings, NEIGHBOURS, axis=1)
  centre = tf.repeat(embeddings[:, CENTRE:CENTRE + 1], len(NEIGHBOURS), axis=1)
  return tf.concat([neighbours, centre], axis=-1)


@base.register("relative_patch_location")
class RelativePatchLocationTask(base.Task):
  """Each patch -> backbone (patch mode) -> embedding; a head classifies each
  (neighbour, centre) pair into the 8 relative positions."""

  value_range = "standardization"
  patch_mode = True

  def __init__(self, backbone: models.Backbone, num_classes: int,
               patch_size: int = 64, patch_jitter: int = 21, embed_dim: int = 1000,
               head_hidden: int = 4096):
    # num_classes is unused: the labels are the patch positions.
    super().__init__(backbone, num_classes, patch_size=patch_size,
                     patch_jitter=patch_jitter, embed_dim=embed_dim,
                     head_hidden=head_hidden)
    self.image_size = patch_size
    self.train_preprocess = recipes.patches(patch_size, patch_jitter)
    self.eval_preprocess = recipes.eval_patches(patch_size)
    self.encoder = self.build_encoder(embed_dim)
    self.head = patches.build_head(2 * embed_dim, len(NEIGHBOURS), head_hidden,
                                   numerics=backbone.numerics)

  def loss(self, batch, training):
    pairs = neighbour_centre_pairs(
        patches.patch_embeddings(self.encoder, batch["image"], training))
    logits = self.head(tf.reshape(pairs, [-1, pairs.shape[-1]]), training=training)
    labels = tf.tile(tf.range(len(NEIGHBOURS)), [tf.shape(pairs)[0]])
    return base.softmax_loss_and_accuracy(logits, labels, len(NEIGHBOURS))
