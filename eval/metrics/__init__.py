"""Evaluation metrics that never see a model (pure functions).

One module per job, imported by name (``from eval.metrics import
localization``): ``localization`` (pixel and image metrics); ``factor_vae``,
``beta_vae``, ``mig``, ``dci``, ``sap`` (disentanglement_lib's signature),
what they share in ``sampling``, the suite and code table in
``disentanglement`` (dummy data with known answers for their tests:
``tests/ground_truth.py``).
"""
