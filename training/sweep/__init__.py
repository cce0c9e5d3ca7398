"""Hyperparameter sweeps from a W&B sweep YAML: the spec, W&B's controller or a local Optuna study, trials,
workers, overrides, the estimate, results and the overfitting check. `python -m training.sweep` runs `cli`.

Imports the rest of training, bot's evaluation, ledger and model card, and monitoring's logging, progress, run store
and W&B-server check.
"""
