"""Pretext tasks: label layouts against hand-made inputs, and overfitting.

Every registered task must have a setup in TASK_SETUPS; a new task without one
fails `test_every_task_overfits_a_fixed_batch`.
"""
import keras
import numpy as np
import pytest
import tensorflow as tf

import doc_snippets
from tfrevisit import models
from tfrevisit import pretext
from tfrevisit.data import get_preprocess_fn
from tfrevisit.pretext import exemplar
from tfrevisit.pretext import jigsaw
from tfrevisit.pretext import relative_patch_location as relpatch
from tfrevisit.training import loop

# One unit per stage: these tests exercise the loop, files and probes, not depth.
pytestmark = pytest.mark.usefixtures("shallow_backbones")


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


def _views_batch(views, size):
  """8 images of `views` random views each, labels unused (made by the task)."""
  images = tf.random.stateless_normal([8, views, size, size, 3], [1, 2])
  return {"image": images, "label": tf.zeros([8], tf.int32)}


def _rotation_batch(size=32):
  """8 smooth images at their four rotations, labelled 0..3."""
  coarse = tf.random.stateless_uniform([8, 4, 4, 3], [1, 2], -1, 1)
  images = tf.image.resize(coarse, (size, size), method="bilinear")
  rotated = tf.stack([tf.image.rot90(images, k) for k in range(4)], axis=1)
  return {"image": rotated, "label": tf.tile(tf.range(4)[None], [8, 1])}


def _supervised_batch(size=32):
  images = tf.random.stateless_normal([8, size, size, 3], [1, 2])
  return {"image": images, "label": tf.range(8) % 2}


# Every registered task: small options and a batch maker.
TASK_SETUPS = {
    "exemplar": (dict(image_size=32, num_crops=4, embed_dim=16),
                 lambda: _views_batch(4, 32)),
    "jigsaw": (dict(patch_size=16, embed_dim=16, head_hidden=64,
                    num_permutations=10, perm_subset_size=10),
               lambda: _views_batch(9, 16)),
    "relative_patch_location": (dict(patch_size=16, embed_dim=16, head_hidden=64),
                                lambda: _views_batch(9, 16)),
    "rotation": (dict(image_size=32), _rotation_batch),
    "supervised": (dict(image_size=32), _supervised_batch),
}


OVERFIT_STEPS = {"relative_patch_location": 40}


def _train_steps(task, batch, num_steps, learning_rate=0.05):
  """Per-image losses of `num_steps` SGD steps on one batch of 8 images."""
  optimizer = keras.optimizers.SGD(learning_rate, momentum=0.9)
  optimizer.build(task.trainable_variables)
  step = loop.make_train_step(task, optimizer, tf.distribute.get_strategy(), 8)
  iterator = iter(tf.data.Dataset.from_tensors(batch).repeat())
  return [float(step(iterator)["loss"]) / 8 for _ in range(num_steps)]


@pytest.mark.parametrize("name", pretext.TASKS.names())
def test_every_task_overfits_a_fixed_batch(name):
  if name not in TASK_SETUPS:
    pytest.fail(f"Task {name!r} has no entry in TASK_SETUPS: add its small "
                "options and a batch maker.")
  options, make_batch = TASK_SETUPS[name]
  keras.utils.set_random_seed(0)
  task = pretext.get_task(name, backbone=models.Backbone("resnet50_v1", 1),
                          num_classes=2, **options)
  assert task.name == name and options.items() <= task.options.items()
  # The release's patch head (Glorot, fc1 bias 0.1) starts slower: 25 steps
  # took relative patch location from 2.63 to 1.91 (x0.73).
  losses = _train_steps(task, make_batch(), OVERFIT_STEPS.get(name, 25))
  assert losses[-1] < 0.7 * losses[0], losses


def test_rotation_on_revnet_trains_without_gin():
  """A task built and trained in plain Python: no gin binding, no parse."""
  keras.utils.set_random_seed(0)
  backbone = models.Backbone("revnet50", filters_factor=1,
                             options={"memory_efficient": True})
  task = pretext.get_task("rotation", backbone=backbone, num_classes=10,
                          image_size=32)
  assert task.backbone == backbone
  assert task.encoder.output["pre_logits"].shape[-1] == 512
  before = [v.numpy() for v in task.encoder.trainable_variables]
  losses = _train_steps(task, _rotation_batch(), 1)
  assert np.isfinite(losses).all()
  after = task.encoder.trainable_variables
  assert any(not np.allclose(b, a.numpy()) for b, a in zip(before, after))


def test_doc_library_snippet_builds_a_task_without_gin():
  """The `<!-- library: NAME -->` snippet of README.md and docs/*.md."""
  assert sorted(doc_snippets.snippets("library")) == ["task_without_gin"]
  task = doc_snippets.run("library", "task_without_gin", {})["task"]
  assert task.name == "rotation"
  assert task.backbone == models.Backbone("revnet50", filters_factor=2)
  assert task.options == {"image_size": 32}


def test_task_options_are_checked():
  with pytest.raises(ValueError, match="task 'rotation': no option \\['patch_size'\\]"):
    pretext.get_task("rotation", backbone=models.Backbone("resnet50_v1", 1),
                     num_classes=10, patch_size=16)
