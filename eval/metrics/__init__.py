"""Evaluation metrics that never see a model (pure functions).

One module per job, imported by name (``from eval.metrics import
localization``):

* ``localization``: pixel AUROC, best IoU, AUPRO, image AUROC, exact and
  streaming (``pixel_scores``);
* the disentanglement metrics, one module each with disentanglement_lib's
  signature ``compute_<name>(ground_truth_data, representation_function,
  random_state, ...)``: ``factor_vae``, ``beta_vae``, ``mig``, ``dci``,
  ``sap``; what they share (checks, sampling, fits) in ``sampling``; the
  suite, its sample sizes and the encoded table in ``disentanglement``;
* ``testing``: dummy ground-truth data with known answers, for tests.
"""
