r"""One-command GPU check: `python -m tfrevisit.bench.device_check`.

Runs, each in its own subprocess (so that memory peaks do not mix and one
failure does not stop the rest), and prints one summary table:
  gpu          TensorFlow sees a GPU (names the devices).
  <config>     each paper config (configs/{rotation,exemplar,relpatch,jigsaw,
               supervised}.gin) at full width on mock data (`--mock_data` of
               `tfrevisit.train`) for `--steps` steps under mixed_float16 (and
               XLA when `train.jit_compile` exists): images/s over the second
               half of the steps, the allocator's peak memory, final loss.
  revnet k=16  RevNet50 k=16 training-step memory with and without reversible
               backprop (`tfrevisit.bench.revnet_memory`, allocator peak).
  nccl         MirroredStrategy with NcclAllReduce on all GPUs: an all-reduce
               and three training steps of a small rotation task.
  export       the first config's export, loaded and evaluated on the CPU
               (CUDA_VISIBLE_DEVICES=) in a fresh process, against the GPU's
               outputs on the same images.
Budget: about 5 minutes on one H100/H200-class GPU (mostly tracing and XLA
compilation).

Exit status: 0 every check passed, 1 some check failed, 3 no GPU visible
(nothing run; `--cpu_smoke` runs every check on tiny settings on the CPU
instead, to test this script).
"""
import argparse
import inspect
import json
import os
import subprocess
import sys
import tempfile
import time
from typing import Any, Dict, List, Optional

NO_GPU_STATUS = 3
NO_GPU_MESSAGE = ("no GPU visible: TensorFlow lists no GPU device, so the "
                  "device check did not run (check the driver, CUDA_VISIBLE_"
                  "DEVICES and that the installed TensorFlow has CUDA; "
                  "--cpu_smoke runs the checks on tiny CPU settings).")
# Config file stem -> its task, in the order they run.
CONFIGS = ("rotation", "exemplar", "relpatch", "jigsaw", "supervised")
# --cpu_smoke: tiny sizes for each config (batch 4, k=1, small images).
SMOKE_BINDINGS = {
    "rotation": ["rotation.image_size = 32"],
    "supervised": ["supervised.image_size = 32"],
    "exemplar": ["exemplar.image_size = 32", "exemplar.num_crops = 2",
                 "exemplar.embed_dim = 16"],
    "relpatch": ["relative_patch_location.patch_size = 16",
                 "relative_patch_location.patch_jitter = 2",
                 "relative_patch_location.embed_dim = 16",
                 "relative_patch_location.head_hidden = 32"],
    "jigsaw": ["jigsaw.patch_size = 16", "jigsaw.patch_jitter = 2",
               "jigsaw.embed_dim = 16", "jigsaw.head_hidden = 32",
               "jigsaw.num_permutations = 10", "jigsaw.perm_subset_size = 4"],
}
_MIB = 2 ** 20
_EVAL_IMAGES = 4


def _device() -> str:
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  return "GPU:0" if tf.config.list_physical_devices("GPU") else "CPU:0"


def _peak_mib(device: str) -> Optional[float]:
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  try:
    return tf.config.experimental.get_memory_info(device)["peak"] / _MIB
  except ValueError:  # CPU stats need oneDNN; not essential here.
    return None


def _config_bindings(config: str, steps: int, smoke: bool) -> List[str]:
  """gin bindings of one config run: `steps` steps, mixed precision, XLA
  where `train.train` has `jit_compile`, logging twice (the second interval
  gives the post-tracing images/s)."""
  from tfrevisit import train  # pylint: disable=g-import-not-at-top
  precision = "mixed_bfloat16" if smoke else "mixed_float16"
  bindings = [f"train.max_steps = {steps}",
              f"train.log_every_steps = {max(steps // 2, 1)}",
              f'train.mixed_precision = "{precision}"',
              f"train.checkpoint_every_steps = {steps}"]
  if "jit_compile" in inspect.signature(train.train).parameters and not smoke:
    bindings.append("train.jit_compile = True")
  if smoke:
    bindings += ["train.batch_size = 4", "backbone.filters_factor = 1"]
    bindings += SMOKE_BINDINGS[config]
  return bindings


def run_config(config: str, workdir: str, steps: int, smoke: bool
               ) -> Dict[str, Any]:
  """Worker: trains one paper config on mock data; returns its figures.

  Also writes `workdir/eval.npz`: fixed uint8 images and the export's float32
  outputs on them, computed on this process's device (the export check's
  reference).
  """
  import numpy as np  # pylint: disable=g-import-not-at-top
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  from tfrevisit import gin_config  # pylint: disable=g-import-not-at-top
  from tfrevisit import train  # pylint: disable=g-import-not-at-top
  bindings = _config_bindings(config, steps, smoke)
  gin_config.parse_gin([os.path.join(gin_config.CONFIG_DIR, f"{config}.gin")],
                       bindings)
  device = _device()
  try:
    tf.config.experimental.reset_memory_stats(device)
  except ValueError:  # CPU stats need oneDNN; not essential here.
    pass
  start = time.perf_counter()
  metrics = train.train(workdir, source=train._mock_source(), mock_data=True)  # pylint: disable=protected-access
  seconds = time.perf_counter() - start
  peak = _peak_mib(device)
  images, outputs = _evaluate_export(workdir)
  np.savez(os.path.join(workdir, "eval.npz"), images=images, outputs=outputs)
  return {"images_per_sec": metrics["images_per_sec"],
          "loss": metrics["loss"], "peak_mib": peak, "seconds": seconds,
          "xla": any("jit_compile" in b for b in bindings),
          "finite": bool(np.isfinite(metrics["loss"]))}


def _evaluate_export(workdir: str):
  """Fixed images and the export's default output on them (float32)."""
  import numpy as np  # pylint: disable=g-import-not-at-top
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  loaded = tf.saved_model.load(os.path.join(workdir, "export", "latest"))
  rng = np.random.default_rng(0)
  images = rng.integers(0, 256, (_EVAL_IMAGES, 256, 256, 3), np.uint8)
  inputs = loaded.preprocess(tf.constant(images))
  if inputs.shape.rank == 5:  # Patch models: run on the B*9 patches.
    inputs = tf.reshape(inputs, [-1, *inputs.shape[2:]])
  outputs = loaded(inputs)
  if outputs.dtype != tf.float32:
    raise TypeError(f"export returns {outputs.dtype}, not float32")
  return images, outputs.numpy()


def run_export_on_cpu(workdir: str) -> Dict[str, Any]:
  """Worker (on the CPU): the export of `workdir` vs the reference outputs."""
  import numpy as np  # pylint: disable=g-import-not-at-top
  reference = np.load(os.path.join(workdir, "eval.npz"))
  _, outputs = _evaluate_export(workdir)
  scale = float(np.abs(reference["outputs"]).max()) or 1.0
  error = float(np.abs(outputs - reference["outputs"]).max()) / scale
  return {"device": _device(), "max_rel_error": error,
          "finite": bool(np.isfinite(outputs).all()), "ok": error < 2e-2}


def run_revnet_memory(smoke: bool) -> Dict[str, Any]:
  """RevNet50 step memory with and without reversible backprop."""
  from tfrevisit.bench import revnet_memory  # pylint: disable=g-import-not-at-top
  args = argparse.Namespace(
      filters_factor=1 if smoke else 16, resolution=32 if smoke else 224,
      batch_size=2 if smoke else 32, steps=1 if smoke else 2, root_chunks=0)
  results = {name: revnet_memory._run_worker(name, args)  # pylint: disable=protected-access
             for name in ("revnet50 reversible", "revnet50 plain")}
  on, off = results["revnet50 reversible"], results["revnet50 plain"]
  ratio = lambda a, b: a / b if b > 0 else None  # CPU stats may be 0.
  return {"filters_factor": args.filters_factor, "batch_size": args.batch_size,
          "resolution": args.resolution,
          "reversible_peak_mib": on["alloc peak"],
          "plain_peak_mib": off["alloc peak"],
          "step_memory_ratio": ratio(off["alloc step"], on["alloc step"]),
          "time_ratio": ratio(on["seconds"], off["seconds"]),
          "device": on["device"]}


def run_nccl(smoke: bool) -> Dict[str, Any]:
  """MirroredStrategy with NCCL all-reduce on all GPUs (smoke: the CPU with
  the default reduction): an all-reduce, then three steps of a small task."""
  import keras  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  from tfrevisit import models  # pylint: disable=g-import-not-at-top
  from tfrevisit import pretext  # pylint: disable=g-import-not-at-top
  from tfrevisit import train  # pylint: disable=g-import-not-at-top
  if smoke:
    strategy = tf.distribute.MirroredStrategy(
        ["/cpu:0"], cross_device_ops=tf.distribute.ReductionToOneDevice())
  else:
    strategy = tf.distribute.MirroredStrategy(
        cross_device_ops=tf.distribute.NcclAllReduce())
  replicas = strategy.num_replicas_in_sync
  ones = strategy.run(lambda: tf.ones([3]) * tf.cast(
      tf.distribute.get_replica_context().replica_id_in_sync_group + 1,
      tf.float32))
  total = strategy.reduce(tf.distribute.ReduceOp.SUM, ones, axis=None)
  expected = replicas * (replicas + 1) / 2
  batch_size = 4 * replicas
  with strategy.scope():
    keras.utils.set_random_seed(0)
    task = pretext.get_task("rotation", num_classes=10, image_size=64,
                            backbone=models.Backbone("resnet50_v2", 1))
    optimizer = keras.optimizers.SGD(0.01, momentum=0.9)
    optimizer.build(task.trainable_variables)
  images = tf.random.stateless_uniform([batch_size, 4, 64, 64, 3], [0, 0], -1, 1)
  labels = tf.tile(tf.range(4)[None], [batch_size, 1])
  dataset = strategy.experimental_distribute_dataset(
      tf.data.Dataset.from_tensors({"image": images, "label": labels}).repeat())
  step = train.make_train_step(task, optimizer, strategy, batch_size)
  iterator = iter(dataset)
  losses = [float(step(iterator)["loss"]) / batch_size for _ in range(3)]
  return {"replicas": replicas, "all_reduce_ok": bool(np.allclose(total, expected)),
          "losses": losses, "finite": bool(np.isfinite(losses).all()),
          "cross_device_ops": type(
              strategy.extended._cross_device_ops).__name__}  # pylint: disable=protected-access


def _worker(argv: List[str], env=None, timeout=600) -> Dict[str, Any]:
  """Runs `python -m tfrevisit.bench.device_check --worker ...`; returns its
  JSON result, or {"error": ...}."""
  command = [sys.executable, "-m", "tfrevisit.bench.device_check", *argv]
  try:
    result = subprocess.run(command, capture_output=True, text=True,
                            env=env, timeout=timeout, check=False)
  except subprocess.TimeoutExpired:
    return {"error": f"timed out after {timeout} s"}
  if result.returncode:
    lines = [l for l in result.stderr.strip().splitlines() if l.strip()]
    return {"error": lines[-1] if lines else f"exit {result.returncode}",
            "stderr": result.stderr[-3000:]}
  return json.loads(result.stdout.strip().splitlines()[-1])


def _gpu_names() -> List[str]:
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  names = []
  for gpu in tf.config.list_physical_devices("GPU"):
    details = tf.config.experimental.get_device_details(gpu)
    names.append(details.get("device_name", gpu.name))
  return names


def _row(check: str, result: Dict[str, Any], images_per_sec=None, peak=None,
         loss=None, ok=None, note="") -> Dict[str, Any]:
  if "error" in result:
    return {"check": check, "ok": False, "note": result["error"][:100]}
  return {"check": check, "ok": bool(ok), "images_per_sec": images_per_sec,
          "peak_mib": peak, "loss": loss, "note": note}


def run_checks(args) -> List[Dict[str, Any]]:
  """Runs every check (subprocesses); returns the summary table's rows."""
  flags = ["--cpu_smoke"] if args.cpu_smoke else []
  rows = []
  workdir = args.workdir or tempfile.mkdtemp(prefix="device_check_")
  config_dirs = []
  for config in args.configs:
    config_dir = os.path.join(workdir, config)
    result = _worker(["--worker", "config", "--config", config,
                      "--workdir", config_dir, f"--steps={args.steps}", *flags])
    if "error" not in result:
      config_dirs.append(config_dir)
    rows.append(_row(
        config, result, result.get("images_per_sec"), result.get("peak_mib"),
        result.get("loss"), ok=result.get("finite"),
        note=f"{result.get('seconds', 0):.0f} s, XLA "
             f"{'on' if result.get('xla') else 'off'}"))
  if not args.skip_revnet:
    result = _worker(["--worker", "revnet", *flags])
    memory_ratio = result.get("step_memory_ratio")
    rows.append(_row(
        "revnet memory", result, peak=result.get("reversible_peak_mib"),
        # On a GPU reversible backprop must save step memory; the CPU
        # allocator's stats of the smoke run's tiny model are too coarse.
        ok=args.cpu_smoke or (memory_ratio or 0) > 1,
        note=(f"k={result.get('filters_factor')}: plain peak "
              f"{_number(result.get('plain_peak_mib'), '.0f')} MiB, step "
              f"memory x{_number(memory_ratio, '.2f')} less, time "
              f"x{_number(result.get('time_ratio'), '.2f')}")))
  result = _worker(["--worker", "nccl", *flags])
  rows.append(_row(
      "mirrored " + str(result.get("cross_device_ops")), result,
      loss=(result.get("losses") or [None])[-1],
      ok=result.get("all_reduce_ok") and result.get("finite"),
      note=f"{result.get('replicas')} replica(s)"))
  if config_dirs:
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="")
    result = _worker(["--worker", "export_on_cpu", "--workdir",
                      config_dirs[0]], env=env)
    rows.append(_row(
        f"export on CPU ({os.path.basename(config_dirs[0])})", result,
        ok=result.get("ok") and result.get("finite") and
        result.get("device") == "CPU:0",
        note=f"max rel. error vs device {result.get('max_rel_error', 0):.1e}"))
  else:
    rows.append({"check": "export on CPU", "ok": False,
                 "note": "no config run succeeded"})
  return rows


def _number(value, spec: str) -> str:
  return "?" if value is None else format(value, spec)


def format_table(rows: List[Dict[str, Any]]) -> str:
  """The summary table: one line per check, "-" for figures it lacks."""
  def cell(value, spec):
    width = int(spec.split(".")[0])
    return f"{'-':>{width}s}" if value is None else format(value, spec)
  lines = [f"{'check':30s} {'ok':4s} {'images/s':>9s} {'peak MiB':>9s} "
           f"{'loss':>8s}  note"]
  for row in rows:
    lines.append(
        f"{row['check']:30s} {'ok' if row['ok'] else 'FAIL':4s} "
        f"{cell(row.get('images_per_sec'), '9.1f')} "
        f"{cell(row.get('peak_mib'), '9.0f')} {cell(row.get('loss'), '8.4f')}"
        f"  {row.get('note', '')}")
  return "\n".join(lines)


def _parse_args(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--steps", type=int, default=30,
                      help="training steps per paper config")
  parser.add_argument("--configs", nargs="+", default=list(CONFIGS),
                      choices=CONFIGS)
  parser.add_argument("--workdir", default=None,
                      help="where the runs write (default: a temporary dir)")
  parser.add_argument("--cpu_smoke", action="store_true",
                      help="no GPU needed: every check on tiny CPU settings")
  parser.add_argument("--skip_revnet", action="store_true",
                      help="skip the RevNet memory check")
  parser.add_argument("--worker", choices=("config", "revnet", "nccl",
                                           "export_on_cpu"),
                      help=argparse.SUPPRESS)
  parser.add_argument("--config", choices=CONFIGS, help=argparse.SUPPRESS)
  return parser.parse_args(argv)


def _run_worker(args) -> Dict[str, Any]:
  if args.worker == "config":
    return run_config(args.config, args.workdir, args.steps, args.cpu_smoke)
  if args.worker == "revnet":
    return run_revnet_memory(args.cpu_smoke)
  if args.worker == "nccl":
    return run_nccl(args.cpu_smoke)
  return run_export_on_cpu(args.workdir)


def main(argv=None) -> int:
  args = _parse_args(argv)
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
  if args.worker:
    print(json.dumps(_run_worker(args)))
    return 0
  gpus = _gpu_names()
  if not gpus and not args.cpu_smoke:
    print(NO_GPU_MESSAGE)
    return NO_GPU_STATUS
  start = time.perf_counter()
  print(f"devices: {', '.join(gpus) or 'CPU only (--cpu_smoke)'}", flush=True)
  rows = [{"check": "gpu visible", "ok": bool(gpus) or args.cpu_smoke,
           "note": f"{len(gpus)} GPU(s)"}] + run_checks(args)
  print(format_table(rows))
  print(f"total {time.perf_counter() - start:.0f} s")
  return 0 if all(row["ok"] for row in rows) else 1


if __name__ == "__main__":
  sys.exit(main())
