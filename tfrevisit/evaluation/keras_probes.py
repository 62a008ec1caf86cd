"""Probes trained with Keras `fit` (SGD with momentum, step decays).

`mlp` and `linear_sgd` on cached features: trained on trainval, logging
top-1 / top-5 on test per epoch so that slow convergence can be plotted;
`mlp` can choose its recipe among candidates on train -> val first
(`mlp_probe.recipes`). `fit_sgd` and `history_row` also serve the probes on
images (`linear_on_images`, `finetune`).
"""
import dataclasses
import time
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence

import keras
import numpy as np

from tfrevisit.evaluation.inputs import ProbeInputs


@dataclasses.dataclass
class ProbeResult:
  """A trained probe.

  Attributes:
    top1: final-epoch top-1 accuracy on the evaluation split (fraction).
    top5: final-epoch top-5 accuracy on the evaluation split (fraction).
    history: per-epoch lists `loss`, `top1`, `top5` (training) and `val_loss`,
      `val_top1`, `val_top5` (evaluation split), as Keras reports them.
    model: the trained Keras model, features [N, D] -> logits [N, C].
    wall_time_s: training and evaluation time in seconds.
  """
  top1: float
  top5: float
  history: Dict[str, List[float]]
  model: keras.Model
  wall_time_s: float


def _dense(units, weight_decay, name):
  # Keras' L2(l) adds l * ||W||^2; weight decay wd means wd / 2 * ||W||^2.
  # No regulariser at all without decay (the release's linear layer).
  regularizer = keras.regularizers.L2(weight_decay /
                                      2) if weight_decay else None
  return keras.layers.Dense(units, kernel_regularizer=regularizer, name=name)


def _compile(model, learning_rate, decay_epochs, steps_per_epoch, momentum,
             **kwargs):
  """SGD with momentum; the learning rate drops x0.1 at each decay epoch."""
  schedule = keras.optimizers.schedules.PiecewiseConstantDecay(
      boundaries=[epoch * steps_per_epoch for epoch in decay_epochs],
      values=[learning_rate * 0.1**i for i in range(len(decay_epochs) + 1)])
  num_classes = model.layers[-1].units  # the final Dense layer
  model.compile(
      optimizer=keras.optimizers.SGD(schedule, momentum=momentum),
      loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
      metrics=[
          keras.metrics.SparseCategoricalAccuracy(name="top1"),
          keras.metrics.SparseTopKCategoricalAccuracy(
              k=min(5, num_classes), name="top5")], **kwargs)


def _result(history, model, start):
  return ProbeResult(
      top1=history.history["val_top1"][-1],
      top5=history.history["val_top5"][-1],
      history=history.history, model=model,
      wall_time_s=time.perf_counter() - start)


def _fit(model, train, evaluation, epochs, batch_size, learning_rate,
         decay_epochs, momentum):
  """Fits on in-memory (features, labels); see `_compile` for the schedule."""
  _compile(model, learning_rate, decay_epochs,
           -(-len(train[1]) // batch_size), momentum)
  start = time.perf_counter()
  history = model.fit(*train, validation_data=evaluation, epochs=epochs,
                      batch_size=batch_size, shuffle=True, verbose=0)
  return _result(history, model, start)


def fit_sgd(model: keras.Model, train: "tf.data.Dataset",
            evaluation: "tf.data.Dataset", epochs: int, steps_per_epoch: int,
            learning_rate: float, decay_epochs: Sequence[int],
            momentum: float, callbacks: Sequence[keras.callbacks.Callback] = ()
            ) -> ProbeResult:
  """Fits `model` (with a `logits` Dense layer) on a repeated dataset of
  (inputs, labels) batches, evaluating on one pass of `evaluation` after
  every epoch of `steps_per_epoch` steps; SGD as `_fit`. Not XLA-compiled,
  so `model` may call SavedModel functions. `callbacks` go to `fit`."""
  _compile(model, learning_rate, decay_epochs, steps_per_epoch, momentum,
           jit_compile=False)
  start = time.perf_counter()
  history = model.fit(train, validation_data=evaluation, epochs=epochs,
                      steps_per_epoch=steps_per_epoch, shuffle=False,
                      verbose=0, callbacks=list(callbacks))
  return _result(history, model, start)


def _check_inputs(train_features, train_labels, num_classes):
  if train_features.ndim != 2 or len(train_features) != len(train_labels):
    raise ValueError(
        f"Expected features [N, D] and labels [N]; got {train_features.shape} "
        f"and {np.shape(train_labels)}. Flatten or pool feature maps first.")
  if np.max(train_labels) >= num_classes or np.min(train_labels) < 0:
    raise ValueError(f"Labels must lie in [0, {num_classes}). Check "
                     "num_classes.")


def train_mlp(
    train_features: np.ndarray,
    train_labels: np.ndarray,
    eval_features: np.ndarray,
    eval_labels: np.ndarray,
    num_classes: int,
    hidden_units: int = 1000,
    dropout: float = 0.5,
    weight_decay: float = 1e-4,
    epochs: int = 90,
    decay_epochs: Sequence[int] = (30, 60, 80),
    batch_size: int = 256,
    learning_rate: float = 0.1,
    momentum: float = 0.9,
    seed: int = 0,
) -> ProbeResult:
  """Trains the paper's MLP probe: hidden ReLU layer, dropout, softmax.

  Args:
    train_features: [N, D] float features.
    train_labels: [N] int class ids.
    eval_features: [M, D] features evaluated after every epoch.
    eval_labels: [M] int class ids.
    num_classes: C.
    hidden_units: width of the hidden layer (1000 in the paper).
    dropout: dropout rate on the hidden layer (0.5 in the paper).
    weight_decay: wd in the loss term wd / 2 * ||W||^2 on both kernels.
    epochs: training epochs.
    decay_epochs: epochs at which the learning rate is multiplied by 0.1.
    batch_size: examples per SGD step.
    learning_rate: initial learning rate.
    momentum: SGD momentum.
    seed: seeds initialisation, dropout and shuffling (sets Keras' global
      seed).

  Returns:
    The ProbeResult.
  """
  _check_inputs(train_features, train_labels, num_classes)
  keras.utils.set_random_seed(seed)
  model = keras.Sequential([
      keras.Input([train_features.shape[1]]),
      _dense(hidden_units, weight_decay, "hidden"),
      keras.layers.ReLU(),
      keras.layers.Dropout(dropout),
      _dense(num_classes, weight_decay, "logits"),
  ], name="mlp_probe")
  return _fit(model, (train_features, train_labels),
              (eval_features, eval_labels), epochs, batch_size, learning_rate,
              decay_epochs, momentum)


def train_linear_sgd(
    train_features: np.ndarray,
    train_labels: np.ndarray,
    eval_features: np.ndarray,
    eval_labels: np.ndarray,
    num_classes: int,
    weight_decay: float = 0.0,
    epochs: int = 520,
    decay_epochs: Sequence[int] = (480, 500),
    batch_size: int = 2048,
    base_learning_rate: float = 0.1,
    momentum: float = 0.9,
    seed: int = 0,
) -> ProbeResult:
  """Trains the linear probe with SGD, as the paper's release did: the long
  schedule, learning rate 0.1 x batch_size / 256, no weight decay.

  Args:
    train_features, train_labels, eval_features, eval_labels, num_classes:
      as for `train_mlp`.
    weight_decay: wd in the loss term wd / 2 * ||W||^2 (0: the release's).
    epochs: training epochs (520 in the release's long setting).
    decay_epochs: learning rate x0.1 at these epochs ((480, 500) there).
    batch_size, momentum: SGD settings.
    base_learning_rate: the learning rate per 256 examples of a batch.
    seed: seeds initialisation and shuffling (sets Keras' global seed).

  Returns:
    The ProbeResult; `history` holds the per-epoch accuracy curves.
  """
  _check_inputs(train_features, train_labels, num_classes)
  keras.utils.set_random_seed(seed)
  model = keras.Sequential([
      keras.Input([train_features.shape[1]]),
      _dense(num_classes, weight_decay, "logits"),
  ], name="linear_probe")
  return _fit(model, (train_features, train_labels),
              (eval_features, eval_labels), epochs, batch_size,
              base_learning_rate * batch_size / 256, decay_epochs, momentum)


def history_row(result: ProbeResult) -> Dict[str, Any]:
  """The row of a probe trained for epochs: final accuracies, the per-epoch
  top-1 on the evaluation split, wall time."""
  return {"top1": result.top1, "top5": result.top5,
          "epochs": len(result.history["top1"]),
          "test_top1_per_epoch": [round(float(a), 5)
                                  for a in result.history["val_top1"]],
          "wall_time_s": result.wall_time_s}


def _recipe_text(recipe: Mapping[str, Any]) -> str:
  return ", ".join(f"{k}={v}" for k, v in sorted(recipe.items()))


def mlp_probe(inputs: ProbeInputs,
              recipes: Optional[Sequence[Mapping[str, Any]]] = None,
              fit: Callable[..., ProbeResult] = train_mlp) -> Dict[str, Any]:
  """The `mlp` probe: `fit` (the configured `train_mlp`), its recipe chosen
  on val.

  Args:
    inputs: the feature splits (`ProbeInputs.features`) and C.
    recipes: candidate recipes, each a dict of `train_mlp` arguments that
      override its configuration (e.g. {"epochs": 10, "decay_epochs": [6,
      8]}). Each is fitted on train and evaluated on val; the one with the
      best final val top-1 (the first on ties) is refitted on trainval and
      evaluated on test. None: the configured recipe alone, fitted on
      trainval (nothing to choose).
    fit: `train_mlp`, configured.

  Returns:
    `history_row` of the test fit; with recipes also "recipe" (the chosen
    one, as text), "val_top1" (its val top-1) and "val_top1_per_recipe".
  """
  splits, num_classes = inputs.features, inputs.num_classes
  (train_x, train_y), (test_x, test_y) = splits["trainval"], splits["test"]
  if not recipes:
    return history_row(fit(np.asarray(train_x), train_y, np.asarray(test_x),
                           test_y, num_classes))
  (fit_x, fit_y), (val_x, val_y) = splits["train"], splits["val"]
  fit_x, val_x = np.asarray(fit_x), np.asarray(val_x)
  val_top1 = [fit(fit_x, fit_y, val_x, val_y, num_classes, **recipe).top1
              for recipe in recipes]
  best = int(np.argmax(val_top1))
  row = history_row(fit(np.asarray(train_x), train_y, np.asarray(test_x),
                        test_y, num_classes, **recipes[best]))
  return {**row, "recipe": _recipe_text(recipes[best]),
          "val_top1": float(val_top1[best]),
          "val_top1_per_recipe": [round(float(v), 5) for v in val_top1]}


def linear_sgd_probe(inputs: ProbeInputs,
                     fit: Callable[..., ProbeResult] = train_linear_sgd
                     ) -> Dict[str, Any]:
  """The `linear_sgd` probe: `fit` (the configured `train_linear_sgd`) on
  trainval, evaluated on test every epoch; fixed hyper-parameters, so train
  and val go unused."""
  # Keras fit reads the features from memory.
  splits = inputs.features
  (train_x, train_y), (test_x, test_y) = splits["trainval"], splits["test"]
  return history_row(fit(np.asarray(train_x), train_y, np.asarray(test_x),
                         test_y, inputs.num_classes))
