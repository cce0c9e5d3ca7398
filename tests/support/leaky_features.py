"""Feature functions for the look-ahead check's tests: one peeks ahead, one depends on all history, one is fine."""

from __future__ import annotations

import pandas as pd


def centred_mean(frame: pd.DataFrame) -> pd.Series:
    """A centred 5-bar mean: bar t averages t-2..t+2, so it uses two future candles (look-ahead)."""
    return frame["close"].rolling(5, center=True).mean().rename("centred_mean")


def running_mean(frame: pd.DataFrame) -> pd.Series:
    """The mean of every close so far: its value depends on where the history starts (recursion)."""
    return frame["close"].expanding().mean().rename("running_mean")


def trailing_mean(frame: pd.DataFrame) -> pd.Series:
    """A trailing 5-bar mean (warm-up 4): causal and of fixed memory."""
    return frame["close"].rolling(5).mean().rename("trailing_mean")
