"""Learning-rate schedule of the paper: linear warm-up, then step decays."""
from typing import Sequence

import keras
import tensorflow as tf


@keras.saving.register_keras_serializable("tfrevisit")
class WarmupStepDecay(keras.optimizers.schedules.LearningRateSchedule):
  """lr(step) = base_lr * (step + 1) / warmup_steps during warm-up (steps 0 to
  warmup_steps - 1), then base_lr times `decay_factor` for every boundary in
  `decay_steps` that `step` has reached.

  The first step trains (rate base_lr / warmup_steps, not 0) and the last
  warm-up step reaches base_lr. `step` is the number of updates done before
  this one (`optimizer.iterations`).

  Args:
    base_lr: learning rate after warm-up (already scaled by the batch size).
    warmup_steps: length of the linear warm-up, in steps (0: none).
    decay_steps: steps at which the rate is multiplied by `decay_factor`.
    decay_factor: the multiplier, e.g. 0.1.
  """

  def __init__(self, base_lr: float, warmup_steps: int,
               decay_steps: Sequence[int] = (), decay_factor: float = 0.1):
    self.base_lr = float(base_lr)
    self.warmup_steps = int(warmup_steps)
    self.decay_steps = [int(s) for s in decay_steps]
    self.decay_factor = float(decay_factor)

  def __call__(self, step):
    step = tf.cast(step, tf.float32)
    num_decays = tf.add_n([tf.cast(step >= b, tf.float32) for b in self.decay_steps]
                          or [tf.constant(0.0)])
    lr = self.base_lr * tf.pow(self.decay_factor, num_decays)
    if self.warmup_steps > 0:
      lr = tf.where(step < self.warmup_steps,
                    self.base_lr * (step + 1) / self.warmup_steps, lr)
    return lr

  def get_config(self):
    return {"base_lr": self.base_lr, "warmup_steps": self.warmup_steps,
            "decay_steps": self.decay_steps, "decay_factor": self.decay_factor}
