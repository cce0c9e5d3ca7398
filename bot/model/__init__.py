"""What the daemon knows of a trained policy: its model card, the one feature pipeline shared with training, the
ONNX policy, feature drift, staleness and the look-ahead check of features.

Imports adapters (types, errors, data) and bot's clock, events and engine.
"""
