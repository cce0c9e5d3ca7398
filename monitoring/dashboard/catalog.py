"""The dashboard's model and sweep pages' data: a run's model card (checked) and the sweeps under the run tree.

A run directory keeps its exported model in ``models/best_model.onnx`` with its card ``best_model.json``
beside it (`training.train`); a sweep writes ``<runs_dir>/sweeps/<name>/sweep_summary.json``
(`training.sweep.results`). Both are read here as plain files, so the dashboard imports neither torch nor
`training`; the card is parsed and its sha256 checked by `bot.model.card`, as the daemon does before loading it.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from flask import Flask, jsonify, url_for

from bot.model.card import ModelCard, ModelCardError, file_sha256
from monitoring.run_store import json_safe
from monitoring.runs import RunInfo

if TYPE_CHECKING:
    from monitoring.dashboard.sources import Sources

MODEL_FILE = "models/best_model.onnx"
"""A run's exported model, relative to its run directory."""
SWEEPS_DIR = "sweeps"
SWEEP_SUMMARY = "sweep_summary.json"


def model_path(run: RunInfo) -> Path | None:
    """Return the run's exported ONNX model when the run is a local directory that has one, else None."""
    if not run.url or "://" in run.url:
        return None
    path = Path(run.url) / MODEL_FILE
    return path if path.with_suffix(".json").is_file() else None


def model_details(run: RunInfo) -> dict[str, Any]:
    """Return the run's model card as the page shows it, with the sha256 check and what is wrong if it fails."""
    path = model_path(run)
    if path is None:
        return {"run_id": run.run_id, "path": None, "problems": [f"run {run.run_id} has no exported model"]}
    card_file = path.with_suffix(".json")
    problems: list[str] = []
    details: dict[str, Any] = {"run_id": run.run_id, "path": str(path), "card_path": str(card_file)}
    try:
        card = ModelCard.load(card_file)
    except (ModelCardError, OSError) as e:
        return details | {"problems": [f"model card {card_file} is not valid: {e}"]}
    raw = json.loads(card_file.read_text())
    details |= {
        "name": card.name,
        "schema_version": raw.get("schema_version"),
        "created_at": raw.get("created_at"),
        "sha256": card.onnx_sha256,
        "observation": raw.get("observation"),
        "action": raw.get("action"),
        "features": list((raw.get("feature_spec") or {}).get("names") or []),
        "window": (raw.get("feature_spec") or {}).get("window"),
        "training": {k: v for k, v in (raw.get("training") or {}).items() if k != "config"},
        "test_metrics": ((raw.get("metrics") or {}).get("test") or {}),
    }
    if not path.is_file():
        problems.append(f"{path} is missing (the card is there, the model is not)")
    else:
        actual = file_sha256(path)
        details["file_sha256"] = actual
        if actual != card.onnx_sha256:
            problems.append(f"sha256 of {path} is {actual}, the card says {card.onnx_sha256}: re-export the model")
    details["sha_ok"] = not problems
    return details | {"problems": problems}


def _read_summary(path: Path) -> dict[str, Any] | str:
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        return f"{path} is not valid JSON: {e}"
    return data if isinstance(data, dict) else f"{path} is not a JSON object"


def _best_value(summary: Mapping[str, Any]) -> Any:
    best = summary.get("best")
    return best.get("value") if isinstance(best, Mapping) else None


def list_sweeps(runs_dir: Path) -> list[dict[str, Any]]:
    """Return each sweep under ``runs_dir/sweeps`` (name, trials, states, metric, best value), newest first."""
    root = runs_dir / SWEEPS_DIR
    if not root.is_dir():
        return []
    found = []
    for path in root.glob(f"*/{SWEEP_SUMMARY}"):
        summary = _read_summary(path)
        row: dict[str, Any] = {"name": path.parent.name, "mtime": path.stat().st_mtime}
        if isinstance(summary, str):
            row["problem"] = summary
        else:
            metric = summary.get("metric") if isinstance(summary.get("metric"), Mapping) else {}
            row |= {
                "method": summary.get("method"),
                "n_trials": summary.get("n_trials"),
                "states": summary.get("states") or {},
                "metric": (metric or {}).get("name"),
                "goal": (metric or {}).get("goal"),
                "best_value": _best_value(summary),
            }
        found.append(row)
    return sorted(found, key=lambda r: r["mtime"], reverse=True)


class SweepNotFoundError(KeyError):
    """A sweep name that the run tree does not hold; the message lists those it does."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else "sweep not found"


def sweep_details(runs_dir: Path, name: str) -> dict[str, Any]:
    """Return one sweep's summary and its trials (each naming its run); SweepNotFoundError if there is none."""
    path = runs_dir / SWEEPS_DIR / name / SWEEP_SUMMARY
    if "/" in name or name.startswith(".") or not path.is_file():
        known = ", ".join(r["name"] for r in list_sweeps(runs_dir)) or "none"
        raise SweepNotFoundError(f"no sweep {name!r} under {(runs_dir / SWEEPS_DIR).resolve()} (sweeps: {known})")
    summary = _read_summary(path)
    if isinstance(summary, str):
        return {"name": name, "path": str(path), "problem": summary, "trials": [], "params": []}
    trials = [t for t in summary.get("trials") or [] if isinstance(t, Mapping)]
    params = list(dict.fromkeys(k for t in trials for k in (t.get("params") or {})))
    metric = summary.get("metric") if isinstance(summary.get("metric"), Mapping) else {}
    best = summary.get("best") if isinstance(summary.get("best"), Mapping) else None
    return {
        "name": name,
        "path": str(path),
        "method": summary.get("method"),
        "backend": summary.get("backend"),
        "metric": (metric or {}).get("name"),
        "goal": (metric or {}).get("goal"),
        "n_trials": summary.get("n_trials"),
        "states": summary.get("states") or {},
        "best": None if best is None else {k: best.get(k) for k in ("number", "value", "run_id", "retrain_command")},
        "params": params,
        "trials": [
            {
                "number": t.get("number"),
                "state": t.get("state"),
                "value": t.get("value"),
                "run_id": t.get("run_id"),
                "params": dict(t.get("params") or {}),
            }
            for t in trials
        ],
    }


def link(text: Any, href: str | None) -> dict[str, Any]:
    """Return a table cell that links to `href` (plain text when None)."""
    return {"text": text, "href": href}


def register_catalog(
    app: Flask, sources: Sources, page: Callable[..., Any], fmt_metric: Callable[[str, Any], str]
) -> None:
    """Add the model pages (``/runs/<id>/model``) and sweep pages (``/sweeps/<name>``) to the dashboard app."""

    @app.get("/runs/<run_id>/model")
    def model_page(run_id: str) -> Any:
        model = model_details(sources.source.get_run(run_id))
        shown = ("path", "name", "schema_version", "created_at", "sha256", "file_sha256", "sha_ok", "window")
        rows = [[key.replace("_", " "), model[key]] for key in shown if key in model]
        rows += [[f"training {k.replace('_', ' ')}", v] for k, v in (model.get("training") or {}).items()]
        for key in ("observation", "action"):
            if model.get(key):
                rows.append([key, json.dumps(model[key])])
        for split_key, value in (model.get("test_metrics") or {}).items():
            rows.append([f"test {split_key}", json.dumps(json_safe(value))[:200]])
        return page("model.html", f"Model of run {run_id}", model=model, card_rows=rows)

    @app.get("/api/runs/<run_id>/model")
    def api_model(run_id: str) -> Any:
        return jsonify(json_safe(model_details(sources.source.get_run(run_id))))

    @app.get("/sweeps/<name>")
    def sweep_page(name: str) -> Any:
        sweep = sweep_details(sources.runs_dir, name)
        metric = sweep["metric"] or "value"
        trial_columns = ["trial", "state", metric, "run", *sweep["params"]]
        trial_rows = [
            [
                t["number"],
                t["state"],
                fmt_metric(metric, t["value"]),
                link(t["run_id"], url_for("run_page", run_id=t["run_id"]) if t["run_id"] else None),
                *[t["params"].get(p, "") for p in sweep["params"]],
            ]
            for t in sweep["trials"]
        ]
        return page("sweep.html", f"Sweep {name}", sweep=sweep, trial_columns=trial_columns, trial_rows=trial_rows)

    @app.get("/api/sweeps/<name>")
    def api_sweep(name: str) -> Any:
        return jsonify(json_safe(sweep_details(sources.runs_dir, name)))
