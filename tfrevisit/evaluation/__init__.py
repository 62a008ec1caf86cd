"""Evaluation of frozen representations on cached feature arrays.

- `linear`: the paper's protocol, L2-regularised multinomial logistic
  regression trained full-batch with L-BFGS (`fit_logistic_regression`,
  `select_l2_and_fit`).
- `pooling`: end points -> flat features of about 9000 values
  (`pool_to_size`), per-patch features -> one vector (`combine_patches`).
- `probes`: the probe interface and registry (`PROBES`: `linear`, `mlp`,
  `linear_sgd`, `knn`, `fewshot`), the SGD-trained MLP and linear probes with
  Keras `fit`, and class-balanced low-data subsets (`balanced_subset`).
- `knn`: the weighted k-nearest-neighbour probe, chunked similarities.
- `fewshot`: the n-shot closed-form ridge-regression probe (big_vision's).
- `sgd_images`: the `linear_sgd_images` probe, the release's SGD linear
  evaluation trained on the fly on augmented images through the frozen
  encoder.
- `finetune`: the `finetune` probe, the encoder (the export's encoder.keras)
  and a linear head trained end to end with Keras `fit`.
- `features`: per-layer features of an export, cached in shards.
- `results`: result rows -> results.json / results.csv, a printed table and
  TensorBoard scalars.
- `plots`: per-layer accuracy curves and a t-SNE of one end point (PNG).
"""
