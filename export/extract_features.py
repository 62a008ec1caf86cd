r"""Extracts features of chosen end points from an exported tfrevisit SavedModel.

Needs only TensorFlow (and tensorflow-datasets for --tfds), not tfrevisit:

  python export/extract_features.py --saved_model DIR/export/latest \
      --image_dir images/ --end_points block4,pre_logits --output features.npz

The SavedModel's own `preprocess` maps each uint8 image to the model input;
for patch models it returns [9, 64, 64, 3] patches whose nine representations
are averaged. Spatial end points are global-average-pooled unless
--keep_spatial is given. The .npz holds one array per end point, [N, ...],
and `labels` [N].
"""
import argparse
import os

import numpy as np
import tensorflow as tf

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png")


def image_folder_dataset(root):
  """(uint8 image [H, W, 3], label) pairs from one sub-folder per class."""
  if not os.path.isdir(root):
    raise FileNotFoundError(f"--image_dir {root!r} is not a directory.")
  classes = sorted(d for d in os.listdir(root) if os.path.isdir(os.path.join(root, d)))
  paths, labels = [], []
  for label, name in enumerate(classes):
    for file in sorted(os.listdir(os.path.join(root, name))):
      if file.lower().endswith(IMAGE_EXTENSIONS):
        paths.append(os.path.join(root, name, file))
        labels.append(label)
  if not paths:
    raise FileNotFoundError(f"No JPEG/PNG images in class sub-folders of {root!r}.")
  decode = lambda path: tf.io.decode_image(tf.io.read_file(path), channels=3,
                                           expand_animations=False)
  return tf.data.Dataset.from_tensor_slices((paths, labels)).map(
      lambda p, l: (decode(p), l))


def tfds_dataset(name, split, data_dir):
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  ds = tfds.load(name, split=split, data_dir=data_dir, as_supervised=True)
  return ds.map(lambda image, label: (
      tf.image.grayscale_to_rgb(image) if image.shape[-1] == 1 else image, label))


def load_dataset(args):
  if args.image_dir:
    return image_folder_dataset(args.image_dir)
  return tfds_dataset(args.tfds, args.split, args.data_dir)


def preprocessed(model, dataset, batch_size):
  """Applies the model's `preprocess` to each image, then batches."""
  def prep(image, label):
    return model.preprocess(image[None])[0], label
  return dataset.map(prep).batch(batch_size)


def representations(model, images):
  """End points for a preprocessed batch; patch batches [B, 9, h, w, 3] are
  flattened and their per-patch outputs averaged."""
  if len(images.shape) == 5:
    num_patches = images.shape[1]
    flat = tf.reshape(images, [-1, *images.shape[2:]])
    outputs = _call_representation(model, flat)
    return {k: tf.reduce_mean(tf.reshape(v, [-1, num_patches, *v.shape[1:]]), 1)
            for k, v in outputs.items()}
  return _call_representation(model, images)


def _call_representation(model, images):
  """The `representation` signature, whose input key is `image` (`images` in
  exports made before tfrevisit followed the TF-Hub convention)."""
  signature = model.signatures["representation"]
  (key,) = signature.structured_input_signature[1]
  return signature(**{key: images})


def extract(model, dataset, end_points=None, keep_spatial=False, batch_size=32):
  """Returns ({end point: [N, ...] float32}, labels [N])."""
  features, labels = {}, []
  for images, batch_labels in preprocessed(model, dataset, batch_size):
    outputs = representations(model, images)
    for name in end_points or sorted(outputs):
      if name not in outputs:
        raise ValueError(f"Unknown end point {name!r}; the model has {sorted(outputs)}.")
      value = outputs[name]
      if len(value.shape) == 4 and not keep_spatial:
        value = tf.reduce_mean(value, axis=[1, 2])
      features.setdefault(name, []).append(value.numpy())
    labels.append(batch_labels.numpy())
  return {k: np.concatenate(v) for k, v in features.items()}, np.concatenate(labels)


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--saved_model", required=True)
  source = parser.add_mutually_exclusive_group(required=True)
  source.add_argument("--image_dir", help="one sub-folder of images per class.")
  source.add_argument("--tfds", help="a TFDS image-classification dataset name.")
  parser.add_argument("--split", default="test", help="TFDS split.")
  parser.add_argument("--data_dir", default=None, help="TFDS data_dir.")
  parser.add_argument("--end_points", default="",
                      help="comma-separated end points (default: all).")
  parser.add_argument("--keep_spatial", action="store_true",
                      help="keep spatial maps instead of averaging them.")
  parser.add_argument("--batch_size", type=int, default=32)
  parser.add_argument("--output", required=True, help="the .npz file to write.")
  args = parser.parse_args(argv)

  model = tf.saved_model.load(args.saved_model)
  if "representation" not in model.signatures:
    raise ValueError(f"{args.saved_model} has no 'representation' signature; "
                     "export it with `python -m tfrevisit.export`.")
  end_points = [e for e in args.end_points.split(",") if e]
  features, labels = extract(model, load_dataset(args), end_points,
                             args.keep_spatial, args.batch_size)
  np.savez(args.output, labels=labels, **features)
  print(f"Wrote {len(labels)} examples x {sorted(features)} to {args.output}.")


if __name__ == "__main__":
  main()
