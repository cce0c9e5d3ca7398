"""Benchmark the durable pre-send ledger write (`Ledger.record_new_order(..., sent=True)`) on SQLite.

Prints one JSON line: p50/p99 in ms per synchronous level, with the raw sqlite3 insert+commit of the same
level measured in the same run as the peer (the floor that SQLAlchemy and our bookkeeping add to).

    python tests/benchmarks/bench_ledger_write.py [--n 2000]
"""

from __future__ import annotations

import argparse
import json
import sqlite3
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import structlog

from adapters.types import ClientOrderId, OrderRequest, OrderType, Side
from bot.ledger.store import Ledger


def _percentiles(samples: list[float]) -> dict[str, float]:
    ordered = sorted(samples)
    return {
        "p50_ms": round(statistics.median(ordered) * 1e3, 3),
        "p99_ms": round(ordered[int(0.99 * (len(ordered) - 1))] * 1e3, 3),
        "max_ms": round(ordered[-1] * 1e3, 3),
    }


def bench_ledger(directory: Path, synchronous: str, n: int) -> list[float]:
    """Time `n` durable pre-send writes."""
    ledger = Ledger(f"sqlite:///{directory / f'ledger-{synchronous}.db'}", synchronous=synchronous)  # type: ignore[arg-type]
    samples = []
    for i in range(n):
        request = OrderRequest(
            ClientOrderId(f"bench-{i}"), "BTC/USDT", Side.BUY, OrderType.LIMIT, Decimal("0.01234"), Decimal("43123.45")
        )
        start = time.perf_counter()
        ledger.record_new_order(request, ts=datetime.now(UTC), model_sha="0" * 64, sent=True)
        samples.append(time.perf_counter() - start)
    ledger.close()
    return samples


def bench_raw(directory: Path, synchronous: str, n: int) -> list[float]:
    """Time `n` raw sqlite3 insert+commit of a similar row (the peer)."""
    conn = sqlite3.connect(directory / f"raw-{synchronous}.db", isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute(f"PRAGMA synchronous={synchronous}")
    conn.execute("CREATE TABLE t (id TEXT PRIMARY KEY, payload TEXT)")
    samples = []
    for i in range(n):
        start = time.perf_counter()
        conn.execute("BEGIN")
        conn.execute("INSERT INTO t VALUES (?, ?)", (f"raw-{i}", "x" * 200))
        conn.execute("COMMIT")
        samples.append(time.perf_counter() - start)
    conn.close()
    return samples


def main() -> None:
    """Run the benchmark and print one JSON line."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--n", type=int, default=2000, help="writes per configuration")
    args = parser.parse_args()
    structlog.configure(logger_factory=structlog.PrintLoggerFactory(sys.stderr))
    result: dict[str, object] = {"benchmark": "ledger_record_new_order", "n": args.n}
    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(tmp)
        for synchronous in ("NORMAL", "FULL"):
            ledger = _percentiles(bench_ledger(directory, synchronous, args.n))
            raw = _percentiles(bench_raw(directory, synchronous, args.n))
            result[synchronous] = {
                "ledger": ledger,
                "raw_sqlite3": raw,
                "p50_ratio_vs_raw": round(ledger["p50_ms"] / raw["p50_ms"], 2) if raw["p50_ms"] else None,
            }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
