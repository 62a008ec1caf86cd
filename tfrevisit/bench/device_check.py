r"""One-command GPU check: `python -m tfrevisit.bench.device_check`.

Runs, each in its own subprocess (so that memory peaks do not mix and one
failure does not stop the rest), in this order, and prints one summary table:
  gpu visible  TensorFlow sees a GPU (names the devices).
  rotation     configs/rotation.gin (RevNet50 k=16, reversible backprop) at
               full width on mock data (`--mock_data` of `tfrevisit.train`)
               for `--steps` steps with the training options a GPU run uses:
               XLA (`train.jit_compile`), mixed_float16 with loss scaling,
               several steps per call (`train.steps_per_loop`), a
               MirroredStrategy over all visible GPUs. Images/s over the
               second half of the steps, the allocator's peak memory, the
               final loss; it also exports.
  anchor       the same options on rotation with a standard ResNet50 (v1,
               k=4) at 224x224, 64 images = 256 views per step: the setting
               of NVIDIA's published TF ResNet50 AMP+XLA figures (docs/gpu.md).
  mirrored     MirroredStrategy with NcclAllReduce on all GPUs: an all-reduce
               and three training steps of a small rotation task.
  export       rotation's export, loaded and evaluated on the CPU
               (CUDA_VISIBLE_DEVICES=) in a fresh process, against the GPU's
               outputs on the same images.
  revnet memory  RevNet50 k=16 training-step memory with and without
               reversible backprop (`tfrevisit.bench.revnet_memory`).
  exemplar, relpatch, jigsaw, supervised: the other paper configs, as
               rotation (without the export).
The checks share a time budget (`--time_budget_s`, 420 s): each worker may
use what is left of it, and checks that find none left are reported as
skipped, so the script ends within the budget plus its own start-up.

Exit status: 0 every check that ran passed, 1 some check failed, 3 no GPU
visible (nothing run; `--cpu_smoke` runs the same checks with the same
training options at tiny sizes on the CPU instead, split into
`SMOKE_REPLICAS` logical devices so that the MirroredStrategy has several
replicas).
"""
import argparse
import json
import os
import signal
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
# Paper config file stems.
CONFIGS = ("rotation", "exemplar", "relpatch", "jigsaw", "supervised")
# Every check, in the order they run: the time budget skips the last ones.
CHECKS = ("rotation", "anchor", "mirrored", "export", "revnet_memory",
          "exemplar", "relpatch", "jigsaw", "supervised")
# The anchor: rotation.gin with a standard ResNet50 (k=4 is the usual width)
# and 64 images x 4 rotations = 256 views of 224x224 per step.
ANCHOR_BINDINGS = ['backbone.name = "resnet50_v1"',
                   "backbone.filters_factor = 4", "train.batch_size = 64"]
ROTATION_VIEWS = 4
# The training options of every config run, GPU and smoke alike.
PRECISION = "mixed_float16"
STEPS_PER_LOOP = 5
TIME_BUDGET_S = 420
# --cpu_smoke: the CPU is split into this many logical devices (replicas), and
# each config runs at tiny sizes (batch 4, k=1, small images).
SMOKE_REPLICAS = 2
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


def _config_file(check: str) -> str:
  return "rotation" if check == "anchor" else check


def _config_bindings(check: str, steps: int, smoke: bool,
                     export: bool = False) -> List[str]:
  """gin bindings of a config run (`check`: a config stem or "anchor"):
  `steps` steps under XLA and mixed_float16, `STEPS_PER_LOOP` steps per call
  (fewer for short runs), logging twice (the second interval gives the
  post-tracing images/s); smoke: at tiny sizes."""
  log_every = max(steps // 2, 1)
  bindings = [f"train.max_steps = {steps}",
              f"train.log_every_steps = {log_every}",
              f"train.steps_per_loop = {min(STEPS_PER_LOOP, log_every)}",
              f"train.checkpoint_every_steps = {steps}",
              f'train.mixed_precision = "{PRECISION}"',
              "train.jit_compile = True", f"train.export = {export}"]
  if check == "anchor":
    bindings += ANCHOR_BINDINGS
  if smoke:
    bindings += ["train.batch_size = 4", "backbone.filters_factor = 1"]
    bindings += SMOKE_BINDINGS[_config_file(check)]
  return bindings


def _split_cpu(num_devices: int) -> List[str]:
  """Splits the CPU into `num_devices` logical devices (before TensorFlow
  initialises them; a CPU already split so, as in the test suite, is kept);
  returns their names."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  cpu = tf.config.list_physical_devices("CPU")[0]
  split = tf.config.get_logical_device_configuration(cpu) or []
  if len(split) != num_devices:
    tf.config.set_logical_device_configuration(
        cpu, [tf.config.LogicalDeviceConfiguration()] * num_devices)
  return [device.name for device in tf.config.list_logical_devices("CPU")]


def run_config(check: str, workdir: str, steps: int, smoke: bool,
               export: bool) -> Dict[str, Any]:
  """Worker: trains one config (`check`, see `_config_bindings`) on mock data
  under a MirroredStrategy over all GPUs (smoke: `SMOKE_REPLICAS` logical
  CPUs); returns its figures.

  With `export`, also writes `workdir/eval.npz`: fixed uint8 images and the
  export's float32 outputs on them, computed on this process's device (the
  export check's reference).
  """
  devices = _split_cpu(SMOKE_REPLICAS) if smoke else None
  import gin  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  from tfrevisit import distribute  # pylint: disable=g-import-not-at-top
  from tfrevisit import gin_config  # pylint: disable=g-import-not-at-top
  from tfrevisit import train  # pylint: disable=g-import-not-at-top
  bindings = _config_bindings(check, steps, smoke, export)
  gin_config.parse_gin(
      [os.path.join(gin_config.CONFIG_DIR, f"{_config_file(check)}.gin")],
      bindings)
  strategy = distribute.mirrored(devices)
  backbone = gin_config.configured_backbone()
  device = _device()
  try:
    tf.config.experimental.reset_memory_stats(device)
  except ValueError:  # CPU stats need oneDNN; not essential here.
    pass
  start = time.perf_counter()
  metrics = train.train_from_gin(workdir, strategy=strategy, mock_data=True)
  seconds = time.perf_counter() - start
  peak = _peak_mib(device)
  if export:
    images, outputs = _evaluate_export(workdir)
    np.savez(os.path.join(workdir, "eval.npz"), images=images, outputs=outputs)
  return {"images_per_sec": metrics["images_per_sec"],
          "loss": metrics["loss"], "peak_mib": peak, "seconds": seconds,
          "loss_scale": metrics.get("loss_scale"),
          "replicas": strategy.num_replicas_in_sync,
          "steps_per_loop": gin.query_parameter("train.steps_per_loop"),
          "backbone": _describe(backbone),
          "finite": bool(np.isfinite(metrics["loss"]))}


def _describe(backbone) -> str:
  """"revnet50 k=16 reversible": name, widening, reversible backprop."""
  reversible = (backbone.name == "revnet50"
                and backbone.options.get("memory_efficient", True))
  return (f"{backbone.name} k={backbone.filters_factor}"
          + (" reversible" if reversible else ""))


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
  """RevNet50 step memory with and without reversible backprop, under XLA
  as in training."""
  from tfrevisit.bench import revnet_memory  # pylint: disable=g-import-not-at-top
  args = argparse.Namespace(
      filters_factor=1 if smoke else 16, resolution=32 if smoke else 224,
      batch_size=2 if smoke else 32, steps=1 if smoke else 2, root_chunks=0,
      jit_compile=True)
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
  """MirroredStrategy with NCCL all-reduce on all GPUs (smoke: over
  `SMOKE_REPLICAS` logical CPUs, reducing through one device): an all-reduce,
  then three XLA-compiled steps of a small task."""
  devices = _split_cpu(SMOKE_REPLICAS) if smoke else None
  import keras  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  from tfrevisit import distribute  # pylint: disable=g-import-not-at-top
  from tfrevisit import models  # pylint: disable=g-import-not-at-top
  from tfrevisit import pretext  # pylint: disable=g-import-not-at-top
  from tfrevisit.training import loop  # pylint: disable=g-import-not-at-top
  if smoke:
    strategy = distribute.mirrored(devices)
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
  step = loop.make_train_step(task, optimizer, strategy, batch_size,
                              jit_compile=True)
  iterator = iter(dataset)
  losses = [float(step(iterator)["loss"]) / batch_size for _ in range(3)]
  return {"replicas": replicas, "all_reduce_ok": bool(np.allclose(total, expected)),
          "losses": losses, "finite": bool(np.isfinite(losses).all()),
          "cross_device_ops": type(
              strategy.extended._cross_device_ops).__name__}  # pylint: disable=protected-access


def _worker(argv: List[str], timeout: Optional[float], env=None
            ) -> Dict[str, Any]:
  """Runs `python -m tfrevisit.bench.device_check --worker ...` for at most
  `timeout` seconds (None: no limit); returns its JSON result, or
  {"error": ...}."""
  command = [sys.executable, "-m", "tfrevisit.bench.device_check", *argv]
  # A session of its own: a timeout also stops the worker's own subprocesses.
  with subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                        text=True, env=env, start_new_session=True) as process:
    try:
      stdout, stderr = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
      os.killpg(process.pid, signal.SIGKILL)
      process.communicate()
      return {"error": f"stopped: time budget spent ({timeout:.0f} s left "
                       "at its start)"}
  if process.returncode:
    lines = [l for l in stderr.strip().splitlines() if l.strip()]
    return {"error": lines[-1] if lines else f"exit {process.returncode}",
            "stderr": stderr[-3000:]}
  return json.loads(stdout.strip().splitlines()[-1])


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


def _config_row(check: str, result: Dict[str, Any]) -> Dict[str, Any]:
  # Loss scale: 2**15 halved once per step skipped for a float16 overflow.
  note = (f"{result.get('seconds', 0):.0f} s, {result.get('backbone')}, XLA, "
          f"{PRECISION} (loss scale {result.get('loss_scale') or 0:g}), "
          f"{result.get('steps_per_loop')} steps/call, "
          f"{result.get('replicas')} replica(s)")
  if check == "anchor" and "images_per_sec" in result:
    note += (f"; {ROTATION_VIEWS * result['images_per_sec']:.0f} views/s "
             "(NVIDIA, A100 40GB: 2,375 img/s)")
  return _row(check, result, result.get("images_per_sec"),
              result.get("peak_mib"), result.get("loss"),
              ok=result.get("finite"), note=note)


def _revnet_row(result: Dict[str, Any], smoke: bool) -> Dict[str, Any]:
  memory_ratio = result.get("step_memory_ratio")
  return _row(
      "revnet memory", result, peak=result.get("reversible_peak_mib"),
      # On a GPU reversible backprop must save step memory; the CPU
      # allocator's stats of the smoke run's tiny model are too coarse.
      ok=smoke or (memory_ratio or 0) > 1,
      note=(f"k={result.get('filters_factor')}: plain peak "
            f"{_number(result.get('plain_peak_mib'), '.0f')} MiB, step "
            f"memory x{_number(memory_ratio, '.2f')} less, time "
            f"x{_number(result.get('time_ratio'), '.2f')}"))


def run_checks(args) -> List[Dict[str, Any]]:
  """Runs the checks `args.checks` in `CHECKS` order, each in a subprocess
  limited to what is left of `args.time_budget_s`; returns the table's rows."""
  flags = ["--cpu_smoke"] if args.cpu_smoke else []
  workdir = args.workdir or tempfile.mkdtemp(prefix="device_check_")
  deadline = time.monotonic() + args.time_budget_s
  rows = []
  for check in (c for c in CHECKS if c in args.checks):
    left = deadline - time.monotonic()
    if left <= 0:
      rows.append({"check": check, "ok": True, "skipped": True,
                   "note": "skipped: time budget spent"})
      continue
    check_dir = os.path.join(workdir, "rotation" if check == "export" else check)
    if check in CONFIGS or check == "anchor":
      export = ["--export"] if check == "rotation" else []
      result = _worker(["--worker", "config", "--config", check,
                        "--workdir", check_dir, f"--steps={args.steps}",
                        *export, *flags], left)
      rows.append(_config_row(check, result))
    elif check == "revnet_memory":
      rows.append(_revnet_row(_worker(["--worker", "revnet", *flags], left),
                              args.cpu_smoke))
    elif check == "mirrored":
      result = _worker(["--worker", "nccl", *flags], left)
      rows.append(_row(
          "mirrored " + str(result.get("cross_device_ops")), result,
          loss=(result.get("losses") or [None])[-1],
          ok=result.get("all_reduce_ok") and result.get("finite"),
          note=f"{result.get('replicas')} replica(s), XLA"))
    elif not os.path.exists(os.path.join(check_dir, "eval.npz")):
      rows.append({"check": "export on CPU", "ok": False,
                   "note": "the rotation run did not export"})
    else:
      env = dict(os.environ, CUDA_VISIBLE_DEVICES="")
      result = _worker(["--worker", "export_on_cpu", "--workdir", check_dir],
                       left, env=env)
      rows.append(_row(
          "export on CPU (rotation)", result,
          ok=result.get("ok") and result.get("finite") and
          result.get("device") == "CPU:0",
          note=f"max rel. error vs device {result.get('max_rel_error', 0):.1e}"))
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
    status = "skip" if row.get("skipped") else "ok" if row["ok"] else "FAIL"
    lines.append(
        f"{row['check']:30s} {status:4s} "
        f"{cell(row.get('images_per_sec'), '9.1f')} "
        f"{cell(row.get('peak_mib'), '9.0f')} {cell(row.get('loss'), '8.4f')}"
        f"  {row.get('note', '')}")
  return "\n".join(lines)


def _parse_args(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--steps", type=int, default=30,
                      help="training steps per config run")
  parser.add_argument("--checks", nargs="+", default=list(CHECKS),
                      choices=CHECKS, help="the checks to run (default: all)")
  parser.add_argument("--time_budget_s", type=float, default=TIME_BUDGET_S,
                      help="seconds for all checks; later ones are skipped")
  parser.add_argument("--workdir", default=None,
                      help="where the runs write (default: a temporary dir)")
  parser.add_argument("--cpu_smoke", action="store_true",
                      help="no GPU needed: every check on tiny CPU settings")
  parser.add_argument("--worker", choices=("config", "revnet", "nccl",
                                           "export_on_cpu"),
                      help=argparse.SUPPRESS)
  parser.add_argument("--config", choices=(*CONFIGS, "anchor"),
                      help=argparse.SUPPRESS)
  parser.add_argument("--export", action="store_true", help=argparse.SUPPRESS)
  return parser.parse_args(argv)


def _run_worker(args) -> Dict[str, Any]:
  if args.worker == "config":
    return run_config(args.config, args.workdir, args.steps, args.cpu_smoke,
                      args.export)
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
