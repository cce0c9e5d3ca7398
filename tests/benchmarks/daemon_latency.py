"""Decision latency, policy overhead and backtest throughput of the daemon; prints one JSON line.

Figures (MLP policy 163 -> 64 -> 64 -> 2, built with onnx.helper like training.export's graph):

- ``compute_path_us``: p50/p99 of one closed candle through `IncrementalFeatures.update_candle` and
  `DecisionCore.decide` (policy, sizing, risk, order build), over ``--candles`` real candles; the core is made
  to plan an order on every candle (worst case) by alternating its remembered target.
- ``with_ledger_write_us``: the same plus the durable pre-send ledger write (`Ledger.record_new_order`, SQLite
  WAL, synchronous=NORMAL, a file in a temporary directory) — the "order handed to the venue" point.
- ``policy_overhead``: p99 of `OnnxPolicy.act` over p99 of a bare `session.run` on the same model and
  observations, same run (target <= 1.2).
- ``backtest``: ``python -m bot mode=backtest`` (the entry point of ``ai-trading bot``) with the shipped
  config/bot/default.yaml (its risk limits, not lifted) over ``--backtest-candles`` (200,000) 5m candles, a model
  whose card says 5m; its own candles/s (the daemon's engine over a replay feed), the child's peak RSS and stderr
  line count, best of ``--repeat`` (targets >= 50,000 candles/s, <= 250 MB). ``decisions_ahead``: the decisions at
  flat bars whose target came from the policy's batches computed ahead (`bot.model.ahead`); the rest called the
  policy one bar at a time. That share is the model's: this one is flat most of the time.
- ``transformer_small``: the compute path, the ledger write and the policy overhead again with the
  transformer_small preset (d_model 64, 2 layers, 4 heads) over the env's default 32-bar window, built with
  `training.models.build_actor_critic` (seeded, untrained) and exported with `training.export.export_onnx`
  in a child process, so that torch is never imported into the measuring process (targets: compute p99 <= 600
  µs, overhead <= 1.2).

- ``shadows``: the live decision latency (the engine's own samples) alone and with two shadow models, over
  ``--shadow-candles`` bundled 1h candles (`tests/benchmarks/shadow_latency.py`; target: p99 ratio ~1).

Paper-daemon RSS and ready time: ``tests/benchmarks/daemon_footprint.py``.
Run: ``python tests/benchmarks/daemon_latency.py``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from datetime import timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import pandas as pd
import structlog

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from adapters.costs import CostModel
from adapters.data.ohlcv import load_ohlcv
from adapters.data.sample import sample_path
from adapters.paper.config import BTC_USDT
from adapters.paper.replay import ReplayFeed
from bot.engine.decision import DecisionCore, TradingSettings
from bot.ledger.store import Ledger
from bot.model.features import (
    FeatureSpec,
    IncrementalFeatures,
    candle_arrays,
    compute_features,
    observation_valid,
    position_state,
    raw_observation,
)
from bot.model.policy import OnnxPolicy, session_options
from bot.risk import RiskConfig, RiskManager
from tests.benchmarks import shadow_latency
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


def export_transformer_small(out_dir: Path, window: int = 32, seed: int = 0) -> Path:
    """Export a seeded, untrained transformer_small actor-critic with its card; return the ONNX path (needs torch)."""
    import torch
    from gymnasium import spaces

    from training.export import export_onnx
    from training.models import build_actor_critic, preset

    torch.manual_seed(seed)
    frame = load_ohlcv(sample_path())
    spec = fitted_spec(frame, train_rows=40_000, window=window)
    part = frame.iloc[40_000:42_000]
    features, valid = compute_features(spec, *candle_arrays(part))
    ends = np.flatnonzero(observation_valid(spec, valid))
    rng = np.random.default_rng(seed)
    observations = np.stack(
        [
            raw_observation(
                features[end - window + 1 : end + 1],
                position_state(float(rng.choice([0.0, 1.0])), float(rng.normal(0, 0.02)), int(rng.integers(0, 50))),
            )
            for end in ends
        ]
    )
    model = build_actor_critic(
        spec.observation_size,
        spaces.Discrete(2),
        preset("transformer_small"),
        window=window,
        n_features=spec.n_features,
    ).eval()
    export_onnx(
        model,
        feature_spec=spec.to_dict(),
        action_mapping=[0.0, 1.0],
        data_range={"start": str(frame.index[0]), "end": str(frame.index[40_000 - 1])},
        parity_observations=observations,
        out_dir=out_dir,
        name="transformer_small",
        run_id="benchmark",
        tolerance=1e-4,
    )
    return out_dir / "transformer_small.onnx"


def measure_decisions(policy: OnnxPolicy, frame: pd.DataFrame, candles: int, tmp: Path) -> dict[str, Any]:
    """Time the compute path and the pre-send ledger write per candle, and the policy overhead."""
    spec: FeatureSpec = policy.feature_spec
    core = DecisionCore("BTC/USDT", BTC_USDT, policy, RiskManager(NO_LIMITS), CostModel(), TradingSettings())
    features = IncrementalFeatures(spec)
    feed = ReplayFeed(frame.iloc[-(candles + spec.min_history) :], timeframe="1h", symbol="BTC/USDT")
    ledger = Ledger(f"sqlite:///{tmp / f'bench-{policy.onnx_path.stem}.db'}")
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
    bare_p, ours_p = percentiles(bare), percentiles(ours)
    return {
        "candles": len(compute),
        "compute_path_us": percentiles(compute),
        "with_ledger_write_us": percentiles(with_ledger),
        "policy_act_us": ours_p,
        "bare_session_run_us": bare_p,
        "policy_overhead_p99_ratio": round(ours_p["p99"] / bare_p["p99"], 3),
    }


SHARED_5M = Path(__file__).resolve().parents[3] / "shared" / "data" / "binance" / "BTC_USDT-5m.parquet"
"""Real Binance 5m candles when this checkout sits beside the shared data (benchmark only; tests never need it)."""


def backtest_data(tmp: Path, candles: int) -> Path:
    """Write `candles` 5m candles: the last ones of the shared Binance file, else the bundled 1h candles relabelled."""
    if SHARED_5M.exists():
        frame = pd.read_parquet(SHARED_5M).iloc[-candles:]
    else:
        bundled = pd.read_parquet(sample_path())
        reps = -(-candles // len(bundled))
        frame = pd.concat([bundled] * reps, ignore_index=True).iloc[:candles].copy()
        frame["date"] = pd.date_range("2020-01-01", periods=len(frame), freq="5min", tz="UTC")
    path = tmp / "BTC_USDT-5m.parquet"
    frame.to_parquet(path)
    return path


def run_backtest_cli(model: Path, data: Path, out_dir: Path) -> dict[str, Any]:
    """Run the daemon's backtest through its command line; return candles/s (its own figure), wall time, peak RSS."""
    # The child's own peak: VmHWM of its address space. getrusage's ru_maxrss survives exec and so starts at
    # this (parent) process's RSS at the fork: it reported 387 MB for a backtest that peaked at 296 MB.
    code = (
        "import sys; from bot.__main__ import main; rc = main(sys.argv[1:]); "
        "hwm = [l.split()[1] for l in open('/proc/self/status') if l.startswith('VmHWM:')]; "
        "print('peak_rss_kb', hwm[0]); sys.exit(rc)"
    )
    args = ["mode=backtest", f"model_path={model}", f"data.path={data}", f"output_dir={out_dir}", "run_name=bt"]
    started = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-c", code, *args],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "AI_TRADING_LOG_LEVEL": "WARNING"},
    )
    wall = time.perf_counter() - started
    summary = json.loads((out_dir / "bt" / "summary.json").read_text())
    rss_kb = int(done.stdout.rsplit("peak_rss_kb", 1)[1].split()[0])
    return {
        "candles": summary["candles"],
        "candles_per_s": summary["candles_per_s"],
        "orders": summary["orders"],
        "fills": summary["fills"],
        "decisions_ahead": summary["decisions_ahead"],
        "risk_refusals": summary["risk_refusals"],
        "stderr_lines": len(done.stderr.splitlines()),
        "process_wall_s": round(wall, 2),
        "peak_rss_mb": round(rss_kb / 1024, 1),
    }


def main() -> None:
    """Measure and print one JSON line."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--candles", type=int, default=10_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--backtest-candles", type=int, default=200_000)
    parser.add_argument("--shadow-candles", type=int, default=3000, help="live p99 with and without two shadows")
    parser.add_argument("--export-transformer", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.export_transformer is not None:
        print(export_transformer_small(args.export_transformer))
        return
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(40))
    frame = load_ohlcv(sample_path())
    spec = fitted_spec(frame, train_rows=40_000, window=16)
    tmp = Path(tempfile.mkdtemp(prefix="daemon-bench-"))
    policy = OnnxPolicy.load(export_policy(tmp, spec, random_weights(spec, 2, (64, 64), seed=0), (0.0, 1.0)))
    # torch stays out of this process: its thread pools and allocator would skew onnxruntime's timings.
    subprocess.run(
        [sys.executable, __file__, "--export-transformer", str(tmp / "transformer")], check=True, capture_output=True
    )
    transformer = OnnxPolicy.load(tmp / "transformer" / "transformer_small.onnx")

    mlp = measure_decisions(policy, frame, args.candles, tmp)
    small = measure_decisions(transformer, frame, args.candles, tmp)

    # --- backtest throughput: `ai-trading bot mode=backtest` with config/bot/default.yaml, in a child process
    data = backtest_data(tmp, args.backtest_candles)
    card = {"start": "2017-08-17", "end": "2025-01-01", "timeframe": "5m", "symbol": "BTC/USDT"}
    model_5m = export_policy(
        tmp / "mlp-5m", spec, random_weights(spec, 2, (64, 64), seed=0), (0.0, 1.0), data_range=card
    )
    runs = [run_backtest_cli(model_5m, data, tmp / f"bt{i}") for i in range(args.repeat)]
    shadows = shadow_latency.measure(load_ohlcv(sample_path("BTC/USDT-1h")), args.shadow_candles, args.repeat)
    best_run = max(runs, key=lambda r: r["candles_per_s"])
    print(
        json.dumps(
            {
                "benchmark": "daemon_latency",
                "model": "mlp 163-64-64-2",
                **mlp,
                "backtest": {
                    "entry_point": "python -m bot mode=backtest (config/bot/default.yaml limits)",
                    "data": data.name,
                    **best_run,
                    "candles_per_s_runs": [round(r["candles_per_s"]) for r in runs],
                },
                "shadows": {"engine": "replay feed + paper venue, candles paced", **shadows},
                "transformer_small": {
                    "model": "transformer_small d_model=64 layers=2 heads=4 window=32 "
                    f"obs={transformer.feature_spec.observation_size}",
                    **small,
                },
                "targets": {
                    "compute_p99_us": 250,
                    "with_ledger_p99_us": 5000,
                    "policy_overhead": 1.2,
                    "backtest_candles_per_s": 50_000,
                    "backtest_peak_rss_mb": 250,
                    "transformer_small_compute_p99_us": 600,
                    "transformer_small_policy_overhead": 1.2,
                    "shadows_p99_ratio": 1.0,
                },
            }
        )
    )


if __name__ == "__main__":
    main()
