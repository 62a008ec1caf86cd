"""Batched L-BFGS: G independent smooth problems minimised side by side.

Two interchangeable optimizers, registered in `OPTIMIZERS` under the names
that `select_l2_and_fit.optimizer` takes:
- "ours" (`minimize`): a line search that accepts the unit step when it
  decreases the objective enough, so about one evaluation per iteration;
- "tfp" (`minimize_tfp`): `tfp.optimizer.lbfgs_minimize` (Hager-Zhang line
  search, 2.5 to 3 evaluations per iteration).
Both take `value_and_gradients: [G, n] -> (values [G], gradients [G, n])`, stop
each problem when its gradient's largest absolute entry is at most `tolerance`
(the same test; a stopped problem no longer moves) and return an
`Optimum`. Both run inside a `tf.function`.
"""
import collections

import tensorflow as tf

from tfrevisit.registry import Registry

OPTIMIZERS = Registry("L-BFGS optimizer")

# position [G, n]; iterations, evaluations [G] int32 (tfp counts for the
# batch, so all G share its numbers); converged [G] bool; values [G].
Optimum = collections.namedtuple(
    "Optimum", ["position", "iterations", "evaluations", "converged", "values"])

# Pairs kept, Armijo constant, relative change of the objective that counts
# as no change, line search trials at most.
_MEMORY = 10
_ARMIJO = 1e-4
_FLAT = 1e-7
_MAX_STEP_TRIALS = 30


def _direction(gradient, steps, changes, rho, gamma):
  """The L-BFGS two-loop recursion for G problems at once.

  Args:
    gradient: [G, n].
    steps, changes: [m, G, n] the last m position steps s and gradient
      changes y, oldest first; unused or skipped pairs are zero.
    rho: [m, G] 1 / (s^T y), zero for unused pairs.
    gamma: [G] the initial inverse Hessian scale s^T y / y^T y.

  Returns:
    [G, n] the search direction -H g.
  """
  alphas = []
  q = gradient
  for i in reversed(range(_MEMORY)):
    alpha = rho[i] * tf.reduce_sum(steps[i] * q, axis=1)
    q -= alpha[:, None] * changes[i]
    alphas.append(alpha)
  r = gamma[:, None] * q
  for i, alpha in zip(range(_MEMORY), reversed(alphas)):
    beta = rho[i] * tf.reduce_sum(changes[i] * r, axis=1)
    r += (alpha - beta)[:, None] * steps[i]
  return -r


def _line_search(value_and_gradients, position, value, direction, slope,
                 active):
  """Backtracking from the unit step until the Armijo condition holds.

  Every problem starts at step 1 (accepted at once near the optimum, where
  L-BFGS's steps are well scaled) and, while it fails, takes the minimiser of
  the quadratic through f(0), f'(0) and f(step), kept in [0.1, 0.5] step.

  Args:
    value_and_gradients: [G, n] -> ([G], [G, n]).
    position, direction: [G, n].
    value, slope: [G] f(0) and its directional derivative (negative).
    active: [G] problems that search; the others keep their position.

  Returns:
    (position [G, n], value [G], gradient [G, n], found [G], trials [G]: the
    evaluations each problem needed, 0 for inactive ones).
  """
  def body(step, found, best_position, best_value, best_gradient, trials):
    new_position = position + step[:, None] * direction
    new_value, new_gradient = value_and_gradients(new_position)
    decrease = new_value - value
    # Armijo, or Hager and Zhang's approximate Wolfe condition for when the
    # decrease is below the objective's float32 rounding.
    approximate_wolfe = (
        (decrease <= _FLAT * tf.abs(value))
        & (tf.reduce_sum(new_gradient * direction, axis=1)
           <= (2 * _ARMIJO - 1) * slope))
    ok = found | (tf.math.is_finite(new_value)
                  & ((decrease <= _ARMIJO * step * slope) | approximate_wolfe))
    quadratic = -slope * step ** 2 / (2.0 * (decrease - slope * step))
    next_step = tf.where(
        tf.math.is_finite(quadratic),
        tf.clip_by_value(quadratic, 0.1 * step, 0.5 * step), 0.1 * step)
    newly = ok & ~found
    return (tf.where(ok, step, next_step), ok,
            tf.where(newly[:, None], new_position, best_position),
            tf.where(newly, new_value, best_value),
            tf.where(newly[:, None], new_gradient, best_gradient),
            trials + tf.cast(~found, tf.int32))

  _, found, position, value, gradient, trials = tf.while_loop(
      lambda step, found, *args: (~tf.reduce_all(found))
      & (tf.reduce_max(args[-1]) < _MAX_STEP_TRIALS),
      body, (tf.ones_like(value), ~active, position, value,
             tf.zeros_like(position), tf.zeros(tf.shape(value), tf.int32)))
  return position, value, gradient, found, trials


@OPTIMIZERS.register("ours")
def minimize(value_and_gradients, initial_position, max_iterations,
             tolerance) -> Optimum:
  """Batched L-BFGS whose line search tries the unit step first.

  Each of the G problems has its own history, stopping test, line search and
  counters; the loop runs until all have stopped (converged, or a line search
  that found no lower point) or `max_iterations`. Pairs with
  s^T y <= 1e-10 y^T y are not stored (the line search does not enforce the
  curvature condition).

  Args:
    value_and_gradients: [G, n] -> (values [G], gradients [G, n]).
    initial_position: [G, n] float64.
    max_iterations: iteration budget.
    tolerance: a problem converges when its gradient's largest absolute entry
      is at most this.

  Returns:
    The Optimum; `evaluations` counts the initial one.
  """
  value, gradient = value_and_gradients(initial_position)
  converged = tf.reduce_max(tf.abs(gradient), axis=1) <= tolerance
  history = tf.zeros(tf.concat([[_MEMORY], tf.shape(initial_position)], 0),
                     initial_position.dtype)
  counts = tf.zeros(tf.shape(value), tf.int32)

  def body(iteration, iterations, evaluations, position, value, gradient,
           steps, changes, rho, gamma, converged, failed):
    active = ~(converged | failed)
    direction = _direction(gradient, steps, changes, rho, gamma)
    slope = tf.reduce_sum(direction * gradient, axis=1)
    # Not a descent direction (rounding): steepest descent instead.
    descent = slope < 0
    direction = tf.where(descent[:, None], direction, -gradient)
    slope = tf.where(descent, slope, -tf.reduce_sum(gradient ** 2, axis=1))
    new_position, new_value, new_gradient, found, trials = _line_search(
        value_and_gradients, position, value, direction, slope, active)
    moved = active & found
    step = tf.where(moved[:, None], new_position - position, 0.0)
    change = tf.where(moved[:, None], new_gradient - gradient, 0.0)
    step_change = tf.reduce_sum(step * change, axis=1)
    change_change = tf.reduce_sum(change * change, axis=1)
    curved = moved & (step_change > 1e-10 * change_change)

    def pushed(history, latest):
      return tf.concat([history[1:], latest[None]], 0)
    return (
        iteration + 1, iterations + tf.cast(active, tf.int32),
        evaluations + trials,
        tf.where(moved[:, None], new_position, position),
        tf.where(moved, new_value, value),
        tf.where(moved[:, None], new_gradient, gradient),
        pushed(steps, tf.where(curved[:, None], step, 0.0)),
        pushed(changes, tf.where(curved[:, None], change, 0.0)),
        pushed(rho, tf.where(curved, 1.0 / step_change, 0.0)),
        tf.where(curved, step_change / change_change, gamma),
        converged | (moved & (tf.reduce_max(tf.abs(new_gradient), axis=1)
                              <= tolerance)),
        failed | (active & ~found))

  state = tf.while_loop(
      lambda iteration, *state: (
          (iteration < max_iterations)
          & ~tf.reduce_all(state[-2] | state[-1])),
      body,
      (tf.constant(0), counts, counts + 1, initial_position, value, gradient,
       history, history, history[:, :, 0], tf.ones_like(value), converged,
       tf.zeros_like(converged)))
  _, iterations, evaluations, position, value = state[:5]
  return Optimum(position, iterations, evaluations, state[-2], value)


@OPTIMIZERS.register("tfp")
def minimize_tfp(value_and_gradients, initial_position, max_iterations,
                 tolerance) -> Optimum:
  """`tfp.optimizer.lbfgs_minimize` on the batch, with `minimize`'s interface.

  tfp stops each problem on the same test (the gradient's supremum norm at
  most `tolerance`) and freezes stopped problems; it counts iterations and
  evaluations for the batch, which every problem reports.
  """
  # Imported here: tensorflow-probability is slow to import and needs tf_keras.
  import tensorflow_probability as tfp  # pylint: disable=g-import-not-at-top
  result = tfp.optimizer.lbfgs_minimize(
      value_and_gradients, initial_position, num_correction_pairs=_MEMORY,
      tolerance=tolerance, max_iterations=max_iterations)
  shared = tf.ones(tf.shape(result.objective_value), tf.int32)
  return Optimum(result.position, shared * result.num_iterations,
                 shared * result.num_objective_evaluations, result.converged,
                 result.objective_value)
