"""Known-answer learning test: `ai-trading train` finds a planted edge, finds none in a random walk.

For each seed, draws two synthetic markets (adapters.data.synthetic): `regime`, whose candles' wicks tell the
drift of the next bar, and `random-walk`, which looks the same and has nothing to find. Each is trained with
`ai-trading train data.path=<file> seed=<seed> training.total_timesteps=<steps>` as a user would run it (a
subprocess, the shipped config otherwise: costs, splits, purge, checkpoint selection on the validation split),
and the policy's out-of-sample test return after fees and slippage is compared with buy-and-hold's over the
same test bars. Then sweeps of `--trials` short trials (`ai-trading sweep --workers 2`): two on the first
random walk, one with the shipped costs and one with fees and slippage set to zero; one on the first planted
market; one on the bundled BTC/USDT candles.

Why two on the random walk: the deflated Sharpe ratio asks whether the best trial has an edge at all, which is
the user's question after costs. PBO asks something else: whether picking the trial that did best in-sample picks
one that does better than the median out of sample. With costs, the trials that trade less lose less in every
period of a random walk, a real and persistent difference between trials that CSCV rightly does not call
overfitting (PBO 0.14 and 0.17 measured on two random walks). Without costs the trials differ by noise alone, and
PBO must come out high.

Checks (exit 1 under `--check` when one fails):
- the policy beats buy-and-hold on the regime market for at least `--min-planted` of the seeds;
- it beats buy-and-hold on the random walk for fewer than half of them (no edge found "for most seeds");
- the best trial of the random-walk sweep with costs does not survive the DSR check;
- the PBO of the cost-free random-walk sweep is at least `--min-pbo`;
- the best trial of the same sweep (with costs) on the first planted market survives the DSR check: the
  deflation does not call every edge luck;
- the sweep on the bundled BTC/USDT candles prints the study's PBO, every trial's DSR with `LOW` exactly
  where it is under the threshold, and whether the best trial survives.

Run: ``python tests/benchmarks/known_answer.py [--check]``; prints one JSON line on stdout. About three and a half
minutes on two cores (two trainings at a time, one torch thread each). Every seed is fixed: the markets,
the trainings and the sweep's sampler, so a run on the same machine gives the same figures.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from adapters.data.synthetic import MARKETS, SyntheticSpec, write_synthetic

ROOT = Path(__file__).resolve().parents[2]
# Shared by every training run here: one torch thread each (two run at once on two cores), no progress bar.
TRAIN_COMMON = ["training.torch_threads=1", "training.progress=false"]
SWEEP_YAML = """\
name: known-answer-random-walk
method: random
metric:
  name: validation/sharpe
  goal: maximize
parameters:
  training.lr:
    distribution: log_uniform_values
    min: 0.0001
    max: 0.003
  env.reward_scaling:
    distribution: uniform
    min: 0.5
    max: 3.0
  training.gamma:
    values: [0.9, 0.99]
"""


def _cli(args: list[str], cwd: Path, timeout_s: float) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "WANDB_MODE": "offline", "PYTHONPATH": str(ROOT)}
    command = [sys.executable, "-m", "bot.cli", *args]
    result = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout_s)
    if result.returncode != 0:
        tail = "\n".join((result.stdout + result.stderr).splitlines()[-20:])
        raise SystemExit(f"{' '.join(args[:3])} ... exited {result.returncode}:\n{tail}")
    return result


def train(market: str, seed: int, data: Path, work: Path, steps: int) -> dict[str, Any]:
    """Train on one market and return the test split's figures (policy vs buy-and-hold, after costs)."""
    out = work / f"runs-{market}-{seed}"
    started = time.perf_counter()
    _cli(
        [
            "train",
            f"data.path={data}",
            f"seed={seed}",
            f"training.total_timesteps={steps}",
            f"output_dir={out}",
            f"training.export_dir={out / 'models'}",
            *TRAIN_COMMON,
        ],
        work,
        timeout_s=900,
    )
    (summary_path,) = out.glob("*/summary.json")
    test = json.loads(summary_path.read_text())["test"]
    policy, hold = test["policy"], test["buy_and_hold"]
    return {
        "market": market,
        "seed": seed,
        "policy_return": policy["total_return"],
        "buy_and_hold_return": hold["total_return"],
        "policy_sharpe": policy["sharpe"],
        "buy_and_hold_sharpe": hold["sharpe"],
        "trades": policy["trade_count"],
        "policy_costs": policy["total_costs"],
        "beats_buy_and_hold": policy["total_return"] > hold["total_return"],
        "seconds": round(time.perf_counter() - started, 1),
    }


def sweep(data: Path | None, work: Path, trials: int, steps: int, *, costs: bool = True) -> dict[str, Any]:
    """A short random sweep: its PBO, the best trial's DSR against all trials, and what the leaderboard showed.

    `data` None is the bundled BTC/USDT candles (the shipped data config); `costs=False` sets fees and slippage to
    zero for every trial (see the module doc for why).
    """
    config = work / "sweep.yaml"
    config.write_text(SWEEP_YAML)
    label = "bundled" if data is None else f"{data.stem}-{'costs' if costs else 'no-costs'}"
    free = [] if costs else ["costs.taker_fee_bps=0", "costs.maker_fee_bps=0", "costs.slippage_bps=0"]
    started = time.perf_counter()
    result = _cli(
        [
            "sweep",
            "--config",
            str(config),
            "--count",
            str(trials),
            "--workers",
            "2",
            "--output-dir",
            str(work / f"sweep-{label}"),
            *([f"data.path={data}"] if data is not None else []),
            f"training.total_timesteps={steps}",
            "training.progress=false",
            *free,
        ],
        work,
        timeout_s=1200,
    )
    (summary_path,) = (work / f"sweep-{label}").glob("sweeps/*/sweep_summary.json")
    summary = json.loads(summary_path.read_text())
    block = summary["overfitting"]
    best = str(summary["best"]["number"])
    deflated = block["against_all_trials"][best]
    return {
        "trials": len([t for t in summary["trials"] if t.get("state") == "complete"]),
        "pbo": block["pbo"]["pbo"],
        "best_trial": int(best),
        "best_dsr": deflated["dsr"],
        "best_survives_dsr": bool(deflated["passed"]),
        "flagged_trials": sum(1 for t in summary["trials"] if t.get("dsr_flagged")),
        # The leaderboard prints the study's PBO, every trial's DSR (LOW under the threshold) and the best's verdict.
        "leaderboard_shows_pbo": "PBO (probability of backtest overfitting" in result.stdout,
        "leaderboard_dsr_flags_right": all(
            t.get("dsr_n_trials") is not None
            and t["dsr_flagged"] == (t["dsr"] is None or t["dsr"] < block["dsr_threshold"])
            and _leaderboard_row(result.stdout, t["number"]).count(" LOW") == int(t["dsr_flagged"])
            for t in summary["trials"]
        ),
        "leaderboard_says_whether_best_survives": f"best trial {best}: deflated Sharpe ratio" in result.stdout,
        "seconds": round(time.perf_counter() - started, 1),
    }


def _leaderboard_row(stdout: str, number: int) -> str:
    """The leaderboard's row of trial `number` (empty when it has none)."""
    return next((line for line in stdout.splitlines() if line.split()[:1] == [str(number)]), "")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--bars", type=int, default=30_000, help="candles per synthetic market (1h)")
    parser.add_argument("--timesteps", type=int, default=100_000, help="training steps per run")
    parser.add_argument("--trials", type=int, default=8, help="sweep trials on the random walk (0: no sweep)")
    parser.add_argument("--trial-timesteps", type=int, default=20_000)
    parser.add_argument("--parallel", type=int, default=2, help="trainings at once")
    parser.add_argument("--min-planted", type=int, default=2, help="seeds that must beat buy-and-hold")
    parser.add_argument("--min-pbo", type=float, default=0.25, help="least PBO of the cost-free random-walk sweep")
    parser.add_argument("--check", action="store_true", help="exit 1 when a check fails")
    parser.add_argument("--keep", type=Path, help="work directory to keep (default: a temporary one)")
    args = parser.parse_args(argv)

    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="known-answer-") as tmp:
        work = args.keep or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        jobs = []
        for seed in args.seeds:
            for market in MARKETS:
                path = work / f"{market}-{seed}.parquet"
                write_synthetic(SyntheticSpec(market=market, bars=args.bars, seed=seed), str(path))
                jobs.append((market, seed, path))
        with ThreadPoolExecutor(args.parallel) as pool:
            runs = list(pool.map(lambda job: train(*job, work, args.timesteps), jobs))
        first_walk = next(path for market, _, path in jobs if market == "random-walk")
        swept = {}
        if args.trials:
            for costs in (True, False):
                swept["shipped_costs" if costs else "no_costs"] = sweep(
                    first_walk, work, args.trials, args.trial_timesteps, costs=costs
                )
            first_planted = next(path for market, _, path in jobs if market == "regime")
            swept["planted"] = sweep(first_planted, work, args.trials, args.trial_timesteps)
            swept["bundled"] = sweep(None, work, args.trials, args.trial_timesteps)

    planted = [r for r in runs if r["market"] == "regime"]
    walk = [r for r in runs if r["market"] == "random-walk"]
    checks = {
        "planted_edge_found": sum(r["beats_buy_and_hold"] for r in planted) >= args.min_planted,
        "no_edge_in_random_walk": 2 * sum(r["beats_buy_and_hold"] for r in walk) < len(walk),
    }
    if swept:
        checks["random_walk_best_trial_fails_dsr"] = not swept["shipped_costs"]["best_survives_dsr"]
        pbo = swept["no_costs"]["pbo"]
        checks["random_walk_pbo_high_without_costs"] = pbo is not None and pbo >= args.min_pbo
        checks["planted_best_trial_survives_dsr"] = swept["planted"]["best_survives_dsr"]
        bundled = swept["bundled"]
        checks["bundled_sweep_prints_pbo_and_flagged_dsr"] = (
            bundled["trials"] == args.trials
            and bundled["pbo"] is not None
            and bundled["leaderboard_shows_pbo"]
            and bundled["leaderboard_dsr_flags_right"]
            and bundled["leaderboard_says_whether_best_survives"]
        )
    result = {
        "benchmark": "known_answer",
        "bars": args.bars,
        "timesteps": args.timesteps,
        "planted_beats_buy_and_hold": f"{sum(r['beats_buy_and_hold'] for r in planted)}/{len(planted)}",
        "random_walk_beats_buy_and_hold": f"{sum(r['beats_buy_and_hold'] for r in walk)}/{len(walk)}",
        "runs": runs,
        "sweeps": swept,
        "checks": checks,
        "passed": all(checks.values()),
        "seconds": round(time.perf_counter() - started, 1),
    }
    print(json.dumps(result))
    return 0 if result["passed"] or not args.check else 1


if __name__ == "__main__":
    sys.exit(main())
