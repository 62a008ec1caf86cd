"""The trainer benchmark compares like with like: fit minimises our loss."""
import keras
import numpy as np
import pytest
import tensorflow as tf

from tfrevisit import models
from tfrevisit.bench import trainer
from tfrevisit.training import loop


@pytest.mark.slow  # Two traced ResNet50 steps: ~30-60 s on a loaded CPU.
def test_fit_model_computes_the_loss_of_our_step():
  task = trainer._build_task("rotation", models.Backbone("resnet50_v2", 1), 32)  # pylint: disable=protected-access
  batch = trainer._batch(task, 4, 32)  # pylint: disable=protected-access
  dataset = tf.data.Dataset.from_tensors(batch).repeat()
  # A zero learning rate keeps the weights, so both see the same ones.
  model = trainer.FitModel(task)
  model.compile(optimizer=keras.optimizers.SGD(0.0), jit_compile=False)
  history = model.fit(dataset, steps_per_epoch=1, epochs=1, verbose=0,
                      shuffle=False).history
  optimizer = keras.optimizers.SGD(0.0)
  optimizer.build(task.trainable_variables)
  step = loop.make_train_step(task, optimizer, tf.distribute.get_strategy(), 4)
  sums = step(iter(dataset))
  ours = float(sums["loss"]) / 4 + float(sums["regularization"])
  np.testing.assert_allclose(history["loss"][0], ours, rtol=1e-5)
