"""The four analyses of a policy (feature, action, latent, sensitivity), each writing its chart and figures."""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pandas as pd
import structlog

from bot.model.features import FeatureSpec
from monitoring.charts import new_figure
from training.analysis.data import TREND_BARS, ObservationSet
from training.analysis.policy import AnalysedPolicy, FloatArray, ObsArray

log = structlog.get_logger()

SHOCKS_SIGMA: tuple[float, ...] = (-3.0, -2.0, -1.5, -1.0, -0.5, 0.0, 0.5, 1.0, 1.5, 2.0, 3.0)
"""Sensitivity shifts, in training-split standard deviations of the shifted feature."""


def feature_groups(spec: FeatureSpec) -> list[tuple[str, npt.NDArray[np.int64]]]:
    """Return (name, observation columns) per feature name (all its window lags) and per state value."""
    width = spec.window * spec.n_features
    groups = [(name, np.arange(j, width, spec.n_features, dtype=np.int64)) for j, name in enumerate(spec.names)]
    groups += [(name, np.asarray([width + k], dtype=np.int64)) for k, name in enumerate(spec.state_names)]
    return groups


def shap_values(policy: AnalysedPolicy, X: ObsArray, background: ObsArray) -> tuple[FloatArray, str]:
    """Return SHAP values (N, D) of the expected target position and the explainer used (needs torch weights)."""
    import shap  # type: ignore[import-untyped]
    import torch
    from torch import nn

    model = policy.torch_model
    targets = torch.as_tensor(policy.targets, dtype=torch.float32)
    discrete = policy.is_discrete
    low, high = policy._bounds()

    class ExpectedPosition(nn.Module):
        def forward(self, obs: torch.Tensor) -> torch.Tensor:
            out = model.policy_outputs(obs)
            if discrete:
                expected: torch.Tensor = (torch.softmax(out, dim=-1) @ targets).unsqueeze(-1)
                return expected
            clipped: torch.Tensor = out[:, :1].clamp(low, high)
            return clipped

    explainer = shap.GradientExplainer(ExpectedPosition().eval(), torch.from_numpy(background))
    values = explainer.shap_values(torch.from_numpy(X), nsamples=100, rseed=0)
    array = np.asarray(values[0] if isinstance(values, list) else values, dtype=np.float64)
    return array.reshape(len(X), -1), "shap.GradientExplainer (expected gradients)"


def permutation_importance(
    policy: AnalysedPolicy, X: ObsArray, spec: FeatureSpec, repeats: int = 3, seed: int = 0
) -> tuple[FloatArray, FloatArray]:
    """Return per group (feature_groups order): mean |Δ expected position| and share of changed decisions."""
    rng = np.random.default_rng(seed)
    base = policy.expected_position(X)
    _, base_target = policy.decide(X)
    groups = feature_groups(spec)
    deltas = np.zeros(len(groups))
    flips = np.zeros(len(groups))
    for g, (_, columns) in enumerate(groups):
        for _ in range(repeats):
            shuffled = X.copy()
            shuffled[:, columns] = X[rng.permutation(len(X))][:, columns]
            deltas[g] += np.abs(policy.expected_position(shuffled) - base).mean() / repeats
            flips[g] += (policy.decide(shuffled)[1] != base_target).mean() / repeats
    return deltas, flips


def analyse_features(
    policy: AnalysedPolicy, data: ObservationSet, out_dir: Path, samples: int = 200, background: int = 50, seed: int = 0
) -> dict[str, Any]:
    """Feature importance: SHAP per feature name (summed over the window) and permutation importance."""
    spec = policy.spec
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(data.obs))
    X = data.obs[order[: min(samples, len(order))]]
    bg = data.obs[order[len(X) : len(X) + background]] if len(order) > len(X) else X[:background]
    groups = feature_groups(spec)
    names = [name for name, _ in groups]
    result: dict[str, Any] = {"samples": len(X), "background": len(bg)}

    started = time.perf_counter()
    deltas, flips = permutation_importance(policy, X, spec, seed=seed)
    result["permutation_seconds"] = time.perf_counter() - started

    shap_abs: FloatArray | None = None
    by_lag: FloatArray | None = None
    if policy.torch_model is not None:
        started = time.perf_counter()
        values, method = shap_values(policy, X, bg)
        result["shap_seconds"] = time.perf_counter() - started
        result["method"] = method
        mean_abs = np.abs(values).mean(axis=0)
        shap_abs = np.asarray([mean_abs[columns].sum() for _, columns in groups])
        width = spec.window * spec.n_features
        by_lag = mean_abs[:width].reshape(spec.window, spec.n_features)
        result["shap_total"] = float(shap_abs.sum())
        result["by_lag"] = {"lags_oldest_first": spec.window, "features": list(spec.names), "values": by_lag}
    else:
        result["method"] = "permutation only"
        result["shap_skipped"] = "SHAP gradients need the torch weights (.pt beside the .onnx, same sha256)"

    share = shap_abs / shap_abs.sum() if shap_abs is not None and shap_abs.sum() > 0 else None
    perm_share = deltas / deltas.sum() if deltas.sum() > 0 else np.zeros_like(deltas)
    result["features"] = [
        {
            "name": name,
            "shap_mean_abs": None if shap_abs is None else float(shap_abs[g]),
            "shap_share": None if share is None else float(share[g]),
            "permutation_delta_position": float(deltas[g]),
            "permutation_share": float(perm_share[g]),
            "permutation_decision_change_rate": float(flips[g]),
        }
        for g, name in enumerate(names)
    ]
    if shap_abs is not None and len(names) > 2:
        rank = pd.Series(shap_abs).rank().corr(pd.Series(deltas).rank())
        result["shap_permutation_rank_correlation"] = None if math.isnan(rank) else float(rank)
    key = share if share is not None else perm_share
    result["ranking"] = [names[i] for i in np.argsort(-key)]

    panels = 2 if by_lag is not None else 1
    figure, axes = new_figure(1, panels, size=(6.0 * panels, 0.32 * len(names) + 1.8))
    ax = axes[0, 0]
    y = np.arange(len(names))
    if share is not None:
        ax.barh(y - 0.2, share * 100, 0.4, label="SHAP share")
    ax.barh(y + (0.2 if share is not None else 0.0), perm_share * 100, 0.4, label="permutation share")
    ax.set_yticks(y, names, fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("share of importance (%)")
    ax.set_title("Feature importance (expected target position)")
    ax.legend(fontsize=8)
    if by_lag is not None:
        ax = axes[0, 1]
        image = ax.imshow(by_lag.T, aspect="auto", cmap="viridis")
        ax.set_yticks(range(spec.n_features), list(spec.names), fontsize=8)
        ax.set_xlabel("bar in window (right: most recent)")
        ax.set_title("mean |SHAP| by lag")
        figure.colorbar(image, ax=ax)
    path = out_dir / "feature_importance.png"
    figure.savefig(path, dpi=90)
    result["chart"] = path.name
    return result


def _label(policy: AnalysedPolicy, index: int) -> str:
    return f"{policy.targets[index]:+g}" if policy.is_discrete else "continuous"


def analyse_actions(policy: AnalysedPolicy, data: ObservationSet, out_dir: Path) -> dict[str, Any]:
    """Action patterns: action mix and mean position by trend, volatility and hour of day."""
    frame = pd.DataFrame(
        {
            "position": data.positions,
            "expected_position": policy.expected_position(data.obs),
            "trailing_return": data.trailing_return,
            "volatility": data.volatility,
            "forward_return": data.forward_return,
            "hour": data.times.hour,
        }
    )
    result: dict[str, Any] = {"bars": len(frame)}
    if policy.is_discrete:
        counts = np.bincount(data.actions, minlength=len(policy.targets))
        result["action_distribution"] = {
            _label(policy, i): {"target_position": float(policy.targets[i]), "bars": int(c), "share": c / len(frame)}
            for i, c in enumerate(counts)
        }
    result["mean_position"] = float(frame["position"].mean())

    def bucketed(column: str, buckets: int = 5) -> pd.DataFrame:
        valid = frame.dropna(subset=[column])
        if valid[column].nunique() < buckets:
            return pd.DataFrame()
        labels = pd.qcut(valid[column], buckets, labels=[f"Q{i + 1}" for i in range(buckets)])
        table = valid.groupby(labels, observed=True).agg(
            bars=("position", "size"),
            low=(column, "min"),
            high=(column, "max"),
            mean_position=("position", "mean"),
            mean_expected_position=("expected_position", "mean"),
            mean_forward_return=("forward_return", "mean"),
        )
        return table.reset_index(names="bucket")

    trend = bucketed("trailing_return")
    volatility = bucketed("volatility")
    by_hour = (
        frame.groupby("hour")
        .agg(
            bars=("position", "size"),
            mean_position=("position", "mean"),
            mean_expected_position=("expected_position", "mean"),
        )
        .reset_index()
    )
    result["by_trend_quintile"] = trend.to_dict(orient="records")
    result["by_volatility_quintile"] = volatility.to_dict(orient="records")
    result["by_hour_utc"] = by_hour.to_dict(orient="records")
    valid = frame.dropna(subset=["forward_return"])
    corr = valid["position"].corr(valid["forward_return"]) if valid["position"].nunique() > 1 else float("nan")
    result["position_forward_return_correlation"] = None if math.isnan(corr) else float(corr)
    result["mean_forward_return_when_long"] = finite_or_none(valid.loc[valid["position"] > 0, "forward_return"].mean())
    result["mean_forward_return_when_flat"] = finite_or_none(valid.loc[valid["position"] == 0, "forward_return"].mean())

    figure, axes = new_figure(2, 2, size=(10.0, 7.0))
    ax = axes[0, 0]
    if policy.is_discrete:
        labels = list(result["action_distribution"])
        ax.bar(labels, [100 * v["share"] for v in result["action_distribution"].values()], color="tab:blue")
        ax.set_xlabel("target position")
        ax.set_ylabel("share of bars (%)")
        ax.set_title("Action distribution")
    else:
        ax.hist(data.positions, bins=30, color="tab:blue")
        ax.set_title("Target position distribution")
    for ax, table, title in (
        (axes[0, 1], trend, f"by trailing {TREND_BARS}-bar return"),
        (axes[1, 0], volatility, "by volatility"),
    ):
        if len(table):
            ax.bar(table["bucket"].astype(str), table["mean_position"], color="tab:orange", label="chosen")
            ax.plot(table["bucket"].astype(str), table["mean_expected_position"], "k.-", label="expected")
            ax.legend(fontsize=8)
        ax.set_ylabel("mean target position")
        ax.set_title(f"Position {title} (quintiles, Q1 lowest)")
    ax = axes[1, 1]
    ax.bar(by_hour["hour"], by_hour["mean_position"], color="tab:green")
    ax.set_xlabel("hour of day (UTC)")
    ax.set_ylabel("mean target position")
    ax.set_title("Position by hour of day")
    path = out_dir / "action_patterns.png"
    figure.savefig(path, dpi=90)
    result["chart"] = path.name
    return result


def finite_or_none(value: Any) -> float | None:
    """Return a finite float or None."""
    number = float(value)
    return number if math.isfinite(number) else None


def pca_2d(points: FloatArray) -> tuple[FloatArray, FloatArray]:
    """Project points onto their first two principal components (numpy SVD); return (coords, variance ratios)."""
    centred = points - points.mean(axis=0)
    _, singular, vt = np.linalg.svd(centred, full_matrices=False)
    variance = singular**2
    ratios = variance / variance.sum() if variance.sum() > 0 else np.zeros_like(variance)
    components = vt[:2]
    coords = centred @ components.T
    if coords.shape[1] < 2:
        coords = np.pad(coords, ((0, 0), (0, 2 - coords.shape[1])))
    return coords, ratios


def analyse_latent(
    policy: AnalysedPolicy, data: ObservationSet, out_dir: Path, max_points: int = 3000, seed: int = 0
) -> dict[str, Any]:
    """Latent space: the actor's penultimate activations, PCA to 2-D, coloured by action and next return."""
    if policy.torch_model is None:
        return {"skipped": "the latent space needs the torch weights (.pt beside the .onnx, same sha256)"}
    rng = np.random.default_rng(seed)
    pick = np.sort(rng.permutation(len(data.obs))[:max_points])
    latent = policy.latent(data.obs[pick])
    assert latent is not None
    coords, ratios = pca_2d(latent)
    positions = data.positions[pick]
    forward = data.forward_return[pick]
    result: dict[str, Any] = {
        "points": len(pick),
        "latent_dim": int(latent.shape[1]),
        "explained_variance_ratio": ratios[:5],
        "dead_units": int((latent.std(axis=0) < 1e-6).sum()),
    }
    centroids = {}
    for value in np.unique(positions):
        mask = positions == value
        centroids[f"{value:+g}"] = {"bars": int(mask.sum()), "centroid": coords[mask].mean(axis=0)}
    result["centroids_by_target_position"] = centroids
    if len(centroids) >= 2:
        means = np.stack([c["centroid"] for c in centroids.values()])
        spread = float(coords.std(axis=0).mean()) or 1.0
        result["centroid_separation_in_std"] = float(np.linalg.norm(means.max(axis=0) - means.min(axis=0)) / spread)

    figure, axes = new_figure(1, 2, size=(11.0, 4.6))
    ax = axes[0, 0]
    for value in np.unique(positions):
        mask = positions == value
        ax.scatter(coords[mask, 0], coords[mask, 1], s=6, alpha=0.6, label=f"target {value:+g}")
    ax.legend(fontsize=8, markerscale=2)
    ax.set_title("Latent space by action")
    ax = axes[0, 1]
    finite_forward = np.nan_to_num(forward, nan=0.0)
    limit = float(np.percentile(np.abs(finite_forward), 98)) or 1e-6
    scatter = ax.scatter(
        coords[:, 0], coords[:, 1], c=100 * finite_forward, s=6, cmap="RdYlGn", vmin=-100 * limit, vmax=100 * limit
    )
    figure.colorbar(scatter, ax=ax, label="next-bar return (%)")
    ax.set_title("Latent space by next-bar return")
    for ax in axes[0]:
        ax.set_xlabel(f"PC1 ({ratios[0]:.0%} of variance)")
        ax.set_ylabel(f"PC2 ({ratios[1] if len(ratios) > 1 else 0:.0%})")
    path = out_dir / "latent_space.png"
    figure.savefig(path, dpi=90)
    result["chart"] = path.name
    return result


def sensitivity_perturbations(spec: FeatureSpec) -> dict[str, tuple[npt.NDArray[np.int64], float, str]]:
    """Return name → (observation columns shifted, σ of the feature in raw units, description)."""
    width = spec.window * spec.n_features
    std = spec.norm_std or tuple(1.0 for _ in spec.names)
    found: dict[str, tuple[npt.NDArray[np.int64], float, str]] = {}
    if "log_return" in spec.names:
        j = spec.names.index("log_return")
        last = width - spec.n_features + j
        recent = np.asarray([last - k * spec.n_features for k in range(min(6, spec.window))], dtype=np.int64)
        found["last_return"] = (np.asarray([last], dtype=np.int64), std[j], "the most recent bar's log return")
        found["recent_returns"] = (recent, std[j], "each of the last 6 bars' log returns (a sustained move)")
    if "volatility" in spec.names:
        j = spec.names.index("volatility")
        columns = np.arange(j, width, spec.n_features, dtype=np.int64)
        found["volatility"] = (columns, std[j], "the volatility feature on every bar of the window (a regime shift)")
    return found


def analyse_sensitivity(
    policy: AnalysedPolicy, data: ObservationSet, out_dir: Path, samples: int = 500, seed: int = 0
) -> dict[str, Any]:
    """Market sensitivity: shift recent returns / volatility by k σ and measure the policy's response."""
    rng = np.random.default_rng(seed)
    X = data.obs[np.sort(rng.permutation(len(data.obs))[:samples])]
    base_position = policy.expected_position(X)
    _, base_target = policy.decide(X)
    shocks = np.asarray(SHOCKS_SIGMA)
    result: dict[str, Any] = {"samples": len(X), "shocks_sigma": shocks, "perturbations": {}}
    for name, (columns, sigma, description) in sensitivity_perturbations(policy.spec).items():
        mean_position, change_rate, probabilities = [], [], []
        for shock in shocks:
            shifted = X.copy()
            # Normalised features are (raw - mean) / σ, so adding k here adds k·σ to the raw feature.
            shifted[:, columns] += np.float32(shock)
            mean_position.append(float(policy.expected_position(shifted).mean()))
            change_rate.append(float((policy.decide(shifted)[1] != base_target).mean()))
            probs = policy.probabilities(shifted)
            if probs is not None:
                probabilities.append(probs.mean(axis=0))
        positions = np.asarray(mean_position)
        slope = float(np.polyfit(shocks[np.abs(shocks) <= 1.0], positions[np.abs(shocks) <= 1.0], 1)[0])
        entry: dict[str, Any] = {
            "description": description,
            "sigma_raw": sigma,
            "shocks_raw": shocks * sigma,
            "mean_expected_position": positions,
            "delta_vs_unshocked": positions - float(base_position.mean()),
            "decision_change_rate": change_rate,
            "slope_per_sigma": slope,
        }
        if probabilities and policy.is_discrete:
            entry["mean_action_probabilities"] = {
                _label(policy, i): np.asarray(probabilities)[:, i] for i in range(len(policy.targets))
            }
        result["perturbations"][name] = entry
    if not result["perturbations"]:
        result["skipped"] = f"the feature spec {list(policy.spec.names)} has neither log_return nor volatility"
        return result

    figure, axes = new_figure(1, 2, size=(11.0, 4.2))
    for name, entry in result["perturbations"].items():
        axes[0, 0].plot(shocks, entry["mean_expected_position"], marker="o", label=name)
        axes[0, 1].plot(shocks, 100 * np.asarray(entry["decision_change_rate"]), marker="o", label=name)
    axes[0, 0].axhline(float(base_position.mean()), color="gray", linestyle="--", linewidth=0.8)
    axes[0, 0].set_title("Mean expected target position")
    axes[0, 1].set_title("Decisions changed vs unshocked (%)")
    for ax in axes[0]:
        ax.set_xlabel("shock (training-split σ of the feature)")
        ax.legend(fontsize=8)
    path = out_dir / "market_sensitivity.png"
    figure.savefig(path, dpi=90)
    result["chart"] = path.name
    return result
