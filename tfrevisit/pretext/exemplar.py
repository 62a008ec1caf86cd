"""Exemplar (Dosovitskiy et al. 2014, as in the paper): crops of one image
form a class; a triplet loss with semi-hard mining pulls them together."""
import tensorflow as tf

from tfrevisit import losses
from tfrevisit import models
from tfrevisit.data import recipes
from tfrevisit.pretext import base


def nearest_neighbour_accuracy(labels: tf.Tensor, embeddings: tf.Tensor) -> tf.Tensor:
  """Per embedding, 1.0 if its nearest other embedding has the same label. [N]."""
  distances = losses.pairwise_squared_distances(embeddings)
  distances += tf.linalg.diag(tf.fill([tf.shape(labels)[0]], float("inf")))
  nearest = tf.argmin(distances, axis=1, output_type=tf.int32)
  return tf.cast(tf.equal(tf.gather(labels, nearest), labels), tf.float32)


@base.register("exemplar")
class ExemplarTask(base.Task):
  """`num_crops` Inception crops per image (grayscale w.p. 0.66, per-crop
  distortion and standardization); the `logits` of `embed_dim`, L2-normalised,
  are the embedding.

  `normalize_axis` (the gin binding `exemplar.normalize_axis`): 0, the release's default,
  normalises each embedding dimension across the B*num_crops crops of the
  batch; -1 (the textbook variant) normalises each embedding.
  """

  value_range = "standardization"

  def __init__(self, backbone: models.Backbone, num_classes: int,
               image_size: int = 224, num_crops: int = 8, embed_dim: int = 1000,
               margin: float = 0.5, normalize_axis: int = 0):
    # num_classes is unused: the labels are the crops' source images.
    super().__init__(backbone, num_classes, image_size=image_size,
                     num_crops=num_crops, embed_dim=embed_dim, margin=margin,
                     normalize_axis=normalize_axis)
    self.image_size = image_size
    self.num_crops = num_crops
    self.margin = margin
    self.normalize_axis = normalize_axis
    self.train_preprocess = recipes.exemplar(image_size, num_crops)
    self.eval_preprocess = recipes.eval_image(image_size, "standardization")
    self.encoder = self.build_encoder(embed_dim)

  def embed(self, crops: tf.Tensor, training: bool) -> tf.Tensor:
    """Crops [B, num_crops, h, w, 3] -> normalised float32 embeddings
    [B * num_crops, embed_dim]."""
    embeddings = self.encoder(base.flatten_views(crops),
                              training=training)["logits"]
    return tf.math.l2_normalize(tf.cast(embeddings, tf.float32),
                                axis=self.normalize_axis)

  def loss(self, batch, training):
    crops = batch["image"]  # [B, num_crops, h, w, 3]
    embeddings = self.embed(crops, training)
    batch_size = tf.shape(crops)[0]
    labels = tf.repeat(tf.range(batch_size), self.num_crops)
    loss = losses.triplet_semihard_loss(labels, embeddings, margin=self.margin)
    accuracy = tf.reduce_mean(tf.reshape(
        nearest_neighbour_accuracy(labels, embeddings), [-1, self.num_crops]), axis=1)
    # The triplet loss couples the batch: each image carries the batch's mean.
    return tf.fill([batch_size], loss), {"accuracy": accuracy}
