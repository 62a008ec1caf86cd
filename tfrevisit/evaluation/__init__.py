"""Evaluation of frozen representations: features, probes, protocols, results.

No module here reads gin: the command lines (`tfrevisit.evaluate`,
`tfrevisit.gin_config`) fill the probes' hyper-parameters.

- `probes`: the probe registry (`PROBES`: `linear`, `mlp`, `linear_sgd`,
  `knn`, `fewshot`, `linear_sgd_images`, `finetune`), every probe registered
  there, each called as `probe(inputs) -> row`.
- `inputs`: what a probe gets (`ProbeInputs`: feature splits or an
  `ImageProbeContext`), and the image data of the probes on images.
- `splits`: the probes' splits under the paper's protocols (`Split`,
  `protocol_splits`, `standardized_splits`), label fractions
  (`label_subset`, `balanced_subset`).
- The linear probe in three layers: `lbfgs` (a batched L-BFGS, generic),
  `logistic_regression` (the fit; its objective in `logistic_objective`, its
  preconditioner in `preconditioning`) and `linear` (the paper's protocol:
  L2 chosen on val, `select_l2_and_fit`).
- `keras_probes`: the `mlp` and `linear_sgd` probes, trained with Keras `fit`.
- `knn`: the weighted k-nearest-neighbour probe, chunked similarities.
- `fewshot`: the n-shot closed-form ridge-regression probe (big_vision's).
- `linear_on_images`: the `linear_sgd_images` probe, the release's SGD linear
  evaluation trained on the fly on augmented images through the frozen
  encoder.
- `finetune`: the `finetune` probe, the encoder (the export's encoder.keras)
  and a linear head trained end to end with Keras `fit`.
- `features`: per-layer features of an export, cached in shards; `pooling`:
  end points -> flat features of about 9000 values.
- `result_files`: one evaluation's result rows -> results.json /
  results.csv, a printed table and TensorBoard scalars.
- `layer_plots`: one evaluation's per-layer accuracy curves and a t-SNE of
  one end point (PNG). (The study's results and figures, across models, are
  `tfrevisit.study.results` and `tfrevisit.study.plots`.)
"""
