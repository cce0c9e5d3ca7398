"""Sweep results: the best trial, `sweep_summary.json`, `trials.parquet` and the results table."""

from __future__ import annotations

import json
import math
import os
import shlex
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from monitoring.run_store import write_json
from training.sweep.overrides import to_overrides
from training.sweep.spec import Metric

SUMMARY_FILE = "sweep_summary.json"
TRIALS_FILE = "trials.parquet"


def best_row(rows: Sequence[Mapping[str, Any]], metric: Metric) -> Mapping[str, Any] | None:
    """The completed trial with the best validation value, or None."""
    done = [r for r in rows if r.get("state") == "complete" and isinstance(r.get("value"), int | float)]
    if not done:
        return None
    pick = max if metric.goal == "maximize" else min
    return pick(done, key=lambda r: float(r["value"]))


def write_results(
    sweep_dir: Path,
    header: Mapping[str, Any],
    rows: Sequence[Mapping[str, Any]],
    metric: Metric,
    base_overrides: Sequence[str],
) -> dict[str, Any]:
    """Write sweep_summary.json and trials.parquet; return the summary."""
    from training.sweep.overfitting import annotate, config_from_overrides, sweep_overfitting

    rows, overfitting = annotate(rows, sweep_overfitting(rows, config_from_overrides(base_overrides)))
    best = best_row(rows, metric)
    best_block = None
    if best is not None:
        overrides = [*base_overrides, *to_overrides(best["params"])]
        best_block = {
            **best,
            "overrides": overrides,
            "retrain_command": shlex.join(["ai-trading", "train", *overrides]),
            "model": str(Path(best["run_dir"]) / "models" / "best_model.onnx") if best.get("run_dir") else None,
        }
    states: dict[str, int] = {}
    for r in rows:
        states[str(r.get("state"))] = states.get(str(r.get("state")), 0) + 1
    summary = {
        **header,
        "n_trials": len(rows),
        "states": states,
        "best": best_block,
        "overfitting": overfitting,
        "trials": list(rows),
    }
    sweep_dir.mkdir(parents=True, exist_ok=True)
    write_json(sweep_dir / SUMMARY_FILE, summary)
    frame = trials_frame(rows, metric)
    tmp = sweep_dir / f".{TRIALS_FILE}.tmp"
    frame.to_parquet(tmp, index=False)
    os.replace(tmp, sweep_dir / TRIALS_FILE)
    return summary


def trials_frame(rows: Sequence[Mapping[str, Any]], metric: Metric) -> pd.DataFrame:
    """One row per trial: number, state, the validation metric, test return (info), params, run id."""
    records = []
    for r in rows:
        record = {
            "number": r["number"],
            "state": r["state"],
            metric.name: r.get("value"),
            "test_total_return_info_only": r.get("test_total_return"),
            "dsr": r.get("dsr"),
            "dsr_flagged": r.get("dsr_flagged"),
        }
        for key, value in (r.get("params") or {}).items():
            record[f"param/{key}"] = json.dumps(value) if isinstance(value, list | dict) else value
        record.update({"run_id": r.get("run_id"), "seconds": r.get("seconds"), "error": r.get("error")})
        records.append(record)
    frame = pd.DataFrame(records)
    for column in frame.columns:
        kinds = {type(v) for v in frame[column] if v is not None and not (isinstance(v, float) and math.isnan(v))}
        if len(kinds - {int, float}) and len(kinds) > 1:  # mixed types (e.g. str and number) → text
            frame[column] = frame[column].map(lambda v: None if v is None else str(v))
    return frame


def format_results(rows: Sequence[Mapping[str, Any]], metric: Metric, summary: Mapping[str, Any]) -> str:
    """The results table, the best parameters and the command that retrains with them."""
    names = list(dict.fromkeys(k for r in rows for k in (r.get("params") or {})))
    header = ["trial", "state", *names, metric.name, "DSR (so far)", "test return (info only)", "run"]
    table = [header]
    annotated = {int(t["number"]): t for t in summary.get("trials", []) if "dsr_n_trials" in t}
    for r in sorted(rows, key=lambda r: int(r["number"])):
        params = r.get("params") or {}
        test_return = r.get("test_total_return")
        table.append(
            [
                str(r["number"]),
                str(r["state"]),
                *[_cell(params.get(n, "")) for n in names],
                _cell(r.get("value")),
                _dsr_cell(annotated.get(int(r["number"]), r)),
                "" if test_return is None else f"{100 * float(test_return):.2f}%",
                str(r.get("run_id") or ""),
            ]
        )
    widths = [max(len(row[i]) for row in table) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip() for row in table]
    lines.insert(1, "  ".join("-" * w for w in widths))
    best = summary.get("best")
    lines.append("")
    if best is None:
        lines.append("no trial completed")
    else:
        lines.append(
            f"best: trial {best['number']}, {metric.name} = {_cell(best['value'])} ({metric.goal}; validation split "
            "only, the test split was never used to choose)"
        )
        from training.sweep.overfitting import describe

        lines.extend(describe(summary))
        lines.append("best parameters: " + shlex.join(to_overrides(best["params"])))
        lines.append(f"retrain with them: {best['retrain_command']}")
        if best.get("model"):
            lines.append(f"best trial's model: {best['model']}")
    return "\n".join(lines)


def _dsr_cell(row: Mapping[str, Any]) -> str:
    """The trial's DSR given the trials so far, `LOW` flagged when under the threshold."""
    if row.get("dsr_n_trials") is None:
        return ""
    value = row.get("dsr")
    text = "n/a" if value is None else f"{float(value):.3f}"
    return f"{text} LOW" if row.get("dsr_flagged") else text


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return "" if value is None else str(value)
