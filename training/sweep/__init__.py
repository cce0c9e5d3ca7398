"""Hyperparameter sweeps from a W&B sweep YAML: the spec, W&B's controller or a local Optuna study, trials,
workers, overrides, the estimate, results and the overfitting check. `python -m training.sweep` runs `cli`.
"""
