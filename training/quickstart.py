"""`ai-trading quickstart` / `python -m training.quickstart`: the whole pipeline once, offline, in minutes.

On a fresh install with no network and no keys:

1. train a small PPO policy on the bundled Binance BTC/USDT 1h candles (``ai-trading train``; W&B offline),
   selected on the validation split and exported to ONNX with its model card;
2. run the daemon in backtest mode (``ai-trading bot mode=backtest``) with that exported model over the
   held-out test period training never saw — the ONNX runtime, the paper venue with its lot and tick
   rounding, the same cost model;
3. print the evaluation against buy-and-hold and an SMA rule, check that the daemon's backtest agrees with
   training's own evaluation, and say where everything is and what to run next.

Step 2 runs two backtests of the same window. The check runs with the risk limits lifted, so the daemon sizes
positions as the training env does (all in or flat) and its figures can be compared with training's. The other
runs with the shipped ``config/bot/default.yaml`` as it is: that is what ``ai-trading bot`` trades on paper, and
its result (return, trades, risk refusals) is printed beside the check.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import structlog

from adapters.errors import DataError
from bot.errors import ConfigError
from monitoring.logging import configure_logging
from training.cli import print_error

log = structlog.get_logger()

EXIT_OK, EXIT_ERROR, EXIT_CONFIG = 0, 1, 2
PROG = "ai-trading quickstart"

QUICK_TRAINING = (
    "model=mlp",
    "training.ppo.total_timesteps=200000",
    "training.ppo.num_envs=16",
    "training.eval_every=5",
    "wandb.enabled=true",
    "training.publish=true",
)
"""Overrides that keep the run to a minute or two on 2 cores; the user's own overrides come after them.

The quickstart publishes its model (`ai-trading train` alone does not) so that its "next: ai-trading bot" step
runs the model it just made; its summary says so."""

NO_RISK_LIMITS = (
    "bot.risk.max_position_notional=1e15",
    "bot.risk.max_total_notional=1e15",
    "bot.risk.max_order_notional=1e15",
    "bot.risk.max_orders_per_minute=100000",
    "bot.risk.max_daily_loss=1",
    "bot.risk.max_drawdown=1",
    "bot.risk.reduce_at=1",
)
"""The backtest sizes like the training env (the whole balance or nothing), so training's numbers can be checked."""

AGREEMENT_PP = 0.5
"""Largest difference in total return (percentage points) between the daemon's backtest and training's
evaluation that still counts as agreement. Measured gaps are ~0.02 pp: the venue rounds amounts down to the lot
step and prices to the tick, the simulation trades fractional positions (tests/test_engine.py)."""


@dataclass(frozen=True)
class QuickstartResult:
    """What the quickstart produced (for tests and callers)."""

    train_dir: Path
    model_path: Path
    backtest_dir: Path
    training_test: dict[str, Any]
    """Training's evaluation of the test split: strategy -> report dict."""
    backtest: dict[str, Any]
    """The daemon backtest's evaluation of the same period (limits lifted): strategy -> report dict."""
    wandb_dir: Path | None
    defaults_dir: Path
    """The backtest of the same period with the shipped risk limits (config/bot/default.yaml)."""
    defaults: dict[str, Any]
    """That backtest's summary (evaluation, orders, risk refusals)."""

    @property
    def agrees(self) -> bool:
        """Same trades and total returns within AGREEMENT_PP."""
        same_trades = self.backtest["policy"]["trade_count"] == self.training_test["policy"]["trade_count"]
        return same_trades and self.return_gap_pp <= AGREEMENT_PP

    @property
    def return_gap_pp(self) -> float:
        """|daemon backtest total return - training evaluation total return|, in percentage points."""
        ours = float(self.backtest["policy"]["total_return"])
        theirs = float(self.training_test["policy"]["total_return"])
        return abs(ours - theirs) * 100.0


def _end_after(last: str, timeframe: str) -> str:
    """The exclusive end of a window whose last candle opens at `last`."""
    return (pd.Timestamp(last) + pd.Timedelta(timeframe.replace("m", "min"))).isoformat()


def run_quickstart(overrides: Sequence[str] = (), *, out: Any = None) -> QuickstartResult:
    """Train, export, backtest the export over the test split and report; return where everything went."""
    from training.train import check_model_overrides, load_train_config, run

    stream = out if out is not None else sys.stdout
    cfg = load_train_config([*QUICK_TRAINING, *overrides])
    check_model_overrides(cfg.model.name, [*QUICK_TRAINING, *overrides])
    stream.write("== 1/3 training a policy on the bundled candles (W&B offline) ==\n")
    stream.flush()
    outcome = run(cfg)
    if outcome.card_path is None:
        raise RuntimeError("training exported no model")
    model_path = outcome.card_path.parent / "best_model.onnx"
    window = outcome.reports["data_range"]["test"]
    timeframe = cfg.data.timeframe

    stream.write(
        "\n== 2/3 the daemon backtests the exported model over the held-out test split "
        f"{window['first']} .. {window['last']} ==\n"
    )
    stream.flush()
    bot_overrides = [
        "bot.mode=backtest",
        f"bot.model_path={model_path}",
        f"bot.start={pd.Timestamp(window['first']).isoformat()}",
        f"bot.end={_end_after(str(window['last']), timeframe)}",
        f"output_dir={cfg.output_dir}",
        f"run_name={outcome.run_dir.name}-backtest",
        f"seed={cfg.seed}",
        "wandb.enabled=false",
        *NO_RISK_LIMITS,
        *[o for o in overrides if o.split("=", 1)[0].lstrip("+~").split(".")[0] in ("data", "costs")],
    ]
    backtest_dir = _backtest(bot_overrides, stream)
    summary = json.loads((backtest_dir / "summary.json").read_text())
    stream.write(
        "\n-- the same window with the shipped risk limits (config/bot/default.yaml, what `ai-trading bot` trades) --\n"
    )
    stream.flush()
    defaults_overrides = [o for o in bot_overrides if o not in NO_RISK_LIMITS and not o.startswith("run_name=")]
    defaults_dir = _backtest([*defaults_overrides, f"run_name={outcome.run_dir.name}-backtest-defaults"], stream)
    wandb_dir = outcome.run_dir / "wandb" if cfg.wandb.enabled and (outcome.run_dir / "wandb").exists() else None
    result = QuickstartResult(
        train_dir=outcome.run_dir,
        model_path=outcome.published_path or model_path,
        backtest_dir=backtest_dir,
        training_test=outcome.reports["test"],
        backtest=summary["evaluation"]["backtest"],
        wandb_dir=wandb_dir,
        defaults_dir=defaults_dir,
        defaults=json.loads((defaults_dir / "summary.json").read_text()),
    )
    _report(result, cfg, stream)
    return result


def _backtest(overrides: list[str], stream: Any) -> Path:
    """Run `ai-trading bot mode=backtest` with `overrides`; return its run directory."""
    from bot.app_config import BotAppConfig
    from bot.backtest.mode import run_backtest_mode
    from bot.config import load_config
    from bot.errors import DataMismatch, ModelRefused

    try:
        bot_cfg = load_config(BotAppConfig, overrides)
    except ConfigError as e:
        raise ConfigError(f"backtest config: {e}") from e
    try:
        run_backtest_mode(bot_cfg, stream)
    except (ModelRefused, DataMismatch) as e:
        raise RuntimeError(f"the daemon refused the exported model: {e}") from e
    return Path(bot_cfg.output_dir) / (bot_cfg.run_name or "")


def _report(result: QuickstartResult, cfg: Any, stream: Any) -> None:
    ours, theirs = result.backtest["policy"], result.training_test["policy"]
    defaults = result.defaults["evaluation"]["backtest"]["policy"]
    refusals = ", ".join(f"{k} {v}" for k, v in sorted(result.defaults["risk_refusals"].items())) or "none"
    gap = result.return_gap_pp
    verdict = "agree" if result.agrees else "DISAGREE"
    lines = [
        "",
        "== 3/3 summary ==",
        f"daemon backtest vs training evaluation of the test split: {verdict}",
        f"  total return  {ours['total_return'] * 100:+.3f}% vs {theirs['total_return'] * 100:+.3f}%"
        f" (gap {gap:.3f} pp; lot/tick rounding in the paper venue)",
        f"  trades        {ours['trade_count']} vs {theirs['trade_count']}",
        f"  policy vs buy-and-hold: {ours['total_return'] * 100:+.2f}% vs "
        f"{result.backtest['buy_and_hold']['total_return'] * 100:+.2f}% after fees and slippage",
        f"with the shipped risk limits: total return {defaults['total_return'] * 100:+.3f}%, "
        f"{result.defaults['orders']} orders, {defaults['trade_count']} round trips; risk refusals: {refusals}",
        "",
        "where everything is:",
        f"  training run     {result.train_dir}  (config, metrics history, checkpoints, test trades, summary)",
        f"  exported model   {result.train_dir / 'models' / 'best_model.onnx'}  (+ best_model.json, its model card)",
        f"  published to     {result.model_path}  (the daemon's default model: the quickstart publishes it;"
        " `ai-trading train` does only with training.publish=true)",
        f"  daemon backtest  {result.backtest_dir}  (trades, equity curve, summary; limits lifted)",
        f"  with the limits  {result.defaults_dir}  (the shipped config/bot/default.yaml)",
    ]
    if result.wandb_dir is not None:
        lines.append(f"  W&B offline run  {result.wandb_dir}")
    lines += [
        "",
        "next:",
        "  ai-trading bot                     paper trading on live Binance candles with this model (needs network;",
        "                                     paper is the default, live needs bot.confirm_live=true and API keys)",
        "  ai-trading train model=transformer_small training.total_timesteps=1000000   a bigger run",
        f"  ai-trading report --project {cfg.wandb.project} --format md --output-dir reports   compare runs",
    ]
    if result.wandb_dir is not None:
        lines.append(f"  wandb sync {result.wandb_dir}   upload the offline W&B run (needs a key and network)")
    stream.write("\n".join(lines) + "\n")
    stream.flush()
    if verdict != "agree":
        log.warning("backtest_disagrees_with_training", gap_pp=gap, trades=(ours["trade_count"], theirs["trade_count"]))


def build_parser() -> argparse.ArgumentParser:
    """The command line of `ai-trading quickstart`."""
    parser = argparse.ArgumentParser(
        prog="ai-trading quickstart",
        description=(
            "Train a small PPO policy on the bundled BTC/USDT candles (offline), export it to ONNX, backtest it "
            "with the daemon over the held-out period and print the evaluation against buy-and-hold and an SMA "
            "rule. Publishes the model as the daemon's default (models/best_model.onnx, or --export-dir). "
            "Takes a minute or two on 2 cores."
        ),
        epilog="Any KEY=VALUE is a training override, e.g. training.total_timesteps=50000 seed=3 model=mlp.",
    )
    parser.add_argument("--timesteps", type=int, default=None, help="PPO environment steps (default 200000)")
    parser.add_argument("--output-dir", default=None, help="where run directories go (default outputs/)")
    parser.add_argument("--export-dir", default=None, help="where the model is published (default models/)")
    parser.add_argument("--seed", type=int, default=None, help="seed of everything random (default 42)")
    parser.add_argument("--no-wandb", action="store_true", help="do not write an offline W&B run")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="training overrides (Hydra syntax)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the quickstart; exit 0 ok, 1 error, 2 bad arguments or config."""
    args = build_parser().parse_args(list(sys.argv[1:] if argv is None else argv))
    bad = [o for o in args.overrides if "=" not in o]
    if bad:
        print(f"ai-trading quickstart: expected KEY=VALUE overrides, got {bad[0]!r}", file=sys.stderr)
        return EXIT_CONFIG
    overrides = list(args.overrides)
    if args.timesteps is not None:
        if args.timesteps <= 0:
            print("ai-trading quickstart: --timesteps must be positive", file=sys.stderr)
            return EXIT_CONFIG
        overrides.append(f"training.ppo.total_timesteps={args.timesteps}")
    if args.output_dir is not None:
        overrides.append(f"output_dir={args.output_dir}")
    if args.export_dir is not None:
        overrides.append(f"training.export_dir={args.export_dir}")
    if args.seed is not None:
        overrides.append(f"seed={args.seed}")
    if args.no_wandb:
        overrides.append("wandb.enabled=false")
    configure_logging("ERROR")  # data warnings (gaps, zero volume) are in the run directory
    try:
        result = run_quickstart(overrides)
    except ConfigError as e:
        print_error(PROG, e)
        return EXIT_CONFIG
    except (DataError, ValueError, RuntimeError) as e:
        print_error(PROG, e)
        return EXIT_ERROR
    if not result.agrees:
        print(
            "ai-trading quickstart: the daemon's backtest disagrees with training's evaluation of the same model "
            "and window; that is a bug, please report it with both run directories",
            file=sys.stderr,
        )
        return EXIT_ERROR
    return EXIT_OK


if __name__ == "__main__":
    raise SystemExit(main())
