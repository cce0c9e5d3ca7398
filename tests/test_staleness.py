"""Model staleness: age since the card's training data ended, against bot.model_max_age_days."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pandas as pd
import pytest

from adapters.data.ohlcv import load_ohlcv
from bot.model.card import ModelCard, ModelCardError
from bot.model.staleness import ALERT_CODE, StaleModelError, check_staleness, enforce_at_start, training_data_end
from tests.support.policy_model import DATA_RANGE, export_policy, fitted_spec, random_weights

BUNDLED = Path(__file__).resolve().parents[1] / "adapters" / "bundled" / "BTC_USDT-1h.parquet"


@pytest.fixture(scope="module")
def card(tmp_path_factory: pytest.TempPathFactory) -> ModelCard:
    frame: pd.DataFrame = load_ohlcv(BUNDLED).loc["2023-01-01":"2023-12-31"]
    spec = fitted_spec(frame, 6000, window=8)
    onnx_path = export_policy(tmp_path_factory.mktemp("model"), spec, random_weights(spec, 3), (-1.0, 0.0, 1.0))
    return ModelCard.load(onnx_path.with_suffix(".json"))


def test_age_counts_from_the_end_of_the_training_data(card: ModelCard) -> None:
    end = datetime.fromisoformat(DATA_RANGE["end"])
    assert training_data_end(card) == end
    now = end + timedelta(days=45, hours=12)
    fresh = check_staleness(card, now, 90)
    assert fresh.age_days == pytest.approx(45.5) and not fresh.is_stale
    stale = check_staleness(card, now, 30, "reduce")
    assert stale.is_stale and stale.action == "reduce"
    assert "45.5 days" in stale.message and "2023-12-31" in stale.message and "bot.model_max_age_days" in stale.message
    alert = stale.to_alert("bot-1", now)
    assert (alert.code, alert.level, alert.message) == (ALERT_CODE, "warning", stale.message)
    assert not check_staleness(card, now + timedelta(days=10_000), None).is_stale  # no limit: never stale


def test_refuse_stops_the_start_only_when_stale(card: ModelCard) -> None:
    now = datetime(2026, 1, 1, tzinfo=UTC)
    with pytest.raises(StaleModelError, match=r"refusing to start: model best_model is 7\d\d\.\d days past"):
        enforce_at_start(check_staleness(card, now, 365, "refuse"))
    enforce_at_start(check_staleness(card, now, 365, "alert"))
    enforce_at_start(check_staleness(card, now, 365, "reduce"))
    enforce_at_start(check_staleness(card, now, 3650, "refuse"))


def test_config_mistakes_and_unreadable_dates_are_clear_errors(card: ModelCard) -> None:
    now = datetime(2026, 1, 1, tzinfo=UTC)
    with pytest.raises(ValueError, match=r"bot\.model_max_age_days: must be >= 0"):
        check_staleness(card, now, -1)
    with pytest.raises(ValueError, match=r"bot\.model_stale_action: must be one of alert, reduce, refuse"):
        check_staleness(card, now, 10, "panic")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="timezone-aware"):
        check_staleness(card, datetime(2026, 1, 1), 10)
    naive = dataclasses.replace(card, data_range={"start": "2023-01-01", "end": "2023-12-31"})
    assert training_data_end(naive) == datetime(2023, 12, 31, tzinfo=UTC)
    broken = dataclasses.replace(card, data_range={"start": "2023-01-01", "end": "last tuesday"})
    with pytest.raises(ModelCardError, match=r"training\.data_range\.end .last tuesday. is not an ISO-8601 time"):
        check_staleness(broken, now, 10)
