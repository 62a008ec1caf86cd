"""Evaluation of frozen representations on cached feature arrays.

- `linear`: the paper's protocol, L2-regularised multinomial logistic
  regression trained full-batch with L-BFGS (`fit_logistic_regression`,
  `select_l2_and_fit`).
- `pooling`: end points -> flat features of about 9000 values
  (`pool_to_size`), per-patch features -> one vector (`combine_patches`).
- `probes`: SGD-trained MLP and linear probes with Keras `fit`, and
  class-balanced low-data subsets (`balanced_subset`).
- `results`: result rows -> results.json / results.csv and a printed table.
"""
