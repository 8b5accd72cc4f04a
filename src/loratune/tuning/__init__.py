"""Hyperparameter search: `loratune tune` on Optuna (`study`), its search spaces (`space`) and its outputs."""
