"""`ai-trading analyze` / `python -m training.model_analysis`: explain what a trained policy does.

The user guide's Model Analyzer, same options::

    ai-trading analyze --model-path models/best_model.pt --config-path models/config.json --log-to-wandb
    ai-trading analyze --model-path models/best_model.pt --config-path models/config.json --analysis-type feature

The policy is run over real candles exactly as in evaluation: candles → `bot.features` → observations
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
import math
import sys
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pandas as pd
import structlog

from adapters.costs import CostModel
from adapters.errors import DataError
from bot.features import FeatureSpec
from bot.model_card import ActionRange, ModelCard, ModelCardError, card_path_for, check_feature_spec, file_sha256
from monitoring.run_store import json_safe, write_json

log = structlog.get_logger()

FloatArray = npt.NDArray[np.float64]
ObsArray = npt.NDArray[np.float32]

ANALYSIS_TYPES: tuple[str, ...] = ("feature", "action", "latent", "sensitivity")
"""Every analysis `--analysis-type all` runs, in order."""
TREND_BARS = 24
"""Bars of the trailing return that defines the trend regime."""
SHOCKS_SIGMA: tuple[float, ...] = (-3.0, -2.0, -1.5, -1.0, -0.5, 0.0, 0.5, 1.0, 1.5, 2.0, 3.0)
"""Sensitivity shifts, in training-split standard deviations of the shifted feature."""
EXIT_OK, EXIT_ERROR, EXIT_USAGE = 0, 1, 2


class AnalysisError(RuntimeError):
    """The analysis cannot run (missing file, unusable model or data); the message names what."""


# --- the policy under analysis --------------------------------------------------------------------------------


@dataclass
class AnalysedPolicy:
    """A trained policy as the analyses see it: normalised observations in, logits or action mean out."""

    spec: FeatureSpec
    """The fitted feature spec (normalisation statistics of the training split)."""
    action_mapping: tuple[float, ...] | ActionRange
    """Discrete: target position per action index; continuous: the target range."""
    torch_model: Any = None
    """`training.models.ActorCritic` when the torch weights are available (SHAP gradients, latent space)."""
    onnx_session: Any = None
    """onnxruntime session of the exported graph (takes raw observations) when analysing an .onnx file."""
    card: ModelCard | None = None
    """The model card, when loaded from files."""
    source: str = "<in memory>"
    """Where the policy came from."""

    @property
    def is_discrete(self) -> bool:
        """Whether actions are indices into `action_mapping`."""
        return not isinstance(self.action_mapping, ActionRange)

    @property
    def targets(self) -> FloatArray:
        """Target positions of the discrete actions (empty for a continuous policy)."""
        return np.asarray(self.action_mapping if self.is_discrete else (), dtype=np.float64)

    def _bounds(self) -> tuple[float, float]:
        if isinstance(self.action_mapping, ActionRange):
            return self.action_mapping.low, self.action_mapping.high
        return -1.0, 1.0

    def outputs(self, obs: ObsArray) -> FloatArray:
        """Return logits (discrete) or action means (continuous), shape (N, A), for normalised observations."""
        batch = np.ascontiguousarray(obs, dtype=np.float32)
        if self.torch_model is not None:
            import torch

            with torch.inference_mode():
                return self.torch_model.policy_outputs(torch.from_numpy(batch)).double().numpy()  # type: ignore[no-any-return]
        if self.onnx_session is None:
            raise AnalysisError("the policy has neither torch weights nor an ONNX session")
        mean, std = self.spec.observation_normalisation()
        floor = self.card.norm_std_floor if self.card is not None else 1e-8
        raw = (batch * np.maximum(std, floor) + mean).astype(np.float32)
        name = self.card.onnx_output_names[1] if self.card is not None else "logits"
        input_name = self.card.onnx_input_name if self.card is not None else "observation"
        (result,) = self.onnx_session.run([name], {input_name: raw})
        return np.asarray(result, dtype=np.float64).reshape(len(batch), -1)

    def probabilities(self, obs: ObsArray) -> FloatArray | None:
        """Return action probabilities (N, A) for a discrete policy, None for a continuous one."""
        if not self.is_discrete:
            return None
        logits = self.outputs(obs)
        logits -= logits.max(axis=1, keepdims=True)
        weights = np.exp(logits)
        result: FloatArray = weights / weights.sum(axis=1, keepdims=True)
        return result

    def expected_position(self, obs: ObsArray) -> FloatArray:
        """Return Σ p(a)·target(a) (discrete) or the clipped mean (continuous), shape (N,)."""
        if self.is_discrete:
            probabilities = self.probabilities(obs)
            assert probabilities is not None
            result: FloatArray = probabilities @ self.targets
            return result
        low, high = self._bounds()
        return np.clip(self.outputs(obs)[:, 0], low, high)

    def decide(self, obs: ObsArray) -> tuple[npt.NDArray[np.int64], FloatArray]:
        """Return (deterministic action index or -1 if continuous, target position) per observation."""
        outputs = self.outputs(obs)
        if self.is_discrete:
            index = outputs.argmax(axis=1).astype(np.int64)
            return index, self.targets[index]
        low, high = self._bounds()
        return np.full(len(obs), -1, dtype=np.int64), np.clip(outputs[:, 0], low, high)

    def latent(self, obs: ObsArray) -> FloatArray | None:
        """Return the actor body's output (the layer before the action head), or None without torch weights."""
        if self.torch_model is None:
            return None
        import torch

        with torch.inference_mode():
            features = self.torch_model.actor_body(torch.from_numpy(np.ascontiguousarray(obs, dtype=np.float32)))
        return features.double().numpy()  # type: ignore[no-any-return]


def _build_torch(checkpoint: Mapping[str, Any], card: ModelCard, spec: FeatureSpec, source: Path) -> Any:
    import gymnasium as gym

    from training.models import ModelConfig, build_actor_critic

    raw = dict(checkpoint.get("model_config") or card.training_config.get("model") or {})
    if "hidden_sizes" in raw:
        raw["hidden_sizes"] = tuple(raw["hidden_sizes"])
    try:
        config = ModelConfig(**raw)
    except (TypeError, ValueError) as e:
        raise AnalysisError(f"{source}: model_config {raw} is not a valid ModelConfig: {e}") from e
    if isinstance(card.action_mapping, ActionRange):
        space: Any = gym.spaces.Box(card.action_mapping.low, card.action_mapping.high, shape=(1,), dtype=np.float32)
    else:
        space = gym.spaces.Discrete(len(card.action_mapping))
    model = build_actor_critic(card.observation_size, space, config, window=spec.window, n_features=spec.n_features)
    try:
        model.load_state_dict(checkpoint["state_dict"])
    except (KeyError, RuntimeError) as e:
        raise AnalysisError(f"{source}: the state_dict does not fit the model its config describes: {e}") from e
    return model.eval()


def _load_checkpoint(path: Path) -> tuple[dict[str, Any], ModelCard]:
    import torch

    # weights_only=False: the checkpoint holds numpy arrays (normalisation) and the card; load only files you trust.
    checkpoint = torch.load(path, map_location="cpu", weights_only=False)
    if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint or "card" not in checkpoint:
        raise AnalysisError(
            f"{path} is not an exported policy (expected keys state_dict and card; see training.export)"
        )
    return checkpoint, ModelCard.from_dict(checkpoint["card"], source=str(path))


def load_policy(model_path: str | Path) -> AnalysedPolicy:
    """Load an exported policy (`best_model.pt`, or `best_model.onnx` with its card beside it)."""
    path = Path(model_path)
    if not path.is_file():
        raise AnalysisError(f"model file not found: {path}")
    try:
        if path.suffix == ".pt":
            checkpoint, card = _load_checkpoint(path)
            spec = check_feature_spec(card)
            model = _build_torch(checkpoint, card, spec, path)
            return AnalysedPolicy(spec, card.action_mapping, torch_model=model, card=card, source=str(path))
        if path.suffix == ".onnx":
            import onnxruntime as ort

            from bot.policy import session_options

            card = ModelCard.load(card_path_for(path))
            card.verify_onnx(path)
            spec = check_feature_spec(card)
            session = ort.InferenceSession(str(path), session_options(), providers=["CPUExecutionProvider"])
            policy = AnalysedPolicy(spec, card.action_mapping, onnx_session=session, card=card, source=str(path))
            weights = path.with_suffix(".pt")
            if weights.is_file():
                checkpoint, torch_card = _load_checkpoint(weights)
                if torch_card.onnx_sha256 == file_sha256(path):
                    policy.torch_model = _build_torch(checkpoint, card, spec, weights)
                    policy.onnx_session = session
                else:
                    log.warning("torch_weights_ignored", path=str(weights), reason="its card is for another ONNX file")
            return policy
    except ModelCardError as e:
        raise AnalysisError(str(e)) from e
    raise AnalysisError(f"{path}: unsupported model file (expected .pt or .onnx)")


# --- observations from real candles ---------------------------------------------------------------------------


@dataclass
class ObservationSet:
    """The policy's own trajectory over real candles: what it saw, what it did, what the market did next."""

    obs: ObsArray
    """Normalised observations (N, D), exactly as the env fed them."""
    times: pd.DatetimeIndex
    """Open time of each observation's bar (UTC)."""
    actions: npt.NDArray[np.int64]
    """Deterministic action index per bar (-1 for a continuous policy)."""
    positions: FloatArray
    """Target position chosen at each bar."""
    trailing_return: FloatArray
    """log(close[t] / close[t - TREND_BARS]) (NaN without enough history)."""
    volatility: FloatArray
    """Std of the last 24 one-bar log returns at bar t."""
    forward_return: FloatArray
    """close[t + 1] / close[t] - 1 (NaN on the last bar)."""


def collect_observations(
    policy: AnalysedPolicy, frame: pd.DataFrame, env_config: Any, costs: CostModel
) -> ObservationSet:
    """Trade `frame` once with the policy's deterministic actions in a sequential env; record every step."""
    from training.env import TradingEnv

    config = replace(env_config, episode_length=None, random_start=False, window=policy.spec.window)
    env = TradingEnv(frame, config, spec=policy.spec, costs=costs)
    obs, info = env.reset(seed=0)
    start = int(info["start_index"])
    seen: list[ObsArray] = []
    actions: list[int] = []
    positions: list[float] = []
    done = False
    while not done:
        seen.append(obs)
        index, target = policy.decide(obs[None, :])
        actions.append(int(index[0]))
        positions.append(float(target[0]))
        step_action: Any = int(index[0]) if policy.is_discrete else np.asarray([target[0]], dtype=np.float32)
        obs, _, terminated, truncated, _ = env.step(step_action)
        done = bool(terminated or truncated)
    n = len(seen)
    bars = np.arange(start, start + n)
    close = frame["close"].to_numpy(dtype=np.float64)
    log_close = np.log(close)
    trailing = np.full(n, np.nan)
    ok = bars >= TREND_BARS
    trailing[ok] = log_close[bars[ok]] - log_close[bars[ok] - TREND_BARS]
    returns = np.diff(log_close, prepend=log_close[0])
    vol = pd.Series(returns).rolling(24, min_periods=24).std(ddof=0).to_numpy()[bars]
    forward = np.full(n, np.nan)
    has_next = bars + 1 < len(close)
    forward[has_next] = close[bars[has_next] + 1] / close[bars[has_next]] - 1.0
    return ObservationSet(
        np.stack(seen).astype(np.float32),
        pd.DatetimeIndex(frame.index[bars]),
        np.asarray(actions, dtype=np.int64),
        np.asarray(positions, dtype=np.float64),
        trailing,
        vol,
        forward,
    )


@dataclass
class AnalysisData:
    """Candles to analyse on, with the env and cost settings of the training run."""

    frame: pd.DataFrame
    env_config: Any
    costs: CostModel
    description: dict[str, Any]


def load_training_config(config_path: str | Path | None, policy: AnalysedPolicy) -> dict[str, Any]:
    """Read the training config (models/config.json), else the one in the model card."""
    if config_path is not None:
        path = Path(config_path)
        if not path.is_file():
            raise AnalysisError(f"config file not found: {path}")
        try:
            data = json.loads(path.read_text())
        except json.JSONDecodeError as e:
            raise AnalysisError(f"{path} is not valid JSON: {e}") from e
        if not isinstance(data, dict):
            raise AnalysisError(f"{path} must hold a JSON object (the training config)")
        return data
    return dict(policy.card.training_config) if policy.card is not None else {}


def load_analysis_data(
    policy: AnalysedPolicy,
    config: Mapping[str, Any],
    *,
    data_path: str | Path | None = None,
    split: str = "test",
    max_bars: int = 3000,
) -> AnalysisData:
    """Pick the candles: `data_path`, else the run's data (its `split`), else the bundled sample; last `max_bars`."""
    from adapters.ohlcv import load_ohlcv
    from adapters.sample_data import sample_path
    from adapters.splits import split_by_fraction
    from bot.config import ConfigError, DataConfig, build
    from training.env import EnvConfig
    from training.evaluation import frame_with_warmup

    try:
        env_config = build(EnvConfig, config.get("env") or {}, "env")
        costs = build(CostModel, config.get("costs") or {}, "costs")
        data_config = build(DataConfig, config.get("data") or {}, "data")
    except ConfigError as e:
        raise AnalysisError(f"training config: {e}") from e
    spec = policy.spec
    warmup = spec.min_history - 1
    try:
        if data_path is not None:
            path = Path(data_path)
            if not path.is_file():
                raise AnalysisError(f"--data-path {path} does not exist")
            frame = load_ohlcv(path, gaps="allow")
            description: dict[str, Any] = {"source": str(path), "split": "whole file"}
        else:
            configured = Path(data_config.path) if data_config.path else sample_path()
            if not configured.is_file():
                log.warning("training_data_missing", path=str(configured), fallback="bundled sample")
                configured = sample_path()
            full = load_ohlcv(configured, gaps=data_config.gaps)
            if data_config.start:
                full = full.loc[pd.Timestamp(data_config.start, tz="UTC") :]
            if data_config.end:
                full = full.loc[: pd.Timestamp(data_config.end, tz="UTC")]
            test_fraction = 1.0 - data_config.train_fraction - data_config.validation_fraction
            parts = split_by_fraction(full, data_config.train_fraction, data_config.validation_fraction, test_fraction)
            segments = {"train": parts.train, "validation": parts.validation, "test": parts.test}
            if split not in segments:
                raise AnalysisError(f"--split must be one of {sorted(segments)}, was {split!r}")
            segment = segments[split]
            if split == "train" or segment.start < warmup:
                frame = full.iloc[segment.start : segment.stop]
            else:
                frame = frame_with_warmup(full, segment, spec)
            description = {"source": str(configured), "split": split}
    except DataError as e:
        raise AnalysisError(str(e)) from e
    if max_bars > 0 and len(frame) > max_bars + warmup:
        frame = frame.iloc[-(max_bars + warmup) :]
    if len(frame) < spec.min_history + 2:
        raise AnalysisError(
            f"{description['source']}: {len(frame)} candles; the features need {spec.min_history} before the first "
            "observation"
        )
    description.update(first=str(frame.index[0]), last=str(frame.index[-1]), candles=len(frame))
    return AnalysisData(frame, env_config, costs, description)


# --- analyses -----------------------------------------------------------------------------------------------


def _figure(rows: int = 1, cols: int = 1, size: tuple[float, float] = (8.0, 4.0)) -> tuple[Any, Any]:
    from matplotlib.figure import Figure

    figure = Figure(figsize=size, layout="constrained")
    return figure, figure.subplots(rows, cols, squeeze=False)


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
    figure, axes = _figure(1, panels, size=(6.0 * panels, 0.32 * len(names) + 1.8))
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

    figure, axes = _figure(2, 2, size=(10.0, 7.0))
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

    figure, axes = _figure(1, 2, size=(11.0, 4.6))
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

    figure, axes = _figure(1, 2, size=(11.0, 4.2))
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
    data = load_analysis_data(policy, config, data_path=data_path, split=split, max_bars=max_bars)
    observations = collect_observations(policy, data.frame, data.env_config, data.costs)
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
    for kind in ANALYSIS_TYPES:
        if kind in analysis_types:
            begun = time.perf_counter()
            results["analyses"][kind] = runners[kind]()
            results["seconds"][kind] = time.perf_counter() - begun
            log.info("analysis_done", analysis=kind, seconds=round(results["seconds"][kind], 3))
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
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:
        return int(e.code) if isinstance(e.code, int) else EXIT_USAGE
    from monitoring.logging import configure_logging

    configure_logging(args.log_level)
    config_path = args.config_path
    if config_path is None and (Path(args.model_path).parent / "config.json").is_file():
        config_path = str(Path(args.model_path).parent / "config.json")
    types = ANALYSIS_TYPES if args.analysis_type == "all" else (args.analysis_type,)
    try:
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
    except AnalysisError as e:
        print(f"ai-trading analyze: {e}", file=sys.stderr)
        return EXIT_ERROR
    summary = json.loads(path.read_text())
    for kind, analysis in summary["analyses"].items():
        headline = _headline(kind, analysis)
        print(f"{kind}: {headline}", file=sys.stderr)
    print(path)
    return EXIT_OK


if __name__ == "__main__":
    raise SystemExit(main())
