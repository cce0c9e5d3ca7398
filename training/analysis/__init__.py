"""Explaining a trained policy (`ai-trading analyze`): feature importance (SHAP), actions, latents, sensitivity,
over the data and the policy loaded here. `python -m training.analysis` runs `cli`.

Imports torch, gymnasium and shap, the rest of training, bot's model and config, and monitoring's charts, progress
and run store.
"""
