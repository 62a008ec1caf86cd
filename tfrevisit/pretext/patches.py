"""What the patch tasks (relative patch location, jigsaw) share: patch
embeddings and the fc-BN-ReLU-dropout-fc head over their concatenations."""
import keras
import tensorflow as tf

from tfrevisit.models import layers
from tfrevisit.pretext import base

NUM_PATCHES = 9  # a 3x3 grid
HEAD_WEIGHT_DECAY = 5e-4
HEAD_FC1_BIAS = 0.1
HEAD_BATCH_NORM_MOMENTUM = 0.997
HEAD_BATCH_NORM_EPSILON = 1e-5


def patch_embeddings(encoder: keras.Model, patches: tf.Tensor, training: bool
                     ) -> tf.Tensor:
  """One backbone call on all patches: [B, 9, h, w, 3] -> float32 [B, 9, D]."""
  embeddings = encoder(base.flatten_views(patches), training=training)["logits"]
  return tf.reshape(tf.cast(embeddings, tf.float32),
                    [-1, NUM_PATCHES, embeddings.shape[-1]])


def build_head(input_dim: int, num_outputs: int, hidden: int = 4096,
               dropout: float = 0.5, name: str = "head",
               numerics: layers.Numerics = layers.DEFAULT_NUMERICS
               ) -> keras.Model:
  """fc(hidden)-BN-ReLU-dropout-fc(num_outputs), float32, weight decay 5e-4.

  Maps concatenated embeddings [N, input_dim] to logits [N, num_outputs]. As in
  the paper's release: Glorot-uniform kernels (the backbone's
  `kernel_initializer`: tasks pass `backbone.numerics`; its BatchNorm settings
  do not apply here),
  the first fc's bias starts at 0.1, and the BatchNorm has momentum 0.997 and
  epsilon 1e-5.
  """
  dense = lambda units, layer_name, bias: keras.layers.Dense(
      units, kernel_initializer=layers.kernel_initializer(numerics),
      bias_initializer=keras.initializers.Constant(bias),
      kernel_regularizer=layers.kernel_regularizer(HEAD_WEIGHT_DECAY),
      dtype="float32", name=layer_name)
  inputs = keras.Input((input_dim,), name="embeddings")
  x = dense(hidden, "fc1", HEAD_FC1_BIAS)(inputs)
  x = keras.layers.BatchNormalization(
      momentum=HEAD_BATCH_NORM_MOMENTUM, epsilon=HEAD_BATCH_NORM_EPSILON,
      dtype="float32", name="fc1_bn")(x)
  x = keras.layers.ReLU(dtype="float32")(x)
  x = keras.layers.Dropout(dropout, dtype="float32")(x)
  return keras.Model(inputs, dense(num_outputs, "fc2", 0.0)(x), name=name)
