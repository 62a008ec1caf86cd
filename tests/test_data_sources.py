"""Tests of the data sources: splits, sizes, files, Fashion-MNIST, TFDS."""
import gzip
import logging
import os

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

from tfrevisit import data
from tfrevisit.data import fashion_mnist
from tfrevisit.data import sources


def _images_and_labels(source, split, batch_size=100_000):
  """All (images, labels) of one pass, as arrays."""
  ds = source.as_dataset(split).batch(batch_size)
  batches = list(ds.as_numpy_iterator())
  return (np.concatenate([b["image"] for b in batches]),
          np.concatenate([b["label"] for b in batches]))


# Split arithmetic.

def test_imagenet_split_sizes_follow_the_paper():
  sizes = {"train": 1_281_167, "test": 50_000}
  ranges = {s: sources.locate_split(s, sizes.get, sources.IMAGENET_HELD_OUT)
            for s in sources.SPLITS}
  assert ranges == {"train": ("train", 0, 1_231_121),
                    "val": ("train", 1_231_121, 1_281_167),
                    "trainval": ("train", 0, 1_281_167),
                    "test": ("test", 0, 50_000)}
  assert sources.held_out_size(1_281_167, sources.HELD_OUT_FRACTION) == 50_046


def test_unknown_split_lists_valid_splits():
  source = data.get_source("random")
  with pytest.raises(ValueError,
                     match="valid splits: train, val, trainval, test"):
    source.num_examples("validation")
  with pytest.raises(ValueError, match="valid splits"):
    source.as_dataset("training")


def test_bad_held_out_fraction():
  with pytest.raises(ValueError, match="held_out_fraction"):
    sources.held_out_size(100, 1.5)


# Random source.

def test_random_source_is_deterministic_and_sized():
  source = data.get_source("random", image_shape=(6, 5, 3), num_classes=4,
                           num_examples=7)
  assert source.num_classes == 4
  images, labels = _images_and_labels(source, "val")
  assert images.shape == (7, 6, 5, 3) and images.dtype == np.uint8
  assert labels.dtype == np.int32 and set(labels) <= set(range(4))
  again, _ = _images_and_labels(source, "val")
  np.testing.assert_array_equal(images, again)
  other, _ = _images_and_labels(source, "test")
  assert (images != other).any()
  for split in sources.SPLITS:
    assert source.num_examples(split) == 7


def test_sharding_partitions_the_split():
  source = data.get_source("random", image_shape=(2, 2, 3), num_examples=11)
  full, _ = _images_and_labels(source, "train")
  shards = []
  for i in range(3):
    context = tf.distribute.InputContext(num_input_pipelines=3,
                                         input_pipeline_id=i)
    shards.append(np.concatenate([b["image"] for b in source.as_dataset(
        "train", input_context=context).batch(100).as_numpy_iterator()]))
  assert [len(s) for s in shards] == [4, 4, 3]
  assert sorted(x.tobytes() for x in np.concatenate(shards)) == sorted(
      x.tobytes() for x in full)


# Fashion-MNIST.

def _raw_idx(path, header_size):
  with gzip.open(path, "rb") as f:
    return np.frombuffer(f.read(), np.uint8, offset=header_size)


def test_fashion_mnist_sizes_and_classes():
  source = data.get_source("fashion_mnist", data_dir=fashion_mnist.SYSTEM_DIR)
  assert source.num_classes == 10
  assert {s: source.num_examples(s) for s in sources.SPLITS} == {
      "train": 57_656, "val": 2_344, "trainval": 60_000, "test": 10_000}
  trainval_images, trainval_labels = _images_and_labels(source, "trainval")
  _, test_labels = _images_and_labels(source, "test")
  np.testing.assert_array_equal(np.bincount(trainval_labels), [6000] * 10)
  np.testing.assert_array_equal(np.bincount(test_labels), [1000] * 10)
  raw_labels = _raw_idx(os.path.join(fashion_mnist.SYSTEM_DIR,
                                     "train-labels-idx1-ubyte.gz"), 8)
  np.testing.assert_array_equal(trainval_labels, raw_labels)
  raw_images = _raw_idx(os.path.join(fashion_mnist.SYSTEM_DIR,
                                     "train-images-idx3-ubyte.gz"), 16)
  assert trainval_images.shape == (60_000, 28, 28, 3)
  for c in range(3):
    np.testing.assert_array_equal(trainval_images[..., c].ravel(), raw_images)
  _, val_labels = _images_and_labels(source, "val")
  np.testing.assert_array_equal(val_labels, raw_labels[-2344:])


def _write_idx(directory, num_examples, fill):
  """Tiny fake Fashion-MNIST files whose pixels all equal `fill`."""
  os.makedirs(directory, exist_ok=True)
  for name in fashion_mnist.FILES["train"] + fashion_mnist.FILES["test"]:
    if "images" in name:
      header = bytes([0, 0, 8, 3]) + b"".join(
          d.to_bytes(4, "big") for d in (num_examples, 28, 28))
      body = bytes([fill]) * (num_examples * 28 * 28)
    else:
      header = bytes([0, 0, 8, 1]) + num_examples.to_bytes(4, "big")
      body = bytes(i % 10 for i in range(num_examples))
    with gzip.open(os.path.join(directory, name), "wb") as f:
      f.write(header + body)


@pytest.fixture
def no_default_fashion_mnist(tmp_path, monkeypatch):
  """Points every default Fashion-MNIST location at empty folders."""
  monkeypatch.setenv("HOME", str(tmp_path / "home"))
  monkeypatch.delenv("TFREVISIT_DATA_DIR", raising=False)
  monkeypatch.setattr(fashion_mnist, "SYSTEM_DIR", str(tmp_path / "system"))

  def no_download():
    raise OSError("no internet")
  monkeypatch.setattr(fashion_mnist, "_download_with_keras", no_download)
  return tmp_path


def test_fashion_mnist_lookup_order(no_default_fashion_mnist, monkeypatch):
  tmp_path = no_default_fashion_mnist
  _write_idx(tmp_path / "system", 3, fill=1)
  assert fashion_mnist.load()[0][0][0, 0, 0] == 1
  _write_idx(tmp_path / "home/.keras/datasets/fashion-mnist", 3, fill=2)
  assert fashion_mnist.load()[0][0][0, 0, 0] == 2
  _write_idx(tmp_path / "env/fashion-mnist", 3, fill=3)
  monkeypatch.setenv("TFREVISIT_DATA_DIR", str(tmp_path / "env"))
  assert fashion_mnist.load()[0][0][0, 0, 0] == 3
  _write_idx(tmp_path / "explicit", 3, fill=4)
  source = data.get_source("fashion_mnist", data_dir=str(tmp_path / "explicit"))
  images, labels = _images_and_labels(source, "test")
  assert (images == 4).all() and list(labels) == [0, 1, 2]


def test_fashion_mnist_missing_lists_options(no_default_fashion_mnist):
  with pytest.raises(FileNotFoundError) as error:
    data.get_source("fashion_mnist", data_dir="/nonexistent/fm")
  message = str(error.value)
  for expected in ("/nonexistent/fm", ".keras/datasets/fashion-mnist",
                   "system", "TFREVISIT_DATA_DIR", "dataset-fashion-mnist",
                   "no internet"):
    assert expected in message


def test_truncated_idx_file_names_the_file(tmp_path):
  path = tmp_path / "bad.gz"
  with gzip.open(path, "wb") as f:
    f.write(bytes([0, 0, 8, 1]) + (10).to_bytes(4, "big") + bytes(5))
  with pytest.raises(ValueError, match="bad.gz is truncated"):
    fashion_mnist.read_idx(str(path))


# Image folders and list files.

def _write_image(path, seed, fmt="jpg"):
  pixels = np.random.default_rng(seed).integers(0, 256, (12, 16, 3), np.uint8)
  encode = tf.io.encode_png if fmt == "png" else tf.io.encode_jpeg
  tf.io.write_file(str(path), encode(pixels))


def _make_folder(root):
  """train/{cat,dog}: 3 + 2 good images, a corrupt JPEG, a text file."""
  for cls, count in (("dog", 2), ("cat", 3)):
    os.makedirs(root / "train" / cls)
    for i in range(count):
      _write_image(root / "train" / cls / f"{i}.{'png' if i else 'jpg'}", i,
                   "png" if i else "jpg")
  (root / "train" / "cat" / "corrupt.jpg").write_bytes(b"\xff\xd8 not a jpeg")
  (root / "train" / "dog" / "notes.txt").write_text("not an image")
  os.makedirs(root / "val" / "dog")
  _write_image(root / "val" / "dog" / "v.JPEG", 9)


def test_image_folder_classes_files_and_splits(tmp_path):
  _make_folder(tmp_path)
  source = data.get_source("image_folder", data_dir=str(tmp_path),
                           held_out_fraction=0.34)
  assert source.num_classes == 2
  assert source.num_examples("trainval") == 6  # The .txt is ignored.
  assert (source.num_examples("train"), source.num_examples("val")) == (4, 2)
  _, test_labels = _images_and_labels(source, "test")
  assert list(test_labels) == [1]  # "dog" is the second class in sorted order.
  trainval = list(source.as_dataset("trainval").as_numpy_iterator())
  train = list(source.as_dataset("train").as_numpy_iterator())
  val = list(source.as_dataset("val").as_numpy_iterator())
  key = lambda ex: (ex["image"], ex["label"])
  assert sorted(map(key, train + val)) == sorted(map(key, trainval))
  assert sorted(ex["label"] for ex in trainval) == [0, 0, 0, 0, 1, 1]


def test_image_folder_skips_and_counts_a_corrupt_jpeg(tmp_path, caplog):
  _make_folder(tmp_path)
  source = data.get_source("image_folder", root=str(tmp_path))
  caplog.set_level(logging.INFO)
  ds = data.make_dataset(source, "trainval", "decode", batch_size=10,
                         training=False)
  (batch,) = list(ds.as_numpy_iterator())
  assert batch["image"].shape == (5, 12, 16, 3)
  np.testing.assert_array_equal(sorted(batch["label"]), [0, 0, 0, 1, 1])
  assert "image_folder/trainval: skipped 1 unreadable or failing images this " \
         "pass, kept 5" in caplog.text
  caplog.clear()
  ds = data.make_dataset(source, "trainval", "decode|resize(8)", batch_size=2,
                         training=True, seed=0)
  list(ds.take(6).as_numpy_iterator())  # 12 images: more than 2 passes.
  assert caplog.text.count("skipped 1 unreadable") >= 2


@pytest.mark.parametrize("make, message", [
    (lambda root: None, "does not exist"),
    (lambda root: os.makedirs(root / "train"), "has no class sub-folders"),
    (lambda root: os.makedirs(root / "train" / "cat"),
     "No .jpg/.jpeg/.png images"),
])
def test_image_folder_errors_name_the_path(tmp_path, make, message):
  make(tmp_path)
  with pytest.raises((FileNotFoundError, ValueError),
                     match=f"{tmp_path}.*{message}|{message}.*{tmp_path}"):
    data.get_source("image_folder", root=str(tmp_path)).num_examples("train")


def test_image_folder_needs_a_root():
  with pytest.raises(ValueError, match="image_folder needs `root`"):
    data.get_source("image_folder")


def test_list_file_source(tmp_path):
  for i in range(4):
    _write_image(tmp_path / f"img{i}.jpg", i)
  (tmp_path / "train.txt").write_text(
      "img0.jpg 2\nimg1.jpg 0\n\nimg2.jpg 5\n")
  (tmp_path / "test.txt").write_text("img3.jpg 1\n")
  source = data.get_source("list_file", data_dir=str(tmp_path),
                           train_list="train.txt", test_list="test.txt")
  assert source.num_classes == 6
  assert source.num_examples("trainval") == 3
  images, labels = _images_and_labels(source, "test")
  assert list(labels) == [1]
  assert images[0] == tf.io.read_file(str(tmp_path / "img3.jpg")).numpy()
  no_test = data.get_source("list_file", root=str(tmp_path),
                            train_list="train.txt", num_classes=205)
  assert no_test.num_classes == 205
  with pytest.raises(ValueError, match="no `test_list`"):
    no_test.num_examples("test")


def test_list_file_bad_line_names_file_and_line(tmp_path):
  (tmp_path / "train.txt").write_text("a.jpg 1\nb.jpg cat\n")
  with pytest.raises(ValueError,
                     match=r"train.txt:2: expected `relative/path label`"):
    data.get_source("list_file", root=str(tmp_path), train_list="train.txt")


# TFDS.

def test_imagenet_through_tfds_mock_data(tmp_path):
  with tfds.testing.mock_data(num_examples=6):
    source = data.get_source("imagenet2012", data_dir=str(tmp_path))
    assert source.num_classes == 1000
    assert {s: source.num_examples(s) for s in sources.SPLITS} == {
        "train": 1_231_121, "val": 50_046, "trainval": 1_281_167,
        "test": 50_000}
    for split in sources.SPLITS:
      example = next(iter(source.as_dataset(split)))
      assert example["image"].dtype == tf.string
      assert example["label"].dtype == tf.int32
    ds = data.make_dataset(source, "train", "inception_preprocess(32)",
                           batch_size=4, training=True, seed=0)
    batch = next(iter(ds))
    assert batch["image"].shape == (4, 32, 32, 3)
    assert batch["label"].shape == (4,)


def test_unprepared_tfds_dataset_says_how_to_prepare(tmp_path):
  source = data.get_source("imagenet2012", data_dir=str(tmp_path))
  with pytest.raises(FileNotFoundError,
                     match="tfds build imagenet2012.*manual"):
    source.as_dataset("test")


def test_unknown_source_name():
  with pytest.raises(ValueError, match="neither one of fashion_mnist, "
                     "image_folder, list_file, random nor a TFDS dataset"):
    data.get_source("fashion-mnist")
