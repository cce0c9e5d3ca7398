"""Decision latency, policy overhead and backtest throughput of the daemon; prints one JSON line.

Figures (MLP policy 163 -> 64 -> 64 -> 2, built with onnx.helper like training.export's graph):

- ``compute_path_us``: p50/p99 of one closed candle through `IncrementalFeatures.update_candle` and
  `DecisionCore.decide` (policy, sizing, risk, order build), over ``--candles`` real candles; the core is made
  to plan an order on every candle (worst case) by alternating its remembered target.
- ``with_ledger_write_us``: the same plus the durable pre-send ledger write (`Ledger.record_new_order`, SQLite
  WAL, synchronous=NORMAL, a file in a temporary directory) — the "order handed to the venue" point.
- ``policy_overhead``: p99 of `OnnxPolicy.act` over p99 of a bare `session.run` on the same model and
  observations, same run (target <= 1.2).
- ``backtest_candles_per_s``: `bot.backtest.run_backtest` over the whole bundled BTC/USDT 1h file (target
  >= 50,000), best of ``--repeat``.

Not measured here: transformer_small latency, paper-daemon RSS and ready time.
Run: ``python tests/benchmarks/daemon_latency.py``.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from datetime import timedelta
from decimal import Decimal
from pathlib import Path

import numpy as np
import onnxruntime as ort
import structlog

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from adapters.costs import CostModel
from adapters.ohlcv import load_ohlcv
from adapters.paper import BTC_USDT
from adapters.replay import ReplayFeed
from adapters.sample_data import sample_path
from bot.backtest import run_backtest
from bot.engine import DecisionCore, TradingSettings
from bot.features import IncrementalFeatures
from bot.ledger import Ledger
from bot.policy import OnnxPolicy, session_options
from bot.risk import RiskConfig, RiskManager
from tests.support.policy_model import export_policy, fitted_spec, random_weights

BIG = Decimal("1e12")
NO_LIMITS = RiskConfig(
    max_position_notional=BIG,
    max_total_notional=BIG,
    max_order_notional=BIG,
    max_orders_per_minute=10**9,
    max_daily_loss=Decimal(1),
    max_drawdown=Decimal(1),
    reduce_at=Decimal(1),
)


def percentiles(samples: list[float]) -> dict[str, float]:
    """Return p50/p99 in microseconds."""
    values = np.asarray(samples) * 1e6
    return {"p50": round(float(np.percentile(values, 50)), 1), "p99": round(float(np.percentile(values, 99)), 1)}


def main() -> None:
    """Measure and print one JSON line."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--candles", type=int, default=10_000)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(40))
    frame = load_ohlcv(sample_path())
    spec = fitted_spec(frame, train_rows=40_000, window=16)
    tmp = Path(tempfile.mkdtemp(prefix="daemon-bench-"))
    policy = OnnxPolicy.load(export_policy(tmp, spec, random_weights(spec, 2, (64, 64), seed=0), (0.0, 1.0)))

    # --- compute path and ledger write, per candle
    core = DecisionCore("BTC/USDT", BTC_USDT, policy, RiskManager(NO_LIMITS), CostModel(), TradingSettings())
    features = IncrementalFeatures(spec)
    feed = ReplayFeed(frame.iloc[-(args.candles + spec.min_history) :], timeframe="1h", symbol="BTC/USDT")
    ledger = Ledger(f"sqlite:///{tmp / 'bench.db'}")
    bar = timedelta(hours=1)
    compute: list[float] = []
    with_ledger: list[float] = []
    for candle in feed.iter_candles("BTC/USDT"):
        started = time.perf_counter()
        window = features.update_candle(candle)
        if window is None:
            continue
        core.last_target = None  # forces a planned order every candle: the worst case
        close_time = candle.open_time + bar
        decision = core.decide(
            now=close_time,
            close_time=close_time,
            price=candle.close,
            window=window,
            position=Decimal(0),
            free_quote=Decimal(10_000),
            equity=Decimal(10_000),
            total_notional=Decimal(0),
        )
        computed = time.perf_counter()
        if decision.request is not None:
            ledger.record_new_order(decision.request, ts=close_time, model_sha=policy.sha256, sent=True)
        written = time.perf_counter()
        compute.append(computed - started)
        with_ledger.append(written - started)
    ledger.close()

    # --- policy overhead against a bare session.run on the same model
    session = ort.InferenceSession(str(policy.onnx_path), session_options(), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(0)
    observations = rng.standard_normal((5_000, spec.observation_size)).astype(np.float32)
    bare: list[float] = []
    ours: list[float] = []
    for obs in observations:
        batch = obs[None, :]
        t0 = time.perf_counter()
        session.run(["action"], {"observation": batch})
        t1 = time.perf_counter()
        policy.act(obs)
        t2 = time.perf_counter()
        bare.append(t1 - t0)
        ours.append(t2 - t1)

    # --- backtest throughput over the whole file
    best = 0.0
    for _ in range(args.repeat):
        result = run_backtest(
            frame,
            symbol="BTC/USDT",
            policy=policy,
            market=BTC_USDT,
            risk=RiskManager(NO_LIMITS),
            costs=CostModel(),
            settings=TradingSettings(),
            initial_quote=Decimal(10_000),
        )
        best = max(best, result.candles_per_s)

    bare_p, ours_p = percentiles(bare), percentiles(ours)
    print(
        json.dumps(
            {
                "benchmark": "daemon_latency",
                "candles": len(compute),
                "model": "mlp 163-64-64-2",
                "compute_path_us": percentiles(compute),
                "with_ledger_write_us": percentiles(with_ledger),
                "policy_act_us": ours_p,
                "bare_session_run_us": bare_p,
                "policy_overhead_p99_ratio": round(ours_p["p99"] / bare_p["p99"], 3),
                "backtest_candles": result.candles,
                "backtest_orders": len(result.orders),
                "backtest_candles_per_s": round(best),
                "targets": {
                    "compute_p99_us": 250,
                    "with_ledger_p99_us": 5000,
                    "policy_overhead": 1.2,
                    "backtest_candles_per_s": 50_000,
                },
            }
        )
    )


if __name__ == "__main__":
    main()
