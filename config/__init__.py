"""Hydra's YAML configs (`config.yaml`, `wandb.yaml` and the groups `model/`, `env/`, `training/`, `bot/`,
`exchange/`); a package only so that Hydra finds them as `pkg://config`. Holds no code and imports nothing.
"""
