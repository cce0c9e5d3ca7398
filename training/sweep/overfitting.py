"""A sweep's overfitting figures: PBO of the study and each trial's DSR, from the trials' run directories.

Every training run stores the per-bar validation returns of the checkpoint it selected
(`validation-returns[-fold<k>].parquet`, see training.train); a walk-forward run's folds are concatenated
in time. Trials are taken in trial-number order, so trial k's DSR counts the k + 1 trials numbered up to
it that have returns (failed trials never produced any and are not counted).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd
import structlog

from training.overfitting import OverfittingConfig, SweepOverfitting, assess

log = structlog.get_logger()

RETURNS_GLOB = "validation-returns*.parquet"


def trial_returns(run_dir: str | Path | None) -> pd.Series | None:
    """The per-bar validation returns a run recorded, or None when it has none."""
    if not run_dir:
        return None
    files = sorted(Path(run_dir).glob(RETURNS_GLOB))
    if not files:
        return None
    parts = []
    for path in files:
        frame = pd.read_parquet(path)
        parts.append(frame.set_index("time")["return"] if "time" in frame else frame["return"])
    series = pd.concat(parts).sort_index()
    return series[~series.index.duplicated(keep="last")]


def sweep_overfitting(
    rows: Sequence[Mapping[str, Any]], config: OverfittingConfig | None = None
) -> SweepOverfitting | None:
    """PBO and DSRs of the trials in `rows` (sweep result rows with `number` and `run_dir`)."""
    series: list[tuple[str, pd.Series]] = []
    for row in sorted(rows, key=lambda r: int(r["number"])):
        if row.get("state") == "failed":
            continue
        try:
            returns = trial_returns(row.get("run_dir"))
        except (OSError, ValueError, KeyError) as e:
            log.warning("sweep_trial_returns_unreadable", trial=row["number"], error=str(e))
            continue
        if returns is not None and len(returns):
            series.append((str(row["number"]), returns))
    if not series:
        return None
    return assess(series, config)


def config_from_overrides(overrides: Sequence[str]) -> OverfittingConfig:
    """The sweep's `training.overfitting` settings (defaults when the overrides cannot be composed)."""
    from bot.errors import ConfigError
    from training.train import load_train_config

    try:
        return load_train_config(list(overrides)).training.overfitting  # type: ignore[no-any-return]
    except (ConfigError, ValueError):
        return OverfittingConfig()


def annotate(
    rows: Sequence[Mapping[str, Any]], result: SweepOverfitting | None
) -> tuple[list[dict[str, Any]], dict[str, Any] | None]:
    """Rows with `dsr`, `dsr_n_trials` and `dsr_flagged` added, and the summary's `overfitting` block."""
    out = []
    for row in rows:
        trial = result.trials.get(str(row["number"])) if result is not None else None
        extra: dict[str, Any] = {"dsr": None, "dsr_n_trials": None, "dsr_flagged": None}
        if trial is not None:
            extra = {"dsr": trial.dsr, "dsr_n_trials": trial.n_trials, "dsr_flagged": not trial.passed}
        out.append({**row, **extra})
    return out, (result.to_dict() if result is not None else None)


def card_block(summary: Mapping[str, Any], row: Mapping[str, Any]) -> dict[str, Any] | None:
    """What a trial's model card says of the sweep it came from, or None when the sweep computed no figures.

    The trial's DSR is given against every trial of the study (what a chosen model must pass), and beside it
    the DSR given the trials up to it, the study's PBO and whether this trial is the sweep's best.
    """
    block = summary.get("overfitting")
    if not block:
        return None
    number = str(row["number"])
    against_all = block["against_all_trials"].get(number) or {}
    so_far = block["trials"].get(number) or {}
    best = summary.get("best")
    return {
        "name": summary.get("name"),
        "metric": summary.get("metric"),
        "trial": int(row["number"]),
        "best": best is not None and str(best["number"]) == number,
        "n_trials": block["pbo"].get("n_trials"),
        "pbo": block["pbo"].get("pbo"),
        "pbo_reason": block["pbo"].get("reason"),
        "dsr": against_all.get("dsr"),
        "dsr_so_far": so_far.get("dsr"),
        "dsr_threshold": block["dsr_threshold"],
        "survives_dsr": bool(against_all.get("passed")),
    }


def stamp_cards(summary: Mapping[str, Any], sweep_dir: Path) -> int:
    """Write each completed trial's `card_block` into its models' cards (`metrics.sweep`); return how many.

    Both copies are amended: the run's own export (`<run_dir>/**/models/`) and the one published into the
    sweep's `exports/<run_id>/`.

    A card that cannot be amended (moved, or its file changed since export) is reported and skipped: the
    sweep's own results are already written.
    """
    from bot.model.card import ModelCardError
    from training.export import amend_card

    stamped = 0
    if not summary.get("overfitting"):
        return stamped  # no figures to stamp (no trial recorded validation returns)
    for row in summary.get("trials", []):
        run_dir = row.get("run_dir")
        if row.get("state") != "complete" or not run_dir:
            continue
        block = card_block(summary, row)
        assert block is not None  # None only without an overfitting block, checked above
        paths = sorted(Path(run_dir).glob("**/models/best_model.onnx"))
        published = sweep_dir / "exports" / str(row.get("run_id")) / "best_model.onnx"
        for onnx_path in [*paths, *([published] if published.exists() else [])]:
            try:
                amend_card(onnx_path, {"sweep": block})
            except (ModelCardError, OSError) as e:
                log.warning("sweep_card_not_amended", trial=row["number"], path=str(onnx_path), error=str(e))
                continue
            stamped += 1
    return stamped


def describe(summary: Mapping[str, Any]) -> list[str]:
    """Leaderboard lines: the study's PBO, and whether the best trial survives deflation."""
    block = summary.get("overfitting")
    if not block:
        return ["overfitting: no trial recorded validation returns; PBO and DSR not computed"]
    study = block["pbo"]
    threshold = block["dsr_threshold"]
    if study["pbo"] is None:
        pbo_line = f"PBO: not computed ({study['reason']})"
    else:
        verdict = "the choice of the best trial is mostly noise" if study["pbo"] >= 0.5 else "below 1/2"
        pbo_line = (
            f"PBO (probability of backtest overfitting, CSCV over {study['n_trials']} trials x "
            f"{study['n_periods']} validation bars, S={study['groups']}, {study['combinations']} combinations): "
            f"{study['pbo']:.3f} ({verdict})"
        )
    lines = [pbo_line]
    flagged = [str(r["number"]) for r in summary.get("trials", []) if r.get("dsr_flagged")]
    if flagged:
        lines.append(
            f"DSR below {threshold} (LOW, no evidence of an edge once the trials so far are accounted for): "
            f"trial(s) {', '.join(flagged)}"
        )
    best = summary.get("best")
    if best is not None:
        # The best trial was chosen out of all of them: it is deflated by the whole study, not the trials before it.
        trial = block["against_all_trials"].get(str(best["number"]))
        if trial is None or trial["dsr"] is None:
            lines.append(
                f"best trial {best['number']}: no deflated Sharpe ratio (no validation returns, or they never "
                f"varied); it does NOT survive the DSR >= {threshold} check"
            )
        else:
            survives = "survives" if trial["passed"] else "does NOT survive"
            lines.append(
                f"best trial {best['number']}: deflated Sharpe ratio {trial['dsr']:.3f} given {trial['n_trials']} "
                f"trial(s): it {survives} the DSR >= {threshold} check"
            )
    return lines
