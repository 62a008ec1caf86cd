"""The logistic-regression objective and its batched, preconditioned L-BFGS.

G problems side by side (one per L2 value), each minimising

  mean_i cross_entropy(x_i W + b, y_i) + l2 / 2 * ||W||^2   (b not penalised)

in the preconditioned coordinates q = P^T [W; b] (`preconditioning`), with
the L-BFGS of `lbfgs`. Every evaluation reads the features once for all G
problems, either from memory in cache-sized row blocks or, for features
larger than memory, in chunks read from NumPy arrays (memory-mapped arrays
work). `traced_minimizer` returns the traced computation for each setting;
`logistic_regression.fit_logistic_regression_grid` is the API.
"""
import functools
import itertools

import numpy as np
import tensorflow as tf

from tfrevisit.evaluation import lbfgs


def _chunk_statistics(params, features, labels):
  """Summed cross-entropy over a chunk and its gradient, for G problems at once.

  The G problems' weights are stacked into one [D + 1, G * C] matrix, so that
  the chunk is read once per matmul for all of them. The matmuls run in the
  features' float32; sums are returned in the float64 of `params`, so that the
  optimiser can resolve the objective well below float32's 1e-7 relative
  precision (otherwise the weights would only be determined to about 1e-3 on
  ill-conditioned problems).

  Args:
    params: [G, D + 1, C] float64 weights with the bias as the last row.
    features: [n, D] float32.
    labels: [n] int32 class ids.

  Returns:
    (summed cross-entropy: [G] float64, its gradient transposed:
    [G, C, D + 1] float64).
  """
  num_problems, num_params, num_classes = tf.unstack(tf.shape(params))
  stacked = tf.reshape(tf.transpose(tf.cast(params, features.dtype), [1, 0, 2]),
                       [num_params, num_problems * num_classes])
  logits = tf.reshape(tf.matmul(features, stacked[:-1]) + stacked[-1],
                      [-1, num_problems, num_classes])
  log_normaliser = tf.reduce_logsumexp(logits, axis=2, keepdims=True)
  label_logits = tf.gather(logits, labels, axis=2, batch_dims=1)
  summed_cross_entropy = tf.reduce_sum(
      tf.cast(log_normaliser[..., 0] - label_logits, params.dtype), axis=0)
  residual = tf.reshape(
      tf.exp(logits - log_normaliser)
      - tf.one_hot(labels, num_classes, dtype=logits.dtype)[:, None],
      [-1, num_problems * num_classes])
  # residual^T features ([G C, D]) runs 3-7x faster on CPU than the
  # features^T residual ([D, G C]) that would need no transpose.
  gradient_t = tf.concat([
      tf.matmul(residual, features, transpose_a=True),
      tf.transpose(tf.reduce_sum(residual, axis=0, keepdims=True))], axis=1)
  return summed_cross_entropy, tf.cast(
      tf.reshape(gradient_t, [num_problems, num_classes, num_params]),
      params.dtype)


# XLA measured 2.5-3.5x slower than plain TensorFlow (oneDNN) for this on CPU.
_CHUNK_STATISTICS = {
    jit: tf.function(_chunk_statistics, jit_compile=jit, autograph=False)
    for jit in (False, True)}


def _minimize(summed_statistics, num_examples, initial_params, preconditioner,
              l2, max_iterations, tolerance, *, diagonal, optimizer):
  """Runs batched L-BFGS on G regularised mean cross-entropies, preconditioned.

  Problem g's L-BFGS sees q_g = P_g^T params_g and the gradient P_g^-1 g_g:
  P_g is the lower-triangular `preconditioner[g]` ([D + 1, D + 1]), or with
  `diagonal` the diagonal matrix of `preconditioner[g]` ([D + 1, 1]). Every
  problem has its own L-BFGS state and stopping test; all are evaluated
  together until all have stopped.

  Args:
    summed_statistics: params [G, D + 1, C] -> (summed cross-entropies [G],
      their transposed gradients [G, C, D + 1]) over the whole training set.
    num_examples: N.
    initial_params: [G, D + 1, C] starting points, the bias as last row.
    preconditioner: see `preconditioning.preconditioner`.
    l2: [G] L2 strengths.
    max_iterations, tolerance: see `fit_logistic_regression_grid`.
    diagonal: whether `preconditioner` is diagonal.
    optimizer: a name in `lbfgs.OPTIMIZERS`.

  Returns:
    (params [G, D + 1, C], iterations [G], evaluations [G], converged [G],
    objective values [G]).
  """
  shape = tf.shape(initial_params)
  num_examples = tf.cast(num_examples, initial_params.dtype)
  if diagonal:
    to_params = lambda q: q / preconditioner
    to_q = lambda params: params * preconditioner
    q_gradient_of = lambda gradient: gradient / preconditioner
  else:
    to_params = lambda q: tf.linalg.triangular_solve(
        preconditioner, q, lower=True, adjoint=True)
    to_q = lambda params: tf.matmul(preconditioner, params, transpose_a=True)
    q_gradient_of = lambda gradient: tf.linalg.triangular_solve(
        preconditioner, gradient, lower=True)

  def value_and_gradients(flat_q):
    params = to_params(tf.reshape(flat_q, shape))
    summed_cross_entropy, gradient_t = summed_statistics(params)
    weights = params[:, :-1]
    loss = (summed_cross_entropy / num_examples
            + 0.5 * l2 * tf.reduce_sum(tf.square(weights), axis=[1, 2]))
    gradient = (tf.transpose(gradient_t, [0, 2, 1]) / num_examples
                + l2[:, None, None] * tf.pad(weights, [[0, 0], [0, 1], [0, 0]]))
    return loss, tf.reshape(q_gradient_of(gradient), [shape[0], -1])

  optimum = lbfgs.OPTIMIZERS.get(optimizer)(
      value_and_gradients, tf.reshape(to_q(initial_params), [shape[0], -1]),
      max_iterations, tolerance)
  return (to_params(tf.reshape(optimum.position, shape)), optimum.iterations,
          optimum.evaluations, optimum.converged, optimum.values)


def _summed_over_chunks(read_chunk, num_chunks, jit_compile):
  """Builds params -> `_chunk_statistics` summed over all chunks.

  Args:
    read_chunk: index -> (features [n, D] float32, labels [n] int32).
    num_chunks: number of chunks.
    jit_compile: XLA-compile the per-chunk computation.
  """
  chunk_statistics = _CHUNK_STATISTICS[jit_compile]

  def summed_statistics(params):
    def accumulate(index, cross_entropy, gradient):
      chunk_cross_entropy, chunk_gradient = chunk_statistics(
          params, *read_chunk(index))
      return (index + 1, cross_entropy + chunk_cross_entropy,
              gradient + chunk_gradient)

    # Two chunks in flight: one per core, and the next is read meanwhile.
    _, cross_entropy, gradient = tf.while_loop(
        lambda index, *_: index < num_chunks, accumulate,
        (tf.constant(0), tf.zeros(tf.shape(params)[:1], params.dtype),
         tf.zeros(tf.gather(tf.shape(params), [0, 2, 1]), params.dtype)),
        parallel_iterations=2)
    return cross_entropy, gradient
  return summed_statistics


def _minimize_in_memory(features, labels, block_size, *options, jit_compile,
                        **settings):
  """L-BFGS over in-memory features, evaluated in cache-sized row blocks."""
  def read_block(index):
    rows = slice(index * block_size, (index + 1) * block_size)
    return features[rows], labels[rows]

  num_examples = tf.shape(labels)[0]
  num_blocks = (num_examples + block_size - 1) // block_size
  return _minimize(_summed_over_chunks(read_block, num_blocks, jit_compile),
                   num_examples, *options, **settings)


# initial_params [G, D + 1, C], preconditioner [G, D + 1, D + 1 or 1], l2 [G],
# max_iterations, tolerance; the optimiser's state is float64 (see
# `_chunk_statistics`).
_OPTIONS_SPEC = (tf.TensorSpec([None, None, None], tf.float64),
                 tf.TensorSpec([None, None, None], tf.float64),
                 tf.TensorSpec([None], tf.float64),
                 tf.TensorSpec([], tf.int32),
                 tf.TensorSpec([], tf.float64))
_SCALAR_INT = tf.TensorSpec([], tf.int32)
_SCALAR_INT64 = tf.TensorSpec([], tf.int64)
_IN_MEMORY_SPEC = (tf.TensorSpec([None, None], tf.float32),
                   tf.TensorSpec([None], tf.int32), _SCALAR_INT)


class ChunkedMinimizer:
  """L-BFGS whose every evaluation streams the chunks from NumPy arrays.

  The traced graph reads its chunks through `tf.numpy_function` with a key
  (a tensor) into this object's arrays of the fits in progress, so that it
  captures no fit's arrays and is traced once per setting.
  """

  def __init__(self, jit_compile: bool, diagonal: bool, optimizer: str):
    self._arrays = {}
    self._keys = itertools.count()
    self._traced = tf.function(
        functools.partial(self._minimize, jit_compile=jit_compile,
                          diagonal=diagonal, optimizer=optimizer),
        input_signature=(_SCALAR_INT64, _SCALAR_INT, _SCALAR_INT)
        + _OPTIONS_SPEC, autograph=False)

  def __call__(self, features, labels, chunk_size: int, *options):
    """Fits on `features` [N, D] and `labels` [N], read `chunk_size` rows at
    a time; `options` as `_OPTIONS_SPEC`."""
    key = next(self._keys)
    self._arrays[key] = (features, labels, chunk_size)
    try:
      return self._traced(tf.constant(key, tf.int64), tf.constant(len(labels)),
                          tf.constant(-(-len(labels) // chunk_size)), *options)
    finally:
      del self._arrays[key]

  def _read_chunk(self, key, index):
    features, labels, chunk_size = self._arrays[int(key)]
    rows = slice(index * chunk_size, (index + 1) * chunk_size)
    return (np.asarray(features[rows], np.float32),
            np.asarray(labels[rows], np.int32))

  def _minimize(self, key, num_examples, num_chunks, *options, jit_compile,
                **settings):
    def read_chunk(index):
      features, labels = tf.numpy_function(
          self._read_chunk, [key, index], (tf.float32, tf.int32),
          stateful=False)
      return (tf.ensure_shape(features, [None, None]),
              tf.ensure_shape(labels, [None]))

    return _minimize(_summed_over_chunks(read_chunk, num_chunks, jit_compile),
                     num_examples, *options, **settings)


@functools.lru_cache(maxsize=None)
def traced_minimizer(chunked: bool, jit_compile: bool, diagonal: bool,
                     optimizer: str):
  """The traced L-BFGS of one setting, made once per process and setting.

  Shapes are left unknown, so that every split, end point and L2 value
  reuses the same graph. In memory (`chunked` False): called as
  (features [N, D] float32, labels [N] int32, block_size, *options);
  chunked: as (features, labels, chunk_size, *options) with NumPy arrays
  (`ChunkedMinimizer`). `options`: initial_params [G, D + 1, C],
  preconditioner [G, D + 1, D + 1 or 1], l2 [G], max_iterations, tolerance.
  Returns (params [G, D + 1, C], iterations [G], evaluations [G], converged
  [G], objective values [G]).
  """
  if chunked:
    return ChunkedMinimizer(jit_compile, diagonal, optimizer)
  return tf.function(
      functools.partial(_minimize_in_memory, jit_compile=jit_compile,
                        diagonal=diagonal, optimizer=optimizer),
      input_signature=_IN_MEMORY_SPEC + _OPTIONS_SPEC, autograph=False)
