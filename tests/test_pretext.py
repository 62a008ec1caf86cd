"""Pretext tasks: label layouts against hand-made inputs, and overfitting."""
import gin
import keras
import numpy as np
import pytest
import tensorflow as tf

from tfrevisit import pretext
from tfrevisit import train
from tfrevisit.data import get_preprocess_fn
from tfrevisit.pretext import exemplar
from tfrevisit.pretext import jigsaw
from tfrevisit.pretext import relative_patch_location as relpatch


@pytest.fixture(autouse=True)
def _clean_gin():
  gin.clear_config()
  yield
  gin.clear_config()


def _nine_colour_image(cell=8):
  """A 3x3 grid of constant cells; cell i (row-major) has value 10 * (i + 1)."""
  values = 10 * (np.arange(9) + 1)
  grid = values.reshape(3, 3).repeat(cell, 0).repeat(cell, 1)
  return np.repeat(grid[..., None], 3, axis=-1).astype(np.uint8)


def test_relpatch_pairs_follow_the_labels():
  patches = get_preprocess_fn("crop_patches(3, 0)", training=False)(
      {"image": tf.constant(_nine_colour_image())})["image"]
  # Identity-like embedding: a patch's constant value identifies its cell.
  embeddings = tf.reduce_mean(tf.cast(patches, tf.float32), axis=[1, 2])[None]  # [1, 9, 3]
  pairs = relpatch.neighbour_centre_pairs(embeddings).numpy()[0]  # [8, 6]
  for label, (neighbour, centre) in enumerate(zip(pairs[:, 0], pairs[:, 3])):
    expected_cell = label if label < 4 else label + 1  # skip the centre cell 4
    assert neighbour == 10 * (expected_cell + 1)
    assert centre == 10 * (4 + 1)


def test_jigsaw_permuted_concat_places_patch_p_i_at_slot_i():
  rng = np.random.default_rng(0)
  embeddings = rng.normal(size=(2, 9, 3)).astype(np.float32)
  permutations = jigsaw.max_hamming_permutations(100, 9)[[5, 17, 99]]
  got = jigsaw.permuted_concat(tf.constant(embeddings), tf.constant(permutations))
  assert got.shape == (2, 3, 27)
  for b in range(2):
    for p, perm in enumerate(permutations):
      expected = np.concatenate([embeddings[b, perm[i]] for i in range(9)])
      np.testing.assert_array_equal(got[b, p], expected)


def test_nearest_neighbour_accuracy_by_hand():
  embeddings = tf.constant([[0.0, 0.0], [0.1, 0.0], [5.0, 5.0], [5.0, 5.2], [0.2, 0.0]])
  labels = tf.constant([0, 0, 1, 1, 1])
  np.testing.assert_array_equal(
      exemplar.nearest_neighbour_accuracy(labels, embeddings), [1, 1, 1, 1, 0])


TASK_SETUPS = {
    "exemplar": (["exemplar.image_size = 32", "exemplar.num_crops = 4",
                  "exemplar.embed_dim = 16"], (4, 32)),
    "relative_patch_location": (["relative_patch_location.patch_size = 16",
                                 "relative_patch_location.embed_dim = 16",
                                 "relative_patch_location.head_hidden = 64"], (9, 16)),
    "jigsaw": (["jigsaw.patch_size = 16", "jigsaw.embed_dim = 16",
                "jigsaw.head_hidden = 64", "jigsaw.num_permutations = 10",
                "jigsaw.perm_subset_size = 10"], (9, 16)),
}


@pytest.mark.parametrize("name", sorted(TASK_SETUPS))
def test_task_overfits_a_fixed_batch(name):
  bindings, (views, size) = TASK_SETUPS[name]
  gin.parse_config(['backbone.name = "resnet50_v1"', "backbone.filters_factor = 1"]
                   + bindings)
  keras.utils.set_random_seed(0)
  task = pretext.get_task(name, num_classes=10)
  images = tf.random.stateless_normal([8, views, size, size, 3], [1, 2])
  batch = {"image": images, "label": tf.zeros([8], tf.int32)}
  optimizer = keras.optimizers.SGD(0.05, momentum=0.9)
  optimizer.build(task.trainable_variables)
  step = train.make_train_step(task, optimizer, tf.distribute.get_strategy(), 8)
  iterator = iter(tf.data.Dataset.from_tensors(batch).repeat())
  losses = [float(step(iterator)["loss"]) / 8 for _ in range(25)]
  assert losses[-1] < 0.7 * losses[0], losses
