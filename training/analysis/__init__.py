"""Explaining a trained policy (`ai-trading analyze`): feature importance (SHAP), actions, latents, sensitivity,
over the data and the policy loaded here. `python -m training.analysis` runs `cli`.
"""
