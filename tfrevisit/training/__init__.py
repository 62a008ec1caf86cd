"""The trainer in named parts (library code: explicit arguments, no gin).

  run     building a run: its length, task, optimizer, checkpoint, and the
          input from its step (`build_run`, `resume`, `distributed_dataset`).
  loop    the compiled training step and the loop calling it
          (`make_train_step`, `train_loop`).
  faults  preemption (SIGTERM/SIGINT: save and stop) and lost peers.

`tfrevisit.train` (the command line) composes them; `tfrevisit.restore`
rebuilds a trained task from its workdir.
"""
from tfrevisit.training import faults
from tfrevisit.training import loop
from tfrevisit.training import run
