r"""Trains a linear or MLP probe with Keras `fit` on a frozen exported encoder.

Needs only TensorFlow and Keras 3, not tfrevisit. The encoder is a frozen
`keras.layers.TFSMLayer(path, call_endpoint="representation")`:

  python export/keras_probe.py --saved_model DIR/export/latest \
      --image_dir train_images/ --end_point pre_logits --probe mlp --epochs 10

Images go through the SavedModel's own `preprocess` in the input pipeline
(image models only: patch models need their nine patch outputs combined, which
export/extract_features.py does).
"""
import argparse
import os
import sys

import keras
import tensorflow as tf

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import extract_features  # pylint: disable=g-import-not-at-top,wrong-import-position


def build_probe(saved_model, input_shape, end_point, num_classes, probe="linear"):
  """Frozen encoder end point -> (global average pool) -> linear or MLP head."""
  images = keras.Input(input_shape, name="images")
  encoder = keras.layers.TFSMLayer(saved_model, call_endpoint="representation",
                                   trainable=False)
  features = encoder(images)[end_point]
  if len(features.shape) == 4:
    features = keras.layers.GlobalAveragePooling2D()(features)
  if probe == "mlp":
    features = keras.layers.Dense(1000, activation="relu")(features)
    features = keras.layers.Dropout(0.5)(features)
  logits = keras.layers.Dense(num_classes)(features)
  return keras.Model(images, logits)


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--saved_model", required=True)
  parser.add_argument("--image_dir", required=True,
                      help="training images, one sub-folder per class.")
  parser.add_argument("--val_dir", default=None, help="validation images, same layout.")
  parser.add_argument("--end_point", default="pre_logits")
  parser.add_argument("--probe", choices=("linear", "mlp"), default="linear")
  parser.add_argument("--epochs", type=int, default=10)
  parser.add_argument("--batch_size", type=int, default=32)
  parser.add_argument("--learning_rate", type=float, default=0.01)
  args = parser.parse_args(argv)

  model = tf.saved_model.load(args.saved_model)
  train = extract_features.image_folder_dataset(args.image_dir)
  num_classes = int(train.reduce(0, lambda m, x: tf.maximum(m, x[1]))) + 1
  train = extract_features.preprocessed(model, train.shuffle(1024, seed=0),
                                        args.batch_size)
  val = None
  if args.val_dir:
    val = extract_features.preprocessed(
        model, extract_features.image_folder_dataset(args.val_dir), args.batch_size)
  input_shape = train.element_spec[0].shape[1:]
  if len(input_shape) != 3:
    raise ValueError("keras_probe.py handles image models; for patch models use "
                     "export/extract_features.py, which combines the patches.")
  probe = build_probe(args.saved_model, input_shape, args.end_point, num_classes,
                      args.probe)
  probe.compile(
      optimizer=keras.optimizers.SGD(args.learning_rate, momentum=0.9),
      loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
      metrics=["accuracy"])
  history = probe.fit(train, validation_data=val, epochs=args.epochs, verbose=2)
  return history.history


if __name__ == "__main__":
  main()
