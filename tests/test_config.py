"""The packaged Hydra config composes, overrides work as in the user guide, and bad config names the key."""

from __future__ import annotations

import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bot.config import DataConfig, WandbConfig, build, compose, load_config
from bot.errors import ConfigError


@dataclass(frozen=True)
class _Root:
    seed: int = 0
    data: DataConfig = field(default_factory=DataConfig)
    wandb: WandbConfig = field(default_factory=WandbConfig)


def test_defaults_compose_into_typed_objects() -> None:
    cfg = load_config(_Root)
    assert cfg.seed == 42
    assert cfg.wandb.project == "ai-trading"
    assert cfg.wandb.enabled is False
    assert cfg.wandb.log_frequency.steps == 1000
    assert cfg.data.symbol == "BTC/USDT"
    assert cfg.data.timeframe == "1h"


def test_user_guide_overrides_apply() -> None:
    cfg = load_config(_Root, ["wandb.enabled=true", "wandb.log_frequency.steps=10", "wandb.log_model=true"])
    assert cfg.wandb.enabled is True
    assert cfg.wandb.log_frequency.steps == 10
    assert cfg.wandb.log_model is True


def test_every_group_composes() -> None:
    raw = compose()
    for group in ("data", "env", "model", "training", "bot", "exchange", "wandb", "costs"):
        assert group in raw, f"config.yaml lost its {group!r} group"


@pytest.mark.parametrize(
    ("override", "named"),
    [
        ("wandb.enabld=true", "enabld"),
        ("wandb.log_frequency.steps=abc", "wandb.log_frequency.steps"),
        ("wandb.enabled=maybe", "wandb.enabled"),
        ("wandb.mode=sometimes", "wandb.mode"),
        ("data.train_fraction=0.9", "data.train_fraction"),
        ("sed=3", "sed"),
    ],
)
def test_bad_config_names_the_key(override: str, named: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(_Root, [override])
    assert named in str(info.value)


def test_unknown_key_in_a_file_is_named() -> None:
    with pytest.raises(ConfigError, match=r"wandb\.colour: unknown key"):
        build(_Root, {"wandb": {"colour": "red"}})


def test_environment_overrides_project_and_entity() -> None:
    cfg = WandbConfig().resolved({"WANDB_PROJECT": "p2", "WANDB_ENTITY": "me", "WANDB_MODE": "disabled"})
    assert (cfg.project, cfg.entity, cfg.mode) == ("p2", "me", "disabled")
    assert WandbConfig().resolved({}).project == "ai-trading"


@given(steps=st.integers(min_value=1, max_value=10**9), tags=st.lists(st.text(min_size=1, max_size=8), max_size=4))
def test_valid_values_round_trip(steps: int, tags: list[str]) -> None:
    cfg = build(WandbConfig, {"log_frequency": {"steps": steps}, "tags": tags})
    assert cfg.log_frequency.steps == steps
    assert cfg.tags == tuple(tags)


@given(value=st.one_of(st.text(), st.floats(allow_nan=True), st.booleans(), st.lists(st.integers())))
def test_wrong_types_raise_config_error(value: object) -> None:
    with pytest.raises(ConfigError, match=r"log_frequency\.steps"):
        build(WandbConfig, {"log_frequency": {"steps": value}})


@pytest.mark.integration
def test_config_found_from_an_installed_wheel(tmp_path: Path) -> None:
    """Build the wheel, install it (no deps) into a folder, and compose from outside the checkout."""
    repo = Path(__file__).resolve().parents[1]
    wheel_dir = tmp_path / "wheel"
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q"]
        + ["-w", str(wheel_dir), str(repo)],
        check=True,
        capture_output=True,
    )
    wheel = next(wheel_dir.glob("ai_trading-*.whl"))
    target = tmp_path / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(target), str(wheel)],
        check=True,
        capture_output=True,
    )
    code = (
        "import bot.config as c, adapters.data.sample as s; "
        f"assert c.__file__.startswith({str(target)!r}), c.__file__; "
        "raw = c.compose(['wandb.enabled=true']); assert raw['wandb']['enabled'] is True; "
        "assert s.sample_path().is_file(); print('ok')"
    )
    result = subprocess.run(
        [sys.executable, "-I", "-c", f"import sys; sys.path.insert(0, {str(target)!r}); {code}"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"


@pytest.mark.parametrize(
    ("override", "message"),
    [
        # a check that names its key in full, one from the section's own dataclass, and the section's own check
        ("bot.shadow_queue_size=0", "bot.shadow_queue_size: must be >= 1, was 0"),
        ("bot.capital.quote=-1", "bot.capital.quote must be a finite Decimal >= 0"),
        ("bot.drift.window=1", "bot.drift.window: must be an integer >= 2, was 1"),
        # values the daemon took without a word, or refused later with a traceback (rebalance_band) or exit 1
        ("bot.rebalance_band=2", "bot.rebalance_band: must be in [0, 1), was 2.0"),
        ("bot.timeframe=7x", "bot.timeframe: unknown timeframe '7x'"),
        ("bot.initial_balance=0", "bot.initial_balance: must be a finite number > 0, was 0"),
        ("bot.order_timeout_s=-1", "bot.order_timeout_s: must be > 0 seconds, was -1.0"),
        ("bot.shutdown_timeout_s=0", "bot.shutdown_timeout_s: must be > 0 seconds, was 0.0"),
        ("bot.max_candles=0", "bot.max_candles: must be >= 1 or null, was 0"),
        ("data.symbol=BTCUSDT", "data.symbol: symbol must look like BASE/QUOTE, was 'BTCUSDT'"),
        ("data.timeframe=7x", "data.timeframe: unknown timeframe '7x'"),
        ("bot.symbols=[BTC/USDT,FOO]", "bot.symbols: symbol must look like BASE/QUOTE, was 'FOO'"),
        ("bot.market.amount_step=-1", "bot.market.amount_step: must be >= 0, was -1"),
    ],
)
def test_a_checked_value_names_its_key_once(override: str, message: str) -> None:
    from bot.app_config import BotAppConfig

    with pytest.raises(ConfigError) as info:
        load_config(BotAppConfig, [override])
    assert str(info.value).startswith(message)
