"""Injected faults: stale temporaries, bad feature shards, corrupt checkpoints."""
import glob
import os

import gin
import keras
import numpy as np
import pytest

from tfrevisit import artifacts
from tfrevisit import export
from tfrevisit import models
from tfrevisit import train
from tfrevisit.data import sources
from tfrevisit.evaluation import features as features_lib

# One unit per stage: these tests exercise the loop, files and probes, not depth.
pytestmark = pytest.mark.usefixtures("shallow_backbones")

SIZE = 32
PREPROCESS = f"resize_small({SIZE})|central_crop({SIZE})|value_range(-1, 1)"
SMALL = "\n".join([
    'train.task = "rotation"', "train.batch_size = 8", "train.epochs = 1",
    "train.checkpoint_every_steps = 1", "train.export = False",
    'source.name = "random"', "source.num_examples = 64",
    "source.image_shape = (32, 32, 3)", 'backbone.name = "resnet50_v2"',
    "backbone.filters_factor = 1", "rotation.image_size = 32"])


def test_atomic_directory_removes_temporaries_of_killed_runs(tmp_path):
  stale = tmp_path / ".tmp-killed"
  stale.mkdir()
  (stale / "saved_model.pb").write_text("half written")
  with artifacts.atomic_directory(str(tmp_path / "2")) as tmp:
    open(os.path.join(tmp, "done"), "w").close()
  assert sorted(os.listdir(tmp_path)) == ["2"]


@pytest.fixture(name="module", scope="module")
def _module(tmp_path_factory, shallow_backbones):
  keras.utils.set_random_seed(0)
  encoder = models.backbone("resnet50_v2", filters_factor=1, num_classes=4)
  root = export.build_module(encoder, default_output="logits",
                             preprocess_spec=PREPROCESS)
  path = str(tmp_path_factory.mktemp("export") / "model")
  export.save_module(root, path, metadata={"preprocess": PREPROCESS})
  return features_lib.load_module(path)[0]


def _truncate(path):
  with open(path, "r+b") as f:
    f.truncate(os.path.getsize(path) // 2)


def _fewer_rows(path):
  np.save(path, np.load(path)[:-1])


def _pickled(path):
  np.save(path, np.array([{"not": "features"}], dtype=object), allow_pickle=True)


@pytest.mark.parametrize("shard,filename,fault,rewritten", [
    (1, "pre_logits.npy", _truncate, [1, 2, 3, 4]),
    (3, "labels.npy", _fewer_rows, [3, 4]),
    (4, "block1.npy", _pickled, [4]),
])
def test_bad_feature_shard_is_recomputed(module, tmp_path, monkeypatch, shard,
                                         filename, fault, rewritten):
  source = sources.RandomSource(image_shape=(SIZE, SIZE, 3), num_examples=40)
  extract = lambda: features_lib.cached_features(  # 5 shards of 8 examples.
      module, source, "train", PREPROCESS, str(tmp_path), batch_size=4,
      shard_size=8)
  expected, expected_labels = extract()
  expected = {name: np.asarray(rows) for name, rows in expected.items()}
  fault(os.path.join(tmp_path, f"shard-{shard:05d}", filename))
  written = []
  original = features_lib._write_shard  # pylint: disable=protected-access
  monkeypatch.setattr(features_lib, "_write_shard",
                      lambda *a: (written.append(a[1]), original(*a)))
  features, labels = extract()
  assert written == rewritten
  np.testing.assert_array_equal(labels, expected_labels)
  for name, rows in expected.items():
    np.testing.assert_allclose(np.asarray(features[name]), rows, rtol=1e-5,
                               atol=1e-5 * np.abs(rows).max())


def test_corrupt_checkpoint_names_the_file_and_the_previous_one(tmp_path,
                                                                capsys):
  workdir = str(tmp_path / "run")
  train.main(["--gin_param", SMALL, "--gin_param", "train.max_steps = 2",
              "--workdir", workdir])
  newest = os.path.join(workdir, "checkpoints", "ckpt-2")
  (data,) = glob.glob(newest + ".data-*")
  with open(data, "r+b") as f:
    f.write(bytes(os.path.getsize(data)))
  previous = os.path.join(workdir, "checkpoints", "ckpt-1")
  expected = (f"error: Checkpoint {newest} is truncated or corrupt "
              "(")
  fallback = (f"; fall back to the previous checkpoint {previous}: delete "
              f"{newest}.* (training resumes from it) or pass --checkpoint "
              f"{previous} (export).")
  for main, argv in (
      (export.main, ["--workdir", workdir]),
      (train.main, ["--gin_param", SMALL, "--gin_param", "train.max_steps = 3",
                    "--workdir", workdir])):
    gin.clear_config()
    with pytest.raises(SystemExit, match="^2$"):
      main(argv)
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith(expected) and line.endswith(fallback), line
  for path in glob.glob(newest + ".*"):
    os.remove(path)
  assert artifacts.latest_checkpoint(workdir) == previous
  assert export.main(["--workdir", workdir]).endswith(os.path.join("export", "1"))
