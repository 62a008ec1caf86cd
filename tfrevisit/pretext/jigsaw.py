"""Jigsaw puzzles (Noroozi & Favaro 2016): which of 100 permutations shuffled
the 9 patches."""
import tensorflow as tf

from tfrevisit import models
from tfrevisit.data import recipes
from tfrevisit.pretext import base
from tfrevisit.pretext import patches
from tfrevisit.pretext.permutations import gather_permuted, max_hamming_permutations  # pylint: disable=unused-import


# The batch key of the per-image seeds that pick the permutations.
SUBSET_SEED = "subset_seed"


def _shuffle(values: tf.Tensor, seeds: tf.Tensor = None) -> tf.Tensor:
  """`values` shuffled by `seeds[0]` (int64 [B, 2]), or unseeded if None."""
  if seeds is None:
    return tf.random.shuffle(values)
  keys = tf.random.stateless_uniform(tf.shape(values), seeds[0])
  return tf.gather(values, tf.argsort(keys))


def permuted_concat(embeddings: tf.Tensor, permutations: tf.Tensor) -> tf.Tensor:
  """Every image under every permutation.

  Args:
    embeddings: [B, 9, D] patch embeddings.
    permutations: int [P, 9]; slot i of permutation p holds patch p[i].

  Returns:
    [B, P, 9 * D] concatenations in permutation order.
  """
  batch_size, num_perms = tf.shape(embeddings)[0], tf.shape(permutations)[0]
  concat_dim = embeddings.shape[1] * embeddings.shape[2]
  tiled = tf.repeat(embeddings, num_perms, axis=0)            # [B*P, 9, D]
  perms = tf.tile(permutations, [batch_size, 1])              # [B*P, 9]
  permuted = gather_permuted(tiled, perms)
  return tf.reshape(permuted, [batch_size, num_perms, concat_dim])


@base.register("jigsaw")
class JigsawTask(base.Task):
  """Patch embeddings concatenated in a permutation's order; a head predicts
  the permutation. Each training step draws `perm_subset_size` of the
  `num_permutations` and shows every image under each of them."""

  value_range = "standardization"
  patch_mode = True

  def __init__(self, backbone: models.Backbone, num_classes: int,
               patch_size: int = 64, patch_jitter: int = 21, embed_dim: int = 1000,
               head_hidden: int = 4096, num_permutations: int = 100,
               perm_subset_size: int = 8):
    # num_classes is unused: the labels are permutation indices.
    super().__init__(backbone, num_classes, patch_size=patch_size,
                     patch_jitter=patch_jitter, embed_dim=embed_dim,
                     head_hidden=head_hidden, num_permutations=num_permutations,
                     perm_subset_size=perm_subset_size)
    if not 1 <= perm_subset_size <= num_permutations:
      raise ValueError(f"jigsaw.perm_subset_size must be in [1, {num_permutations}], "
                       f"got {perm_subset_size}.")
    self.image_size = patch_size
    self.perm_subset_size = perm_subset_size
    self.permutations = tf.constant(
        max_hamming_permutations(num_permutations, patches.NUM_PATCHES))
    # A per-image seed: the first image's picks the batch's permutations.
    self.train_preprocess = (recipes.patches(patch_size, patch_jitter)
                             + f"|keep_seed({SUBSET_SEED!r})")
    self.eval_preprocess = recipes.eval_patches(patch_size)
    self.encoder = self.build_encoder(embed_dim)
    self.head = patches.build_head(patches.NUM_PATCHES * embed_dim,
                                   num_permutations, head_hidden,
                                   numerics=backbone.numerics)

  def loss(self, batch, training):
    num_permutations = self.permutations.shape[0]
    perm_ids = tf.range(num_permutations)
    if training:
      perm_ids = _shuffle(perm_ids, batch.get(SUBSET_SEED))[:self.perm_subset_size]
    embeddings = patches.patch_embeddings(self.encoder, batch["image"], training)
    concat = permuted_concat(embeddings, tf.gather(self.permutations, perm_ids))
    logits = self.head(tf.reshape(concat, [-1, concat.shape[-1]]), training=training)
    labels = tf.tile(perm_ids, [tf.shape(embeddings)[0]])
    return base.softmax_loss_and_accuracy(logits, labels, num_views=tf.size(perm_ids))
