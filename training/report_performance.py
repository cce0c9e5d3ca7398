"""The performance report: the last finished runs side by side against the baselines, and their training progress."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from monitoring.charts import new_figure
from monitoring.reports.analytics import STRATEGIES, STRATEGY_LABELS, compare_with_baselines, metric_series
from monitoring.reports.model import (
    METRIC_COLUMNS,
    Chart,
    Report,
    ReportError,
    Section,
    Table,
    finished_runs,
    fmt_metric,
    save_chart,
)
from monitoring.runs import RunInfo, RunSource, finite

PROGRESS_KEYS = (
    "charts/episodic_return",
    "losses/policy_loss",
    "losses/value_loss",
    "losses/entropy",
    "grad_norm/total",
    "validation/sharpe",
    "validation/exposure",
)


def build_performance(source: RunSource, limit: int, out_dir: Path) -> Report:
    """Compare the newest `limit` finished runs: test metrics vs baselines and training progress."""
    if limit < 1:
        raise ReportError(f"--limit must be >= 1, was {limit}")
    candidates = source.list_runs(limit=max(4 * limit, 20))
    if not candidates:
        raise ReportError(f"no runs found in {source.location} ({source.kind}); train one with `ai-trading train`")
    finished, skipped = finished_runs(candidates)
    finished = finished[:limit]
    if not finished:
        raise ReportError(
            f"no finished runs with test results in {source.location}; found only runs without a summary: "
            f"{', '.join(skipped[:10])}"
        )
    label = {run.run_id: run.run_id if fold is None else f"{run.run_id} ({fold})" for run, fold, _ in finished}

    metric_rows: list[list[str]] = []
    baseline_rows: list[list[str]] = []
    runs_data: list[dict[str, Any]] = []
    for run, fold, test in finished:
        policy = test.get("policy", {})
        model = run.config.get("model", {}) if isinstance(run.config.get("model"), Mapping) else {}
        training = run.config.get("training")
        ppo = training.get("ppo") if isinstance(training, Mapping) else None
        steps = ppo.get("total_timesteps") if isinstance(ppo, Mapping) else None
        created = run.created.strftime("%Y-%m-%d %H:%M") if run.created else "?"
        metric_rows.append(
            [label[run.run_id], created, str(model.get("name", "?")), str(steps or "?")]
            + [fmt_metric(k, policy.get(k)) for k, _ in METRIC_COLUMNS]
        )
        returns, excess, beats_baselines = compare_with_baselines(test)
        sharpes = {s: finite(test.get(s, {}).get("sharpe")) for s in STRATEGIES}
        baseline_rows.append(
            [label[run.run_id]]
            + [fmt_metric("total_return", returns[s]) for s in STRATEGIES]
            + [fmt_metric("total_return", excess)]
            + [fmt_metric("sharpe", sharpes[s]) for s in STRATEGIES]
            + ["yes" if beats_baselines else "no"]
        )
        runs_data.append(
            {
                "run_id": run.run_id,
                "fold": fold,
                "created": run.created,
                "url": run.url,
                "model": model,
                "total_timesteps": steps,
                "test": test,
                "excess_return_vs_buy_and_hold": excess,
                "beats_baselines": beats_baselines,
            }
        )

    histories = {run.run_id: source.history(run.run_id) for run, _, _ in finished}
    charts = _performance_charts(finished, histories, label, out_dir)
    progress_data = {
        run_id: {key: _last(metric_series(frame, key)) for key in PROGRESS_KEYS} for run_id, frame in histories.items()
    }
    for entry in runs_data:
        entry["final_training_values"] = progress_data[entry["run_id"]]

    results = Section(
        "Out-of-sample test results",
        [
            "Each run's selected checkpoint traded its held-out test split once, after fees and slippage "
            "(the paper venue's cost model); newest run first."
        ],
        [
            Table(
                "Policy metrics (test split)",
                ["run", "created (UTC)", "model", "timesteps"] + [title for _, title in METRIC_COLUMNS],
                metric_rows,
            ),
            Table(
                "Against the baselines (same bars, same costs)",
                [
                    "run",
                    "policy return",
                    "buy & hold return",
                    "SMA return",
                    "excess vs buy & hold",
                    "policy sharpe",
                    "buy & hold sharpe",
                    "SMA sharpe",
                    "beats both",
                ],
                baseline_rows,
            ),
        ],
        [c for c in charts if c.path.stem == "returns_comparison"],
    )
    progress = Section(
        "Training progress",
        [
            "Reward curves, loss components and gradient norms as logged during PPO updates; the validation "
            "panel shows the checkpoint-selection metric and the share of validation bars the deterministic "
            "policy held a position (how its action mix evolved)."
        ],
        [],
        [c for c in charts if c.path.stem != "returns_comparison"],
    )
    overfitting_section, overfitting_data = _overfitting(source, [run for run, _, _ in finished], label)
    for entry in runs_data:
        entry["overfitting"] = overfitting_data["runs"].get(entry["run_id"])
    paragraphs = []
    if skipped:
        paragraphs.append(f"Skipped {len(skipped)} run(s) without test results: {', '.join(skipped[:10])}.")
    sections = [results, overfitting_section, progress]
    if paragraphs:
        sections.append(Section("Notes", paragraphs))
    return Report(
        f"Performance comparison of the last {len(finished)} run(s)",
        "performance",
        {},
        sections,
        {"runs": runs_data, "skipped_runs": skipped, "overfitting": overfitting_data["compared"]},
    )


def _overfitting(
    source: RunSource, runs: Sequence[RunInfo], label: Mapping[str, str]
) -> tuple[Section, dict[str, Any]]:
    """PBO and DSR of the compared runs taken as the trials of one study, and of the sweep each came from."""
    from training.overfitting import OverfittingConfig, assess
    from training.sweep.overfitting import trial_returns

    unique = list(dict.fromkeys(run.run_id for run in runs))
    by_id = {run.run_id: run for run in runs}
    series = []
    for run_id in reversed(unique):  # oldest first: a run's DSR counts the compared runs made before it
        url = by_id[run_id].url
        returns = trial_returns(url) if source.kind == "local" and url else None
        if returns is not None and len(returns):
            series.append((run_id, returns))
    compared = assess(series, OverfittingConfig()) if series else None
    sweeps = _sweep_memberships(source)
    rows: list[list[str]] = []
    per_run: dict[str, dict[str, Any]] = {}
    for run_id in unique:
        trial = compared.trials.get(run_id) if compared is not None else None
        sweep = sweeps.get(run_id)
        per_run[run_id] = {"compared": trial.to_dict() if trial else None, "sweep": sweep}
        rows.append(
            [
                label.get(run_id, run_id),
                "-" if trial is None else str(trial.n_trials),
                "-" if trial is None else _dsr_text(trial.dsr, trial.passed),
                "-" if sweep is None else str(sweep["sweep"]),
                "-" if sweep is None or sweep["pbo"] is None else f"{sweep['pbo']:.3f}",
                "-" if sweep is None else _dsr_text(sweep["dsr"], not sweep["flagged"], sweep["n_trials"]),
            ]
        )
    paragraphs = [
        "Overfitting is judged on each run's validation split (the per-bar returns of the checkpoint it "
        "selected), never on the test split. DSR (deflated Sharpe ratio, Bailey & López de Prado 2014) is the "
        "probability that the run's Sharpe beats the best of N skill-less trials; below 0.95 it is flagged LOW. "
        "PBO (probability of backtest overfitting, CSCV) is the chance that picking the best in-sample run "
        "lands below the median out of sample."
    ]
    if compared is None:
        paragraphs.append(
            "No compared run recorded validation returns (runs from W&B or older runs do not have "
            "validation-returns.parquet), so no PBO or DSR could be computed for them."
        )
    else:
        study = compared.study
        pbo = "not computed (" + str(study.reason) + ")" if study.pbo is None else f"{study.pbo:.3f}"
        paragraphs.append(
            f"Taking the {study.n_trials} compared run(s) with validation returns as one study "
            f"({study.n_periods} common validation bars): PBO {pbo}."
        )
    table = Table(
        "Deflated Sharpe ratio and PBO",
        ["run", "N (compared so far)", "DSR among compared", "sweep", "sweep PBO", "DSR in its sweep"],
        rows,
    )
    data = {"compared": compared.to_dict() if compared is not None else None, "runs": per_run}
    return Section("Overfitting (validation split)", paragraphs, [table]), data


def _dsr_text(value: float | None, passed: bool, n_trials: int | None = None) -> str:
    text = "n/a" if value is None else f"{value:.3f}"
    text = text if passed else f"{text} LOW"
    return f"{text} (N={n_trials})" if n_trials is not None else text


def _sweep_memberships(source: RunSource) -> dict[str, dict[str, Any]]:
    """Run id -> its sweep's name, PBO and the trial's DSR, from the sweep summaries beside local runs."""
    import json

    root = getattr(source, "root", None)
    if source.kind != "local" or root is None:
        return {}
    found: dict[str, dict[str, Any]] = {}
    for path in sorted(Path(root).glob("sweeps/*/sweep_summary.json")):
        try:
            summary = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        block = summary.get("overfitting") or {}
        pbo = (block.get("pbo") or {}).get("pbo")
        for trial in summary.get("trials", []):
            if trial.get("run_id") and trial.get("dsr_n_trials") is not None:
                found[str(trial["run_id"])] = {
                    "sweep": summary.get("name") or path.parent.name,
                    "pbo": pbo,
                    "dsr": trial.get("dsr"),
                    "flagged": bool(trial.get("dsr_flagged")),
                    "n_trials": trial.get("dsr_n_trials"),
                }
    return found


def _last(series: pd.Series) -> float | None:
    return finite(series.iloc[-1]) if len(series) else None


def _performance_charts(
    finished: Sequence[tuple[RunInfo, str | None, dict[str, Any]]],
    histories: Mapping[str, pd.DataFrame],
    label: Mapping[str, str],
    out_dir: Path,
) -> list[Chart]:
    charts: list[Chart] = []
    names = [label[run.run_id] for run, _, _ in finished]
    figure, axes = new_figure(size=(max(6.0, 1.6 * len(names) + 3), 4.0))
    ax = axes[0, 0]
    width = 0.26
    x = np.arange(len(finished))
    for i, strategy in enumerate(STRATEGIES):
        values = [100 * (finite(test.get(strategy, {}).get("total_return")) or 0.0) for _, _, test in finished]
        ax.bar(x + (i - 1) * width, values, width, label=STRATEGY_LABELS[strategy])
    ax.axhline(0, color="black", linewidth=0.8)
    ax.set_xticks(x, [n[-22:] for n in names], rotation=20, ha="right", fontsize=8)
    ax.set_ylabel("total return (%)")
    ax.set_title("Test-split total return after costs")
    ax.legend(fontsize=8)
    charts.append(save_chart(figure, out_dir / "returns_comparison.png", "Test-split returns vs baselines"))

    def lines(keys: Sequence[tuple[str, str]], file: str, title: str, caption: str, log_y: bool = False) -> None:
        figure, axes = new_figure(1, len(keys), size=(4.2 * len(keys), 3.6))
        plotted = False
        for j, (key, key_title) in enumerate(keys):
            ax = axes[0, j]
            for run, _, _ in finished:
                series = metric_series(histories[run.run_id], key)
                if series.empty:
                    continue
                plotted = True
                if key == "charts/episodic_return" and len(series) > 5:
                    ax.plot(series.index, series.to_numpy(), alpha=0.25, linewidth=0.8)
                    smooth = series.rolling(max(2, len(series) // 10), min_periods=1).mean()
                    ax.plot(smooth.index, smooth.to_numpy(), label=label[run.run_id][-22:])
                else:
                    ax.plot(
                        series.index,
                        series.to_numpy(),
                        marker="." if len(series) < 30 else None,
                        label=label[run.run_id][-22:],
                    )
            ax.set_title(key_title, fontsize=10)
            ax.set_xlabel("environment step")
            if log_y and ax.has_data():
                ax.set_yscale("log")
        if plotted:
            axes[0, 0].legend(fontsize=7)
            figure.suptitle(title)
            charts.append(save_chart(figure, out_dir / file, title, caption))

    lines(
        [("charts/episodic_return", "episodic return")],
        "reward_curves.png",
        "Reward curves",
        "Episode returns (sum of log-equity rewards) during training; faint: raw, solid: rolling mean.",
    )
    lines(
        [("losses/policy_loss", "policy loss"), ("losses/value_loss", "value loss"), ("losses/entropy", "entropy")],
        "loss_components.png",
        "Loss components",
        "Policy (clipped surrogate) vs value-function loss, and the policy entropy.",
    )
    lines(
        [("grad_norm/total", "total gradient norm (before clipping)")],
        "gradient_norms.png",
        "Gradient norms",
        "Spikes point at optimisation instabilities.",
        log_y=True,
    )
    lines(
        [
            ("validation/sharpe", "validation sharpe"),
            ("validation/exposure", "validation exposure (share in position)"),
        ],
        "validation_progress.png",
        "Validation and action distribution",
        "Checkpoint-selection metric and how often the policy chose to hold a position, per validation pass.",
    )
    return charts
