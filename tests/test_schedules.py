"""The learning-rate schedule against the paper's formula, computed by hand."""
import numpy as np
import pytest

from tfrevisit import schedules

# The rotation recipe at batch 64: base rate 0.1 * 64 / 256, 100 steps/epoch.
BASE_LR, STEPS_PER_EPOCH = 0.1 * 64 / 256, 100


@pytest.fixture(name="schedule")
def _schedule():
  return schedules.WarmupStepDecay(
      base_lr=BASE_LR, warmup_steps=5 * STEPS_PER_EPOCH,
      decay_steps=[15 * STEPS_PER_EPOCH, 25 * STEPS_PER_EPOCH], decay_factor=0.1)


@pytest.mark.parametrize("step,expected", [
    (0, BASE_LR / 500),                  # first warm-up step: not 0
    (1, BASE_LR * 2 / 500),
    (249, BASE_LR * 250 / 500),          # halfway through warm-up
    (499, BASE_LR),                      # last warm-up step reaches the base
    (500, BASE_LR),                      # end of warm-up
    (1499, BASE_LR),                     # just before the first decay
    (1500, BASE_LR * 0.1),               # first decay boundary
    (2499, BASE_LR * 0.1),
    (2500, BASE_LR * 0.01),              # second decay boundary
    (3499, BASE_LR * 0.01),              # last step of 35 epochs
])
def test_schedule_matches_formula(schedule, step, expected):
  np.testing.assert_allclose(float(schedule(step)), expected, rtol=1e-6, atol=1e-9)


def test_no_warmup_starts_at_base_rate():
  schedule = schedules.WarmupStepDecay(base_lr=0.4, warmup_steps=0)
  assert float(schedule(0)) == pytest.approx(0.4)
  assert float(schedule(10**6)) == pytest.approx(0.4)


def test_config_round_trip(schedule):
  clone = schedules.WarmupStepDecay.from_config(schedule.get_config())
  for step in (0, 700, 2600):
    assert float(clone(step)) == pytest.approx(float(schedule(step)))
