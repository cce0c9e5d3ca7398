"""Start time, memory, threads and tasks of a paper daemon with every sink on, over 10,000 candles (or a soak of
100,000); one JSON line.

The benchmark starts the local Binance-wire server (tests/support/binance_server.py) and a real Mosquitto
broker (tests/support/mosquitto.py), then runs the daemon as a subprocess against them with every sink
enabled: W&B live logging (offline), MQTT (events, status and the command channel), the Prometheus exporter
(scraped once at the end), the ledger in a temporary directory. $NOTIFY_SOCKET points at a unix datagram
socket this process reads, so it sees the daemon's systemd notifications as systemd would.

How 10,000 candles fit in minutes: the market runs on an accelerated clock shared by both processes,
``market_ms = origin_market_ms + (time.time() - origin_wall_s) * 1000 * speed``. The server serves the
bundled BTC/USDT candles re-stamped as consecutive ``1s`` bars up to that clock (``market_clock_ms``); the
daemon subprocess is this file run with ``--daemon``: it parses the same overrides as ``python -m bot``,
configures logging the same way and runs the same code path (`bot.daemon.run_exchange_daemon` → `run_daemon`)
with the feed's clock and sleeps on the accelerated market clock. Nothing else is stubbed: the candles come
over HTTP through ccxt, orders go through the paper venue, the ledger, risk and every sink.

Figures:

- ``ready_s``: seconds from the process start (just before ``Popen``) to ``READY=1`` (sent once the ledger
  is reconciled with the venue and the features are warm); target <= 3 s.
- ``rss_mb``: VmRSS of the daemon process (/proc/<pid>/status) at READY and after 1k, 5k and 10k candles;
  the W&B service (a child process) is counted apart (``wandb_service_rss_mb``); target <= 250 MB after 10k.
- ``rss_growth_kb_per_candle_second_half``: RSS growth between the half-way mark and the target, per candle.
- ``torch_loaded``: whether any torch library is mapped into the daemon (/proc/<pid>/maps); must stay false.
- Soak figures: ``rss_growth_pct_after_warmup``, from the warm-up mark (1,000 candles) to the end (target
  < 10 %); the daemon's OS threads (/proc/<pid>/status) and asyncio tasks (a probe task the benchmark's daemon
  runs writes, once a second, the floor of ``len(asyncio.all_tasks())`` over its last 10 samples, so a
  short-lived task does not count and a leaked one does) at the half-way mark and at the end, which must not
  grow; and the deepest sink queue the Prometheus exporter reported (``aitrading_sink_queue_depth``), which must
  stay within its bound.

Run: ``python tests/benchmarks/daemon_footprint.py [--candles 10000] [--speed 50] [--seconds 600]``; the soak is
``--candles 100000 --speed 150 --seconds 1200`` (about 11 minutes), and CI runs ``--candles 3000`` for the same
checks in about a minute.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import psutil

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

STEP_MS = 1_000
WARM_CANDLES = 1_000
PROBE_ENV = "AI_TRADING_BENCH_PROBE"
PROBE_WINDOW = 10  # samples (wall seconds) the task floor is taken over
"""Path the benchmark's daemon writes its task and thread counts to, once a wall second."""
SINK_QUEUE_BOUND = 1_000
"""The bound of the daemon's sink queues (the W&B live sink's and the MQTT bridge's default queue_size)."""
CLOCK_ENV = "AI_TRADING_BENCH_MARKET_CLOCK"
"""``origin_wall_s,origin_market_ms,speed`` of the shared accelerated market clock."""
TARGETS = {"ready_s": 3.0, "rss_mb": 250.0, "torch_loaded": False, "rss_growth_pct_after_warmup": 10.0}


@dataclass(frozen=True)
class MarketClock:
    """Market time running `speed` times faster than the wall clock from an origin; the same in both processes."""

    origin_wall_s: float
    origin_market_ms: int
    speed: float

    def __call__(self) -> int:
        """Market time in ms."""
        return self.origin_market_ms + int((time.time() - self.origin_wall_s) * 1000 * self.speed)

    def now(self) -> datetime:
        """Market time as a UTC datetime."""
        from adapters.types import utc_from_ms

        return utc_from_ms(self())

    async def sleep(self, seconds: float) -> None:
        """Wait `seconds` of market time."""
        await asyncio.sleep(max(seconds, 0.0) / self.speed)

    def encode(self) -> str:
        """The clock as the value of `CLOCK_ENV`."""
        return f"{self.origin_wall_s!r},{self.origin_market_ms},{self.speed!r}"

    @classmethod
    def decode(cls, text: str) -> MarketClock:
        """The clock from the value of `CLOCK_ENV`."""
        wall, market, speed = text.split(",")
        return cls(float(wall), int(market), float(speed))


# --------------------------------------------------------------------------------------------- the daemon (child)


def daemon_main(argv: list[str]) -> int:
    """Run `python -m bot`'s paper path with the market clock of `CLOCK_ENV` (imports only what the daemon does)."""
    from bot.__main__ import normalise_overrides
    from bot.app_config import BotAppConfig
    from bot.config import load_config
    from bot.daemon import run_exchange_daemon
    from bot.startup import load_policy
    from monitoring.logging import configure_logging

    clock = MarketClock.decode(os.environ[CLOCK_ENV])
    cfg = load_config(BotAppConfig, normalise_overrides(argv))
    configure_logging(cfg.log_level, wandb_bridge=cfg.wandb.enabled)
    policy = load_policy(cfg)
    probe = Path(os.environ[PROBE_ENV]) if PROBE_ENV in os.environ else None

    async def daemon() -> None:
        task = asyncio.create_task(_probe(probe)) if probe is not None else None
        try:
            await run_exchange_daemon(cfg, policy, None, clock_ms=clock, sleep=clock.sleep)
        finally:
            if task is not None:
                task.cancel()

    with contextlib.suppress(asyncio.CancelledError):
        asyncio.run(daemon())
    return 0


async def _probe(path: Path) -> None:
    """Once a wall second, atomically write the event loop's tasks (less this probe) and the thread count.

    ``tasks`` is the floor over the last PROBE_WINDOW samples: a task started per candle or per publish and
    finished soon after (a ``to_thread`` call, a flush) lifts one sample but not the floor, while a leaked task
    that never finishes lifts every sample. ``task_names`` counts the long-lived tasks by name (the coroutine's
    qualified name) at the floor's sample, so a failing check says what grew.
    """
    import collections
    import threading

    window: collections.deque[tuple[int, dict[str, int]]] = collections.deque(maxlen=PROBE_WINDOW)
    me = asyncio.current_task()
    while True:
        names = collections.Counter(_task_name(task) for task in asyncio.all_tasks() if task is not me)
        window.append((sum(names.values()), dict(sorted(names.items()))))
        floor, floor_names = min(window, key=lambda sample: sample[0])
        tmp = path.with_suffix(".tmp")
        tmp.write_text(
            json.dumps(
                {
                    "tasks": floor,
                    "tasks_now": window[-1][0],
                    "task_names": floor_names,
                    "threads": threading.active_count(),
                }
            )
        )
        tmp.replace(path)
        await asyncio.sleep(1.0)


def _task_name(task: asyncio.Task[object]) -> str:
    coro = task.get_coro()
    return getattr(coro, "__qualname__", None) or task.get_name()


# --------------------------------------------------------------------------------------------- the measurement


def rss_mb(pid: int) -> float | None:
    """Resident memory of one process in MB (VmRSS), or None once it is gone."""
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    match = re.search(r"^VmRSS:\s+(\d+) kB", text, re.MULTILINE)
    return None if match is None else round(int(match.group(1)) / 1024, 1)


def descendants(pid: int) -> list[int]:
    """Process ids below `pid` (children, grandchildren...); none once it is gone."""
    try:
        return [child.pid for child in psutil.Process(pid).children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


def children_rss_mb(pid: int) -> float:
    """Summed RSS of the daemon's descendants (the W&B service), in MB."""
    return round(sum(rss_mb(child) or 0.0 for child in descendants(pid)), 1)


def os_threads(pid: int) -> int | None:
    """Threads of one process (/proc/<pid>/status), or None once it is gone."""
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    match = re.search(r"^Threads:\s+(\d+)", text, re.MULTILINE)
    return None if match is None else int(match.group(1))


def read_probe(path: Path) -> dict[str, Any] | None:
    """The daemon's latest task and thread counts, or None before its first write."""
    try:
        data: dict[str, Any] = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data


def torch_loaded(pid: int) -> bool:
    """Whether a torch shared library is mapped into the process."""
    try:
        maps = Path(f"/proc/{pid}/maps").read_text()
    except OSError:
        return False
    return "/torch/" in maps or "libtorch" in maps


def scrape_metrics(port: int) -> tuple[int, float | None]:
    """Sample lines the daemon's Prometheus exporter serves, and its deepest sink queue (None if none reported)."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    samples = [line for line in text.splitlines() if line and not line.startswith("#")]
    depths = [float(line.rsplit(" ", 1)[1]) for line in samples if line.startswith("aitrading_sink_queue_depth{")]
    return len(samples), max(depths) if depths else None


async def run(candles_target: int, speed: float, seconds: float) -> dict[str, Any]:
    """Run the daemon against the accelerated server and broker; measure it."""
    marks = sorted({WARM_CANDLES, candles_target // 2, candles_target} - {0})
    import structlog

    from adapters.data.ohlcv import load_ohlcv
    from adapters.data.sample import sample_path
    from tests.support.binance_server import BinanceServer, SymbolSpec
    from tests.support.mosquitto import start_mosquitto
    from tests.support.policy_model import export_policy, fitted_spec, random_weights
    from tests.support.services import free_port

    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(40))
    tmp = Path(tempfile.mkdtemp(prefix="daemon-footprint-"))
    frame = load_ohlcv(sample_path())
    spec = fitted_spec(frame, train_rows=40_000, window=16)
    model = export_policy(tmp / "model", spec, random_weights(spec, 2, (64, 64), seed=0), (0.0, 1.0))

    # Warm-up history is served at once; the first candle the daemon trades closes just after it starts.
    wall = time.time()
    first_open_ms = (int(wall * 1000) // STEP_MS) * STEP_MS - WARM_CANDLES * STEP_MS
    clock = MarketClock(wall, int(wall * 1000), speed)
    btc_1s = SymbolSpec(
        "BTCUSDT",
        "BTC",
        "USDT",
        "0.00001000",
        "0.00001000",
        "0.01000000",
        "5.00000000",
        "BTC/USDT-1h",
        "1s",
        first_open_ms=first_open_ms,
        # The bundled file holds 72,540 candles; a longer soak replays it, each pass going on from the last close.
        passes=math.ceil((candles_target + WARM_CANDLES) / len(frame)),
    )
    server = BinanceServer(symbols=(btc_1s,), market_clock_ms=clock)
    await server.start()
    broker = start_mosquitto(tmp / "mosquitto")
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
        CLOCK_ENV: clock.encode(),
        PROBE_ENV: str(tmp / "probe.json"),
    }
    env.pop("WATCHDOG_USEC", None)
    metrics_port = free_port()
    overrides = [
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
        "mqtt.enabled=true",
        f"mqtt.host={broker.host}",
        f"mqtt.port={broker.port}",
        "metrics.enabled=true",
        f"metrics.port={metrics_port}",
        f"output_dir={tmp / 'outputs'}",
        "log_level=WARNING",
    ]
    args = [sys.executable, str(Path(__file__).resolve()), "--daemon", *overrides]
    log_path = tmp / "daemon.log"
    log_file = log_path.open("w")
    started = time.perf_counter()
    proc = subprocess.Popen(args, cwd=REPO, env=env, stdout=log_file, stderr=subprocess.STDOUT)
    loop = asyncio.get_running_loop()
    ready_s: float | None = None
    rss: dict[str, float | None] = {}
    at_mark: dict[int, int] = {}
    torch_seen = False
    candles = 0
    metric_samples: int | None = None
    deepest_queue: float | None = None
    threads: dict[str, int | None] = {}
    tasks: dict[str, int | None] = {}
    task_names: dict[str, object] = {}
    deadline = time.perf_counter() + seconds
    try:
        while time.perf_counter() < deadline and candles < candles_target and proc.poll() is None:
            try:
                async with asyncio.timeout(0.5):
                    data = await loop.sock_recv(sock, 4096)
            except TimeoutError:
                if ready_s is None and time.perf_counter() - started > 60:
                    break
                continue
            now = time.perf_counter()
            for line in data.decode().splitlines():
                if line == "READY=1" and ready_s is None:
                    ready_s = now - started
                    rss["ready"] = rss_mb(proc.pid)
                    torch_seen |= torch_loaded(proc.pid)
                elif line.startswith("STATUS="):
                    match = re.search(r"candles=(\d+)", line)
                    if match:
                        candles = int(match.group(1))
                        for mark in marks:
                            if candles >= mark and mark not in at_mark:
                                at_mark[mark] = candles
                                label = _label(mark)
                                rss[label] = rss_mb(proc.pid)
                                threads[label] = os_threads(proc.pid)
                                probed = read_probe(tmp / "probe.json") or {}
                                tasks[label] = probed.get("tasks")
                                task_names[label] = probed.get("task_names")
        elapsed = time.perf_counter() - started
        rss["end"] = rss_mb(proc.pid)
        threads["end"] = os_threads(proc.pid)
        probed = read_probe(tmp / "probe.json") or {}
        tasks["end"] = probed.get("tasks")
        task_names["end"] = probed.get("task_names")
        wandb_rss = children_rss_mb(proc.pid)
        torch_seen |= torch_loaded(proc.pid)
        alive = proc.poll() is None
        if alive:
            with contextlib.suppress(OSError):
                metric_samples, deepest_queue = await asyncio.to_thread(scrape_metrics, metrics_port)
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
        broker.stop()
        await server.stop()
    warm, half, last = _label(marks[0]), _label(marks[-2]) if len(marks) > 2 else None, _label(marks[-1])
    growth = growth_pct = None
    if half is not None and rss.get(half) is not None and rss.get(last) is not None:
        span = at_mark[marks[-1]] - at_mark[marks[-2]]
        growth = round((rss[last] - rss[half]) * 1024 / span, 2)  # type: ignore[operator]
    if rss.get(warm) and rss.get("end") is not None:
        growth_pct = round((rss["end"] - rss[warm]) / rss[warm] * 100, 2)  # type: ignore[operator]
    final = rss.get(last)

    def no_growth(counts: dict[str, int | None]) -> bool:
        # Over the second half of the run (after every lazily started thread or task has started), or from the
        # warm-up mark on a short run; measured at the end, so a run that falls short of its target still counts.
        first, end = counts.get(half or warm), counts.get("end")
        return first is not None and end is not None and end <= first

    return {
        "benchmark": "daemon_footprint",
        "command": "python tests/benchmarks/daemon_footprint.py --daemon "
        + " ".join(a for a in overrides if "model_path" not in a and "url" not in a and "dir" not in a),
        "ready_s": None if ready_s is None else round(ready_s, 3),
        "rss_mb": rss,
        "rss_growth_kb_per_candle_second_half": growth,
        "rss_growth_pct_after_warmup": growth_pct,
        "threads": threads,
        "asyncio_tasks": tasks,
        "asyncio_task_names": {label: task_names.get(label) for label in (half or warm, "end")},
        "deepest_sink_queue": deepest_queue,
        "sink_queue_bound": SINK_QUEUE_BOUND,
        "wandb_service_rss_mb": wandb_rss,
        "candles_fed": candles,
        "candles_target": candles_target,
        "feed": f"bundled BTC/USDT 1h candles re-stamped as 1s bars, market clock x{speed:g}",
        "wall_s": round(elapsed, 1),
        "sinks": {"wandb": "offline", "mqtt": f"mosquitto :{broker.port}", "metrics_samples_scraped": metric_samples},
        "daemon_alive_at_end": alive,
        "exit_code_after_sigterm": proc.returncode,
        "torch_loaded": torch_seen,
        "targets": TARGETS | {"candles": candles_target},
        "met": {
            "ready_s": ready_s is not None and ready_s <= TARGETS["ready_s"],
            "rss_mb": final is not None and final <= TARGETS["rss_mb"],
            "candles": candles >= candles_target,
            "torch_absent": not torch_seen,
            "rss_growth_pct_after_warmup": growth_pct is not None
            and growth_pct < TARGETS["rss_growth_pct_after_warmup"],
            "no_thread_growth": no_growth(threads),
            "no_task_growth": no_growth(tasks),
            "sink_queues_bounded": deepest_queue is None or deepest_queue <= SINK_QUEUE_BOUND,
        },
        "log": str(log_path),
    }


def _label(mark: int) -> str:
    return f"{mark // 1000}k" if mark % 1000 == 0 else str(mark)


def main() -> None:
    """Measure and print one JSON line (or, with --daemon, be the daemon); --check-soak fails on a leak."""
    if sys.argv[1:2] == ["--daemon"]:
        raise SystemExit(daemon_main(sys.argv[2:]))
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--candles", type=int, default=10_000, help="candles to feed before measuring")
    parser.add_argument("--speed", type=float, default=50.0, help="market seconds per wall second (1s candles)")
    parser.add_argument("--seconds", type=float, default=600.0, help="wall-clock budget")
    parser.add_argument(
        "--check-soak",
        action="store_true",
        help="exit 1 unless the daemon fed every candle and stayed alive with no memory, thread, task or queue growth",
    )
    args = parser.parse_args()
    result = asyncio.run(run(args.candles, args.speed, args.seconds))
    print(json.dumps(result))
    soak = ("candles", "rss_growth_pct_after_warmup", "no_thread_growth", "no_task_growth", "sink_queues_bounded")
    if args.check_soak and not (result["daemon_alive_at_end"] and all(result["met"][key] for key in soak)):
        failed = [key for key in soak if not result["met"][key]] or ["daemon_alive_at_end"]
        print(f"daemon soak: missed {', '.join(failed)}", file=sys.stderr)
        raise SystemExit(1)


if __name__ == "__main__":
    main()
