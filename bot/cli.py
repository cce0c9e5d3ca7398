"""The `ai-trading` console script: one subcommand per tool, each also runnable as `python -m <module>`.

The dispatcher knows each tool only by module name and imports it when that subcommand runs, so
`ai-trading bot` never imports torch and `ai-trading --help` starts fast. (bot/ may not import training/
statically; these are run-time lookups by name, the same as `python -m training.train`.)
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable, Sequence
from typing import NamedTuple


class Tool(NamedTuple):
    """A subcommand and the module whose `main(argv) -> int` runs it."""

    module: str
    summary: str
    extra: str | None = None


TOOLS: dict[str, Tool] = {
    "data": Tool("adapters.data.cli", "check candle files, download history, check features for look-ahead"),
    "train": Tool("training.train", "train a PPO policy (Hydra overrides, e.g. wandb.enabled=true)", "train"),
    "sweep": Tool("training.sweep.cli", "run a hyperparameter sweep from sweep_config.yaml", "train"),
    "bot": Tool("bot.__main__", "run the trading daemon (mode=backtest|paper|live)"),
    "ctl": Tool("bot.ctl", "send a command to a running bot over MQTT (status, pause, flatten, ...)"),
    "models": Tool("bot.publish", "publish a training run's model as the daemon's default (models publish RUN)"),
    "report": Tool("training.reports", "write performance / trade reports from runs", "train"),
    "analyze": Tool("training.analysis.cli", "explain a trained model (feature, action, latent, ...)", "train"),
    "dashboard": Tool("monitoring.dashboard.app", "serve the web dashboard", "dashboard"),
    "grafana": Tool("monitoring.grafana", "push Grafana dashboards", "dashboard"),
    "doctor": Tool("monitoring.doctor", "check config, model, ledger, exchange, broker, metrics port, W&B"),
    "quickstart": Tool("training.quickstart", "train, export and backtest on the bundled data", "train"),
}


def _usage() -> str:
    width = max(map(len, TOOLS))
    lines = [
        "usage: ai-trading <command> [options]",
        "",
        "Live-trading bot with embedded experiment tracking. Commands:",
        "",
    ]
    lines += [f"  {name.ljust(width)}  {tool.summary}" for name, tool in TOOLS.items()]
    lines += ["", "Run `ai-trading <command> --help` for a command's options."]
    return "\n".join(lines)


def _load(name: str) -> Callable[[list[str]], int]:
    tool = TOOLS[name]
    try:
        module = importlib.import_module(tool.module)
    except ModuleNotFoundError as e:
        missing = e.name or ""
        if missing == tool.module or tool.module.startswith(missing + "."):
            raise SystemExit(f"ai-trading {name}: not available in this version yet ({tool.module})") from e
        hint = f"; install it with: pip install 'ai-trading[{tool.extra}]'" if tool.extra else ""
        raise SystemExit(f"ai-trading {name}: missing dependency {missing!r}{hint}") from e
    main: Callable[[list[str]], int] = module.main
    return main


def main(argv: Sequence[str] | None = None) -> int:
    """Dispatch to the subcommand's module; return its exit code."""
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help", "help"):
        print(_usage())
        return 0 if args else 2
    name, rest = args[0], args[1:]
    if name not in TOOLS:
        print(f"ai-trading: unknown command {name!r}\n\n{_usage()}", file=sys.stderr)
        return 2
    if name == "data" and rest[:1] == ["lookahead"]:
        # The look-ahead check needs bot.model.features, which the adapters' data command must not import.
        from bot.model.lookahead import main as lookahead

        return lookahead(rest[1:])
    return _load(name)(rest)


if __name__ == "__main__":
    raise SystemExit(main())
