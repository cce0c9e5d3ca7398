"""Backtest throughput on the one engine against the backtest's own loop, same run; prints one JSON line.

Both replay the bundled BTC/USDT 1h candles (all of them, after the warm-up) with the shipped default risk limits
(config/bot/default.yaml) and a seeded random MLP policy: `bot.backtest.run_backtest` (the loop that
``ai-trading bot mode=backtest`` runs today) and `bot.backtest_engine.run_engine_backtest` (the daemon's Engine,
OrderManager, in-memory ledger, Book and the paper venue's pushed fills). Reports candles/s of each, the ratio,
and whether both made the same orders, fills and total return.

Run: ``python tests/benchmarks/backtest_engine.py [--repeat 2]``.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from decimal import Decimal
from pathlib import Path

import structlog

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from adapters.ohlcv import load_ohlcv
from adapters.paper_config import BTC_USDT
from adapters.sample_data import sample_path
from bot.app_config import BotAppConfig
from bot.backtest import BacktestResult, run_backtest
from bot.backtest_engine import run_engine_backtest
from bot.config import load_config
from bot.decision import TradingSettings
from bot.policy import OnnxPolicy
from bot.risk import RiskManager
from tests.support.policy_model import export_policy, fitted_spec, random_weights


def main() -> None:
    """Measure and print one JSON line."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeat", type=int, default=2)
    args = parser.parse_args()
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(40))
    frame = load_ohlcv(sample_path())
    spec = fitted_spec(frame, train_rows=40_000, window=16)
    policy = OnnxPolicy.load(
        export_policy(Path(tempfile.mkdtemp()), spec, random_weights(spec, 2, (64, 64), seed=0), (0.0, 1.0))
    )
    cfg = load_config(BotAppConfig, [])

    def run(fn: object) -> BacktestResult:
        result: BacktestResult = fn(  # type: ignore[operator]
            frame,
            symbol="BTC/USDT",
            policy=policy,
            market=BTC_USDT,
            risk=RiskManager(cfg.bot.risk),
            costs=cfg.costs,
            settings=TradingSettings(),
            initial_quote=Decimal(10_000),
        )
        return result

    loops = [run(run_backtest) for _ in range(args.repeat)]
    engines = [run(run_engine_backtest) for _ in range(args.repeat)]
    loop = max(loops, key=lambda r: r.candles_per_s)
    engine = max(engines, key=lambda r: r.candles_per_s)
    print(
        json.dumps(
            {
                "benchmark": "backtest_engine",
                "candles": loop.candles,
                "loop_candles_per_s": round(loop.candles_per_s),
                "engine_candles_per_s": round(engine.candles_per_s),
                "engine_over_loop": round(engine.candles_per_s / loop.candles_per_s, 3),
                "orders": [len(loop.orders), len(engine.orders)],
                "fills": [len(loop.fills), len(engine.fills)],
                "same_total_return": abs(loop.report.total_return - engine.report.total_return) < 1e-12,
                "target_candles_per_s": 50_000,
            }
        )
    )


if __name__ == "__main__":
    main()
