"""Hyper-parameter tuning for ``nlp-decouple tune``: the search space, the Optuna studies, the tuned recipes."""
