"""Training's splits are purged: no evaluated observation window reads a bar of an earlier part."""

from __future__ import annotations

import pandas as pd
import pytest

from bot.model.features import FeatureSpec
from training.evaluation import frame_with_warmup
from training.train import _splits, embargo_bars, load_dataset, load_train_config, validation_returns


@pytest.mark.parametrize("extra", [[], ["training.walk_forward.folds=3"], ["env.window=16"]])
def test_every_validation_and_test_window_starts_after_the_earlier_part(extra: list[str]) -> None:
    cfg = load_train_config(["data.start=2025-01-01", *extra])
    frame = load_dataset(cfg.data).frame
    spec = FeatureSpec(window=cfg.env.window)
    assert embargo_bars(cfg) == spec.min_history - 1 == spec.warmup_bars + cfg.env.window - 1
    splits = _splits(cfg, frame)
    assert len(splits) == (3 if extra and "folds" in extra[0] else 1)
    for _, split in splits:
        assert split.embargo_bars == embargo_bars(cfg)
        train_last = frame.index[split.train.stop - 1]
        validation = frame_with_warmup(frame, split.validation, spec)
        test = frame_with_warmup(frame, split.test, spec)
        # The first observation of validation (test) reads only embargoed bars before the part, never train
        # (validation) bars: its warm-up starts right after the earlier part ends.
        assert validation.index[0] > train_last
        assert test.index[0] > frame.index[split.validation.stop - 1]
        assert len(validation) == len(split.validation) + spec.min_history - 1


def test_embargo_can_be_set_and_is_checked() -> None:
    assert embargo_bars(load_train_config(["training.embargo_bars=100"])) == 100
    with pytest.raises(ValueError, match="embargo_bars"):
        embargo_bars(load_train_config(["training.embargo_bars=-1"]))


def test_validation_returns_are_per_bar_simple_returns() -> None:
    index = pd.date_range("2025-01-01", periods=4, freq="1h", tz="UTC")
    returns = validation_returns(pd.Series([100.0, 110.0, 99.0, 99.0], index=index))
    assert list(returns["return"].round(12)) == [0.1, -0.1, 0.0]
    assert returns.index[0] == index[1]
