"""Live decision latency with and without shadow models; prints one JSON line.

The one engine over a replay feed and the paper venue (tests/support/shadow_replay.py: config/bot/default.yaml's
limits and capital, a SQLite ledger file in a temporary directory) runs ``--candles`` bundled 1h candles three
ways in the same process, alternated ``--repeat`` times: the live model alone, and with two shadow models beside
it (one with the live model's features, one with other features). Each decision's latency is the engine's own
``decision_latency`` (candle received to decided, the Prometheus histogram's samples), so the figures are the
live path's, with the shadows' work queued after each decision. Candles are paced as a live feed paces them:
each waits until the shadows handled the one before (the hour between two candles).

Figures: ``p50_us``/``p99_us`` of every live decision, per configuration (samples of all repeats pooled), the
shadows' candles handled, and ``p99_ratio`` = with shadows / without (the issue's target: unchanged, ~1.0).
Run: ``python tests/benchmarks/shadow_latency.py [--candles 3000] [--repeat 3]``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import structlog

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from adapters.data.ohlcv import load_ohlcv
from adapters.data.sample import sample_path
from tests.support.policy_model import export_policy, fitted_spec, random_weights
from tests.support.shadow_replay import replay

START = datetime(2023, 6, 1, tzinfo=UTC)


def _us(samples: list[float], q: float) -> float:
    return round(float(np.percentile(np.asarray(samples) * 1e6, q)), 1)


def measure(frame: pd.DataFrame, candles: int, repeat: int) -> dict[str, Any]:
    """Run the engine alone and with two shadows over `candles` candles, `repeat` times; return the figures."""
    end = START + timedelta(hours=candles)
    samples: dict[str, list[float]] = {"alone": [], "two_shadows": []}
    steps = 0
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        spec = fitted_spec(frame, train_rows=40_000, window=16)
        narrow = fitted_spec(frame, train_rows=40_000, window=8)
        live = export_policy(root, spec, random_weights(spec, 2, seed=0), (0.0, 1.0), name="live")
        shadows = [
            export_policy(root, spec, random_weights(spec, 2, seed=1), (0.0, 1.0), name="same-features"),
            export_policy(root, narrow, random_weights(narrow, 2, seed=2), (0.0, 1.0), name="other-features"),
        ]
        for i in range(repeat):
            for name, models in (("alone", []), ("two_shadows", shadows)):
                run_dir = root / f"{name}-{i}"
                run_dir.mkdir()
                run = asyncio.run(replay(run_dir, frame, live, models, start=START, end=end, paced=True))
                samples[name] += run.latencies_s
                steps += run.pool.steps if models else 0
    return {
        "candles": candles,
        "repeat": repeat,
        **{
            name: {"decisions": len(values), "p50_us": _us(values, 50), "p99_us": _us(values, 99)}
            for name, values in samples.items()
        },
        "shadow_steps": steps,
        "p99_ratio": round(_us(samples["two_shadows"], 99) / _us(samples["alone"], 99), 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--candles", type=int, default=3000)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    # Errors only, and on stderr: stdout is the JSON line.
    structlog.configure(
        wrapper_class=structlog.make_filtering_bound_logger(40), logger_factory=structlog.PrintLoggerFactory(sys.stderr)
    )
    frame = load_ohlcv(sample_path("BTC/USDT-1h"))
    print(json.dumps({"benchmark": "shadow_latency", **measure(frame, args.candles, args.repeat)}))


if __name__ == "__main__":
    main()
