"""`ai-trading analyze` / `python -m training.analysis`: explain what a trained policy does.

The user guide's Model Analyzer, same options::

    ai-trading analyze --model-path models/best_model.pt --config-path models/config.json --log-to-wandb
    ai-trading analyze --model-path models/best_model.pt --config-path models/config.json --analysis-type feature

The policy is run over real candles exactly as in evaluation: candles → `bot.model.features` → observations
normalised with the model's own fitted statistics → a sequential `TradingEnv` (so the position-state part of
each observation is the one the policy's own decisions produced). By default the candles are the held-out
test split of the training run's data (from the config), else the bundled BTC/USDT 1h sample; ``--data-path``
picks another file. What is analysed (``--analysis-type``):

- ``feature``: SHAP values (``shap.GradientExplainer``, expected gradients, on a small background sample) of
  the policy's expected target position, summed per feature name over the window; permutation importance
  (shuffle one feature's whole window block across samples) as a cross-check, with their rank correlation.
- ``action``: the action mix and mean target position by market regime: trailing 24-bar return quintile,
  volatility quintile, hour of day (UTC); and how the position lines up with the next bar's return.
- ``latent``: the actor's penultimate activations (the body before the action head), PCA to 2-D by numpy SVD,
  coloured by action and by the next bar's return.
- ``sensitivity``: shift the most recent return, the last six returns, or the volatility feature by -3σ..+3σ
  (σ: the training split's std of that feature) and measure the expected target position, the action
  probabilities and how many decisions change.

The expected target position is ``Σ_a softmax(logits)_a · target_a`` for a discrete policy and the clipped
mean for a continuous one: one number in [-1, 1] that every analysis explains. Outputs: PNG charts and
``analysis.json`` in ``--output-dir``; ``--log-to-wandb`` also logs them (``wandb.Image`` / ``wandb.Table``) to a
run with ``job_type="analysis"`` (offline mode works). An ``.onnx`` model is analysed through onnxruntime;
SHAP gradients and the latent space need the torch weights, taken from the ``.pt`` beside it when its card
matches the ONNX file's sha256, else those two parts are skipped with the reason.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import structlog

from monitoring.progress import Progress
from monitoring.run_store import json_safe, write_json
from training.analysis.analyses import (
    analyse_actions,
    analyse_features,
    analyse_latent,
    analyse_sensitivity,
)
from training.analysis.data import (
    collect_observations,
    load_analysis_data,
    load_training_config,
)
from training.analysis.policy import AnalysedPolicy, AnalysisError, load_policy
from training.cli import EXIT_OK, run_tool

log = structlog.get_logger()

ANALYSIS_TYPES: tuple[str, ...] = ("feature", "action", "latent", "sensitivity")
"""Every analysis `--analysis-type all` runs, in order."""


# --- W&B and the entry point ----------------------------------------------------------------------------------


def log_analysis_to_wandb(
    results: Mapping[str, Any], out_dir: Path, *, project: str, entity: str | None, name: str
) -> dict[str, Any]:
    """Log charts (wandb.Image), tables (wandb.Table) and headline figures to a job_type="analysis" run."""
    import wandb

    from bot.config import WandbConfig
    from training.wandb_callback import init_run

    config = WandbConfig(enabled=True, project=project, entity=entity).resolved()
    run_config = {
        "model": results.get("model", {}),
        "data": results.get("data", {}),
        "analysis_types": list(results.get("analyses", {})),
    }
    run = init_run(config, json_safe(run_config), job_type="analysis", name=name, directory=out_dir)
    try:
        payload: dict[str, Any] = {}
        for kind, analysis in results.get("analyses", {}).items():
            chart = analysis.get("chart")
            if chart:
                payload[f"analysis/{kind}"] = wandb.Image(str(out_dir / chart), caption=kind)
        features = results.get("analyses", {}).get("feature", {}).get("features")
        if features:
            columns = list(features[0])
            payload["analysis/feature_importance_table"] = wandb.Table(
                columns=columns, data=[[json_safe(f[c]) for c in columns] for f in features]
            )
        hours = results.get("analyses", {}).get("action", {}).get("by_hour_utc")
        if hours:
            columns = list(hours[0])
            payload["analysis/position_by_hour_table"] = wandb.Table(
                columns=columns, data=[[json_safe(h[c]) for c in columns] for h in hours]
            )
        perturbations = results.get("analyses", {}).get("sensitivity", {}).get("perturbations", {})
        rows: list[Iterable[Any]] = [
            [name, float(shock), float(position), float(change)]
            for name, entry in perturbations.items()
            for shock, position, change in zip(
                results["analyses"]["sensitivity"]["shocks_sigma"],
                entry["mean_expected_position"],
                entry["decision_change_rate"],
                strict=True,
            )
        ]
        if rows:
            payload["analysis/sensitivity_table"] = wandb.Table(
                columns=["perturbation", "shock_sigma", "mean_expected_position", "decision_change_rate"], data=rows
            )
        run.log(payload)
        for kind, analysis in results.get("analyses", {}).items():
            if kind == "feature" and analysis.get("ranking"):
                run.summary["analysis/top_feature"] = analysis["ranking"][0]
            if kind == "sensitivity":
                for name, entry in analysis.get("perturbations", {}).items():
                    run.summary[f"analysis/sensitivity/{name}/slope_per_sigma"] = entry["slope_per_sigma"]
        info = {"run_id": run.id, "mode": config.mode, "dir": str(Path(run.dir).parent)}
    finally:
        run.finish()
    return info


def run_analysis(
    model_path: str | Path,
    config_path: str | Path | None = None,
    analysis_types: Sequence[str] = ANALYSIS_TYPES,
    output_dir: str | Path = "analysis",
    *,
    data_path: str | Path | None = None,
    split: str = "test",
    max_bars: int = 3000,
    samples: int = 200,
    seed: int = 0,
    log_to_wandb: bool = False,
    project: str = "ai-trading",
    entity: str | None = None,
    policy: AnalysedPolicy | None = None,
) -> Path:
    """Run the chosen analyses, write charts and `analysis.json` to `output_dir`; return the JSON's path."""
    unknown = [t for t in analysis_types if t not in ANALYSIS_TYPES]
    if unknown:
        raise AnalysisError(f"unknown analysis types {unknown}; choose from {list(ANALYSIS_TYPES)} or all")
    out_dir = Path(output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    policy = policy or load_policy(model_path)
    config = load_training_config(config_path, policy)
    started = time.perf_counter()
    chosen = [kind for kind in ANALYSIS_TYPES if kind in analysis_types]
    # One stage per analysis after the observations; `analysis_done` already logs each stage off a terminal.
    progress = Progress(1 + len(chosen), desc="analyze", unit="stage", log_every_fraction=1.0)
    data = load_analysis_data(policy, config, data_path=data_path, split=split, max_bars=max_bars)
    observations = collect_observations(policy, data.frame, data.env_config, data.costs)
    progress.update()
    card = policy.card
    results: dict[str, Any] = {
        "model": {
            "path": str(model_path),
            "sha256": card.onnx_sha256 if card is not None else None,
            "training_run_id": card.run_id if card is not None else None,
            "action_space": "discrete" if policy.is_discrete else "continuous",
            "targets": list(policy.targets),
            "features": list(policy.spec.names),
            "window": policy.spec.window,
            "torch_weights": policy.torch_model is not None,
        },
        "data": {**data.description, "observations": len(observations.obs)},
        "analyses": {},
        "seconds": {"observations": time.perf_counter() - started},
    }
    runners: dict[str, Callable[[], dict[str, Any]]] = {
        "feature": lambda: analyse_features(policy, observations, out_dir, samples=samples, seed=seed),
        "action": lambda: analyse_actions(policy, observations, out_dir),
        "latent": lambda: analyse_latent(policy, observations, out_dir, seed=seed),
        "sensitivity": lambda: analyse_sensitivity(policy, observations, out_dir, samples=max(samples, 200), seed=seed),
    }
    with progress:
        for kind in chosen:
            begun = time.perf_counter()
            results["analyses"][kind] = runners[kind]()
            results["seconds"][kind] = time.perf_counter() - begun
            log.info("analysis_done", analysis=kind, seconds=round(results["seconds"][kind], 3))
            progress.update()
    if log_to_wandb:
        name = f"analysis-{card.run_id if card is not None and card.run_id else Path(model_path).stem}"
        results["wandb"] = log_analysis_to_wandb(results, out_dir, project=project, entity=entity, name=name)
    path = out_dir / "analysis.json"
    write_json(path, results)
    return path


def build_parser() -> argparse.ArgumentParser:
    """Return the CLI parser (the user guide's options plus data, sample-size and W&B extras)."""
    parser = argparse.ArgumentParser(
        prog="ai-trading analyze",
        description="Explain a trained policy: feature importance, action patterns, latent space, market sensitivity.",
        epilog="Examples:\n  ai-trading analyze --model-path models/best_model.pt --config-path models/config.json "
        "--log-to-wandb\n  ai-trading analyze --model-path models/best_model.pt --config-path models/config.json "
        "--analysis-type feature",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--model-path", default="models/best_model.pt", help="best_model.pt or best_model.onnx")
    parser.add_argument(
        "--config-path",
        default=None,
        help="training config JSON (models/config.json); default: config.json beside the model, else the model card's",
    )
    parser.add_argument("--analysis-type", choices=(*ANALYSIS_TYPES, "all"), default="all")
    parser.add_argument("--log-to-wandb", action="store_true", help="log charts and tables to a W&B analysis run")
    parser.add_argument("--data-path", default=None, help="candle file to analyse on (default: the run's data)")
    parser.add_argument(
        "--split",
        choices=("train", "validation", "test"),
        default="test",
        help="split of the run's data (ignored with --data-path)",
    )
    parser.add_argument("--max-bars", type=int, default=3000, help="analyse at most the last N bars")
    parser.add_argument("--samples", type=int, default=200, help="observations explained by SHAP / permutation")
    parser.add_argument("--output-dir", default="analysis")
    parser.add_argument("--project", default="ai-trading", help="W&B project (with --log-to-wandb)")
    parser.add_argument("--entity", default=None, help="W&B entity (with --log-to-wandb)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--log-level", default="WARNING")
    return parser


def _headline(kind: str, analysis: Mapping[str, Any]) -> str:
    if analysis.get("skipped"):
        return f"skipped: {analysis['skipped']}"
    if kind == "feature":
        return f"top features: {', '.join(analysis.get('ranking', [])[:3])}"
    if kind == "action":
        return f"mean target position {analysis.get('mean_position', float('nan')):.2f}"
    if kind == "latent":
        return f"PC1+PC2 explain {sum(analysis['explained_variance_ratio'][:2]):.0%} of the variance"
    return ", ".join(f"{n} {e['slope_per_sigma']:+.3f}/σ" for n, e in analysis.get("perturbations", {}).items())


def main(argv: Sequence[str] | None = None) -> int:
    """Run the analysis CLI; print the summary JSON's path; exit 0 ok, 1 error, 2 bad usage."""
    return run_tool(build_parser(), argv, _analyse, (AnalysisError,))


def _analyse(args: argparse.Namespace) -> int:
    config_path = args.config_path
    if config_path is None and (Path(args.model_path).parent / "config.json").is_file():
        config_path = str(Path(args.model_path).parent / "config.json")
    types = ANALYSIS_TYPES if args.analysis_type == "all" else (args.analysis_type,)
    import torch

    torch.set_num_threads(1)
    path = run_analysis(
        args.model_path,
        config_path,
        types,
        args.output_dir,
        data_path=args.data_path,
        split=args.split,
        max_bars=args.max_bars,
        samples=args.samples,
        seed=args.seed,
        log_to_wandb=args.log_to_wandb,
        project=args.project,
        entity=args.entity,
    )
    summary = json.loads(path.read_text())
    for kind, analysis in summary["analyses"].items():
        headline = _headline(kind, analysis)
        print(f"{kind}: {headline}", file=sys.stderr)
    print(path)
    return EXIT_OK


if __name__ == "__main__":
    raise SystemExit(main())
