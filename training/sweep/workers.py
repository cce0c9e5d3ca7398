"""`ai-trading sweep --workers N`: N trial processes at once on one machine, sharing the study's storage.

The process the user started is worker 0; it starts N-1 more `python -m training.sweep` processes with the same
sweep, name, seed and storage (a SQLite file in the sweep directory unless `--storage` names one) and its share
of the trial budget each. Optuna hands out distinct trial numbers from the shared storage, and a trial's
parameters depend only on (seed, number), so no trial is repeated and the set is the dry run's. Each worker trains
with `training.torch_threads` = usable cores // N (unless the user set it), so that workers × threads never exceeds
the cores: more workers than cores, or an explicit thread count that oversubscribes them, is refused.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import structlog

from training.sweep.spec import SweepConfigError

log = structlog.get_logger()


def usable_cores() -> int:
    """The cores this process may run on (its CPU affinity; the CPU count where affinity is unknown)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def threads_per_worker(workers: int, requested: int | str | None, cores: int) -> int:
    """Torch threads for each of `workers` processes on `cores` cores; refuse a setting that oversubscribes them.

    `requested` is the user's own `training.torch_threads` (None when not given; "auto" means the cores split).
    """
    if workers > cores:
        raise SweepConfigError(
            f"--workers {workers}: this machine has {cores} usable cores; at most {cores} workers, one core each"
        )
    if requested is None or requested == "auto":
        return max(1, cores // workers)
    threads = int(requested)
    if workers * threads > cores:
        raise SweepConfigError(
            f"--workers {workers} with training.torch_threads={threads} needs {workers * threads} cores, this machine "
            f"has {cores}; lower one of them (or leave training.torch_threads out: {cores // workers} each)"
        )
    return threads


def shares(budget: int, workers: int) -> list[int]:
    """Split `budget` trials over `workers`, the first ones taking the remainder."""
    return [budget // workers + (1 if i < budget % workers else 0) for i in range(workers)]


@dataclass
class Worker:
    """One started worker process."""

    index: int
    count: int
    process: subprocess.Popen[bytes]
    log_path: Path


def start_workers(argv: Sequence[str], counts: Sequence[int], log_dir: Path) -> list[Worker]:
    """Start one `python -m training.sweep` per count (worker 1, 2, ...), its output in `log_dir/worker-N.log`."""
    log_dir.mkdir(parents=True, exist_ok=True)
    workers = []
    for index, count in enumerate(counts, start=1):
        path = log_dir / f"worker-{index}.log"
        with path.open("wb") as out:
            process = subprocess.Popen(
                [sys.executable, "-m", "training.sweep", *argv, "--count", str(count)],
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
        workers.append(Worker(index, count, process, path))
        log.info("sweep_worker_started", worker=index, trials=count, pid=process.pid, log=str(path))
    return workers


def stop_workers(workers: Sequence[Worker]) -> None:
    """Interrupt the workers (as Ctrl-C would: each finishes its results) and wait for them."""
    for worker in workers:
        if worker.process.poll() is None:
            worker.process.send_signal(signal.SIGINT)
    for worker in workers:
        try:
            worker.process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            worker.process.kill()
            worker.process.wait()


def wait_workers(workers: Sequence[Worker]) -> list[Worker]:
    """Wait for every worker; return those that failed (a non-zero exit), each logged with its log file."""
    failed = []
    for worker in workers:
        code = worker.process.wait()
        if code != 0:
            failed.append(worker)
            log.error("sweep_worker_failed", worker=worker.index, exit_code=code, log=str(worker.log_path))
        else:
            log.info("sweep_worker_finished", worker=worker.index, trials=worker.count)
    return failed
