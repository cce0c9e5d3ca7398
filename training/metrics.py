"""Trading evaluation metrics: re-exported from `bot.evaluation`, the one implementation training and the daemon share.

The functions are numpy/pandas only, so they live on the serving side (the daemon's backtest report needs them
and may not import `training`); this module keeps `training.metrics` working for existing callers.
"""

from __future__ import annotations
