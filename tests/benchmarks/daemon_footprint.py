"""Start time, resident memory and imports of a paper daemon (`python -m bot mode=paper`); prints one JSON line.

The benchmark starts the local Binance-wire server (tests/support/binance_server.py) and runs the real daemon
as a subprocess against it (``exchange.api_url_override``), with W&B live logging on (offline) and the
ledger in a temporary directory. $NOTIFY_SOCKET points at a unix datagram socket this process reads, so
it sees the daemon's systemd notifications as systemd would:

- ``ready_s``: seconds from the process start (just before ``Popen``) to ``READY=1`` (sent once the ledger
  is reconciled with the venue and the features are warm); target <= 3 s.
- ``rss_mb``: VmRSS of the daemon process (/proc/<pid>/status) at READY and after the last candle fed; the
  W&B service (a child process) is counted apart (``wandb_service_rss_mb``); target <= 250 MB.
- ``torch_loaded``: whether any torch library is mapped into the daemon (/proc/<pid>/maps), checked at READY
  and at the end; must stay false.
- ``candles_fed``: closed candles the daemon handled (parsed from its ``STATUS=`` line).

How candles are fed: a paper daemon takes candles in real time (it polls right after each close), so the
server serves the bundled BTC/USDT candles re-stamped onto the real clock as ``1s`` candles (the last
warm-up candle closing at the start). 10,000 candles would take ~3 hours of wall time this way; the
benchmark stops after ``--seconds`` and reports how many candles it fed (``candles_fed`` against
``candles_target``, ``reached_candles_target``) instead of pretending. RSS growth per candle is reported so
the figure at 10,000 can be judged.

Run: ``python tests/benchmarks/daemon_footprint.py [--seconds 60]``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import structlog

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from adapters.ohlcv import load_ohlcv
from adapters.sample_data import sample_path
from tests.support.binance_server import BinanceServer, CandleArrays, SymbolSpec, load_candles
from tests.support.policy_model import export_policy, fitted_spec, random_weights

REPO = Path(__file__).resolve().parents[2]
STEP_MS = 1_000
WARM_CANDLES = 1_000
BTC_1S = SymbolSpec(
    "BTCUSDT", "BTC", "USDT", "0.00001000", "0.00001000", "0.01000000", "5.00000000", "BTC/USDT-1h", "1s"
)


@dataclass
class RetimedServer(BinanceServer):
    """The local server, its bundled candles re-stamped one per `STEP_MS` on the real clock (a sped-up market)."""

    anchor_ms: int = 0
    """Open time of the first re-stamped candle."""
    _cache: dict[str, CandleArrays] = field(default_factory=dict)

    def served_candles(self, symbol_id: str) -> CandleArrays:
        """Candles opened up to now, re-stamped."""
        arrays = self._cache.get(symbol_id)
        if arrays is None:
            bundled = load_candles(self.spec(symbol_id).candles)
            open_ms = self.anchor_ms + np.arange(len(bundled.open_ms), dtype=np.int64) * STEP_MS
            arrays = self._cache[symbol_id] = CandleArrays(open_ms=open_ms, ohlcv=bundled.ohlcv)
        end = int(np.searchsorted(arrays.open_ms, int(time.time() * 1000), side="right"))
        return CandleArrays(open_ms=arrays.open_ms[:end], ohlcv=arrays.ohlcv[:end])


def rss_mb(pid: int) -> float | None:
    """Resident memory of one process in MB (VmRSS), or None once it is gone."""
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    match = re.search(r"^VmRSS:\s+(\d+) kB", text, re.MULTILINE)
    return None if match is None else round(int(match.group(1)) / 1024, 1)


def descendants(pid: int) -> list[int]:
    """Process ids below `pid` (children, grandchildren...)."""
    parents: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        parents.setdefault(ppid, []).append(int(entry.name))
    found: list[int] = []
    todo = [pid]
    while todo:
        for child in parents.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def children_rss_mb(pid: int) -> float:
    """Summed RSS of the daemon's descendants (the W&B service), in MB."""
    return round(sum(rss_mb(child) or 0.0 for child in descendants(pid)), 1)


def torch_loaded(pid: int) -> bool:
    """Whether a torch shared library is mapped into the process."""
    try:
        maps = Path(f"/proc/{pid}/maps").read_text()
    except OSError:
        return False
    return "/torch/" in maps or "libtorch" in maps


async def run(seconds: float, candles_target: int) -> dict[str, Any]:
    """Run the daemon against the retimed server and measure it."""
    tmp = Path(tempfile.mkdtemp(prefix="daemon-footprint-"))
    frame = load_ohlcv(sample_path())
    spec = fitted_spec(frame, train_rows=40_000, window=16)
    model = export_policy(tmp / "model", spec, random_weights(spec, 2, (64, 64), seed=0), (0.0, 1.0))

    # The warm-up history is served at once; candle WARM_CANDLES is the first one that closes after the start.
    server = RetimedServer(symbols=(BTC_1S,), anchor_ms=int(time.time() * 1000) - WARM_CANDLES * STEP_MS)
    await server.start()
    notify_path = tmp / "notify.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(notify_path))
    sock.setblocking(False)
    env = os.environ | {
        "NOTIFY_SOCKET": str(notify_path),
        "WANDB_MODE": "offline",
        "WANDB_SILENT": "true",
        "WANDB_DIR": str(tmp),
        "PYTHONPATH": str(REPO),
    }
    env.pop("WATCHDOG_USEC", None)
    args = [
        sys.executable,
        "-m",
        "bot",
        "mode=paper",
        f"bot.model_path={model}",
        "bot.symbols=[BTC/USDT]",
        "bot.timeframe=1s",
        f"bot.ledger_dir={tmp / 'state'}",
        "bot.risk.max_orders_per_minute=1000",
        f"exchange.api_url_override={server.url}",
        "exchange.stream=poll",  # the local server pushes klines only when a test drives it
        "exchange.poll_delay_s=0.05",
        "exchange.enable_rate_limit=false",
        "wandb.enabled=true",
        f"output_dir={tmp / 'outputs'}",
        "log_level=WARNING",
    ]
    log_file = (tmp / "daemon.log").open("w")
    started = time.perf_counter()
    proc = subprocess.Popen(args, cwd=REPO, env=env, stdout=log_file, stderr=subprocess.STDOUT)
    loop = asyncio.get_running_loop()
    ready_s: float | None = None
    rss_ready: float | None = None
    torch_at_ready = False
    candles = 0
    candles_at_ready = 0
    deadline = time.perf_counter() + seconds
    try:
        while time.perf_counter() < deadline and candles < candles_target and proc.poll() is None:
            try:
                async with asyncio.timeout(0.5):
                    data = await loop.sock_recv(sock, 4096)
            except TimeoutError:
                continue
            now = time.perf_counter()
            for line in data.decode().splitlines():
                if line == "READY=1" and ready_s is None:
                    ready_s = now - started
                    rss_ready = rss_mb(proc.pid)
                    torch_at_ready = torch_loaded(proc.pid)
                elif line.startswith("STATUS="):
                    match = re.search(r"candles=(\d+)", line)
                    if match:
                        candles = int(match.group(1))
                        if ready_s is not None and not candles_at_ready:
                            candles_at_ready = candles
            if ready_s is None and now - started > 60:
                break
        elapsed = time.perf_counter() - started
        rss_end = rss_mb(proc.pid)
        wandb_rss = children_rss_mb(proc.pid)
        torch_at_end = torch_loaded(proc.pid)
        alive = proc.poll() is None
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                await asyncio.to_thread(proc.wait, 30)
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        log_file.close()
        sock.close()
        await server.stop()
    growth = None
    if rss_ready is not None and rss_end is not None and candles > 0:
        growth = round((rss_end - rss_ready) * 1024 / candles, 2)
    return {
        "benchmark": "daemon_footprint",
        "command": "python -m bot " + " ".join(a for a in args[3:] if "model_path" not in a and "url" not in a),
        "ready_s": None if ready_s is None else round(ready_s, 3),
        "rss_mb_at_ready": rss_ready,
        "rss_mb": rss_end,
        "wandb_service_rss_mb": wandb_rss,
        "rss_growth_kb_per_candle": growth,
        "candles_fed": candles,
        "candles_target": candles_target,
        "reached_candles_target": candles >= candles_target,
        "feed": f"bundled BTC/USDT 1h candles re-stamped as 1s candles on the real clock, {seconds:g} s budget",
        "wall_s": round(elapsed, 1),
        "daemon_alive_at_end": alive,
        "exit_code_after_sigterm": proc.returncode,
        "torch_loaded": torch_at_ready or torch_at_end,
        "targets": {"ready_s": 3.0, "rss_mb": 250, "candles": candles_target, "torch_loaded": False},
        "log": str(tmp / "daemon.log"),
    }


def main() -> None:
    """Measure and print one JSON line."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=60.0, help="wall-clock budget for feeding candles")
    parser.add_argument("--candles", type=int, default=10_000, help="candles to feed before measuring")
    args = parser.parse_args()
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(40))
    print(json.dumps(asyncio.run(run(args.seconds, args.candles))))


if __name__ == "__main__":
    main()
