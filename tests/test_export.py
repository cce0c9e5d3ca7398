"""ONNX export: normalisation inside the graph, model card beside and inside the file, torch/ORT parity."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
import onnx
import onnxruntime as ort
import pandas as pd
import pytest
import torch
from onnx import numpy_helper
from torch import nn

from adapters.data.ohlcv import load_ohlcv
from adapters.data.sample import sample_path
from bot.model.card import METADATA_KEY, ActionRange, ModelCard, ModelCardError, file_sha256
from bot.model.features import (
    STD_FLOOR,
    FeatureSpec,
    candle_arrays,
    compute_features,
    fit_normalisation,
    normalised_observation,
    observation_valid,
    position_state,
    raw_observation,
)
from training.export import (
    ExportParityError,
    NormalizedPolicy,
    amend_card,
    export_onnx,
    training_distribution,
    verify_parity,
)

WINDOW = 8
DATA_RANGE = {"start": "2025-09-01T00:00:00+00:00", "end": "2025-11-30T23:00:00+00:00", "symbol": "BTC/USDT"}


@dataclass(frozen=True)
class RealData:
    """Raw observations from the bundled candles and the spec (fitted on the first 70 %) that made them."""

    spec: FeatureSpec
    """Fitted feature spec."""
    windows: npt.NDArray[np.float64]
    """Raw [n, window, n_features] feature windows."""
    states: npt.NDArray[np.float64]
    """Position states appended to each observation, [n, 3]."""
    observations: npt.NDArray[np.float32]
    """Raw flat observations, [n, window * n_features + 3]."""


def real_data(bars: int = 1600, seed: int = 0) -> RealData:
    """Build raw observations the way the env and daemon do, from the bundled BTC/USDT 1h candles."""
    frame: pd.DataFrame = load_ohlcv(sample_path("BTC/USDT-1h")).iloc[-bars:]
    spec = FeatureSpec(window=WINDOW)
    features, valid = compute_features(spec, *candle_arrays(frame))
    train = np.arange(len(frame)) < int(0.7 * len(frame))
    spec = fit_normalisation(spec, features, valid & train)
    ends = np.flatnonzero(observation_valid(spec, valid))
    windows = np.stack([features[end - WINDOW + 1 : end + 1] for end in ends])
    rng = np.random.default_rng(seed)
    states = np.array(
        [position_state(rng.choice([-1.0, 0.0, 1.0]), rng.normal(0, 0.02), int(rng.integers(0, 50))) for _ in ends]
    )
    observations = np.stack([raw_observation(w, s) for w, s in zip(windows, states, strict=True)])
    return RealData(spec, windows, states, observations)


@pytest.fixture(scope="module")
def data() -> RealData:
    result = real_data()
    assert result.observations.shape[1] == WINDOW * result.spec.n_features + 3
    assert len(result.observations) >= 1000
    return result


@pytest.fixture(scope="module")
def observations(data: RealData) -> npt.NDArray[np.float32]:
    return data.observations


class SmallMlp(nn.Module):
    """A two-layer policy network with `policy_outputs` like the project's actor-critic."""

    def __init__(self, obs_dim: int, n_outputs: int) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(obs_dim, 32), nn.Tanh(), nn.Linear(32, n_outputs))

    def policy_outputs(self, obs: torch.Tensor) -> torch.Tensor:
        return self.net(obs)  # type: ignore[no-any-return]


class TinyAttention(nn.Module):
    """Self-attention over the window's bars, layer norm, then a head on the latest bar and the state."""

    def __init__(self, window: int, n_features: int, n_state: int, n_outputs: int, width: int = 16) -> None:
        super().__init__()
        self.window, self.n_features, self.width = window, n_features, width
        self.embed = nn.Linear(n_features, width)
        self.qkv = nn.Linear(width, 3 * width)
        self.norm = nn.LayerNorm(width)
        self.head = nn.Linear(width + n_state, n_outputs)

    def policy_outputs(self, obs: torch.Tensor) -> torch.Tensor:
        n_window = self.window * self.n_features
        tokens = self.embed(obs[:, :n_window].reshape(-1, self.window, self.n_features))
        q, k, v = self.qkv(tokens).chunk(3, dim=-1)
        weights = torch.softmax(q @ k.transpose(1, 2) / math.sqrt(self.width), dim=-1)
        encoded = self.norm(tokens + weights @ v)
        return self.head(torch.cat([encoded[:, -1], obs[:, n_window:]], dim=1))  # type: ignore[no-any-return]


class BatchSizeBranch(SmallMlp):
    """Broken on purpose: a Python branch on the batch size, which tracing freezes to the example's (1)."""

    def policy_outputs(self, obs: torch.Tensor) -> torch.Tensor:
        out = self.net(obs)
        if obs.shape[0] == 1:
            return out
        return out * 1.01


@dataclass(frozen=True)
class FakeTrainConfig:
    """Stands in for the training config dataclass."""

    seed: int = 3
    """Seed."""
    lr: float = 3e-4
    """Learning rate."""


def _export(model: nn.Module, data: RealData, out_dir: Path, **overrides: object) -> ModelCard:
    kwargs: dict[str, object] = {
        "feature_spec": data.spec.to_dict(),
        "action_mapping": [-1.0, 0.0, 1.0],
        "data_range": DATA_RANGE,
        "parity_observations": data.observations,
        "out_dir": out_dir,
        "run_id": "test-run",
        "code_version": "test",
    }
    kwargs.update(overrides)
    return export_onnx(model, **kwargs)  # type: ignore[arg-type]


def _session(path: Path) -> ort.InferenceSession:
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def _obs_dim(data: RealData) -> int:
    return int(data.observations.shape[1])


def test_mlp_export_writes_artifacts_and_normalises_inside_the_graph(data: RealData, tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = SmallMlp(_obs_dim(data), 3)
    model.train()
    card = _export(model, data, tmp_path, config=FakeTrainConfig(), metrics={"sharpe": 1.5})
    assert model.training, "export must restore the model's training mode"

    for name in ("best_model.onnx", "best_model.json", "best_model.pt", "config.json"):
        assert (tmp_path / name).is_file(), name
    assert card.onnx_sha256 == file_sha256(tmp_path / "best_model.onnx")
    assert ModelCard.load(tmp_path / "best_model.json") == card
    assert card.feature_spec == data.spec.to_dict() and card.observation_shape == data.spec.observation_shape
    assert card.training_config == {"seed": 3, "lr": 3e-4}
    assert json.loads((tmp_path / "config.json").read_text()) == {"seed": 3, "lr": 3e-4}

    graph = onnx.load(str(tmp_path / "best_model.onnx"))
    assert max(op.version for op in graph.opset_import if op.domain in ("", "ai.onnx")) >= 17
    embedded = {p.key: p.value for p in graph.metadata_props}[METADATA_KEY]
    assert ModelCard.from_json(embedded) == card.without_sha()

    # The graph takes RAW observations and must act as torch does on bot.model.features' normalised ones.
    normalised = np.stack(
        [normalised_observation(data.spec, w, s) for w, s in zip(data.windows, data.states, strict=True)]
    )
    with torch.no_grad():
        logits = model.policy_outputs(torch.from_numpy(normalised)).numpy()
    session = _session(tmp_path / "best_model.onnx")
    action, onnx_logits = session.run(["action", "logits"], {"observation": data.observations})
    np.testing.assert_allclose(onnx_logits, logits, atol=1e-5)
    np.testing.assert_array_equal(action, logits.argmax(axis=1))
    assert action.dtype == np.int64
    single = session.run(["action"], {"observation": data.observations[:1]})[0]  # dynamic batch axis
    assert single.shape == (1,) and single[0] == action[0]

    saved = torch.load(tmp_path / "best_model.pt", weights_only=False)
    assert set(saved["state_dict"]) == set(model.state_dict())
    assert saved["card"]["onnx"]["sha256"] == card.onnx_sha256


def test_amending_a_card_rewrites_all_three_copies_and_the_daemon_still_loads_the_model(
    data: RealData, tmp_path: Path
) -> None:
    from bot.model.policy import OnnxPolicy

    torch.manual_seed(0)
    card = _export(SmallMlp(_obs_dim(data), 3), data, tmp_path, metrics={"test": {"policy": {"sharpe": 1.5}}})
    onnx_path = tmp_path / "best_model.onnx"
    before = _session(onnx_path).run(["logits"], {"observation": data.observations})[0]

    amended = amend_card(onnx_path, {"sweep": {"pbo": 0.6, "dsr": float("nan")}})
    # The new block is added, the old ones kept, and a NaN is stored as JSON null like every card figure.
    assert amended.metrics == {"test": {"policy": {"sharpe": 1.5}}, "sweep": {"pbo": 0.6, "dsr": None}}
    assert amended.onnx_sha256 == file_sha256(onnx_path) != card.onnx_sha256
    assert ModelCard.load(tmp_path / "best_model.json") == amended
    embedded = {p.key: p.value for p in onnx.load(str(onnx_path)).metadata_props}[METADATA_KEY]
    assert ModelCard.from_json(embedded) == amended.without_sha()
    assert torch.load(tmp_path / "best_model.pt", weights_only=False)["card"] == amended.to_dict()
    policy = OnnxPolicy.load(onnx_path)  # checks the sha and that the embedded card equals the file beside it
    assert policy.card.metrics["sweep"]["pbo"] == 0.6
    session_outputs = _session(onnx_path).run(["logits"], {"observation": data.observations})[0]
    np.testing.assert_array_equal(session_outputs, before)  # the graph itself is untouched
    assert amend_card(onnx_path, {"sweep": {"pbo": 0.1}}).metrics["sweep"] == {"pbo": 0.1}  # replaced, not merged
    assert not list(tmp_path.glob(".*amend*")), "no staging file is left behind"


def test_a_card_whose_file_changed_is_not_amended(data: RealData, tmp_path: Path) -> None:
    torch.manual_seed(0)
    _export(SmallMlp(_obs_dim(data), 3), data, tmp_path)
    onnx_path = tmp_path / "best_model.onnx"
    onnx_path.write_bytes(onnx_path.read_bytes() + b"\0")
    card_before = (tmp_path / "best_model.json").read_text()
    with pytest.raises(ModelCardError, match="sha256 mismatch"):
        amend_card(onnx_path, {"sweep": {"pbo": 0.5}})
    assert (tmp_path / "best_model.json").read_text() == card_before


def test_transformer_like_continuous_export_clips_to_the_action_range(data: RealData, tmp_path: Path) -> None:
    torch.manual_seed(1)
    model = TinyAttention(WINDOW, data.spec.n_features, 3, 1)
    card = _export(model, data, tmp_path, name="attn", action_mapping=ActionRange(-0.25, 0.25))
    assert card.action_space == "continuous" and card.onnx_output_names == ("action", "mean")
    session = _session(tmp_path / "attn.onnx")
    action, mean_out = session.run(["action", "mean"], {"observation": data.observations})
    np.testing.assert_array_equal(action, np.clip(mean_out, -0.25, 0.25))
    assert (np.abs(mean_out) > 0.25).any(), "test needs some means outside the range to check the clip"


# torch's own attention code warns while tracing about shape checks that are constant for a fixed model.
@pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning")
def test_project_actor_critic_models_export_with_parity(data: RealData, tmp_path: Path) -> None:
    models = pytest.importorskip("training.models")
    gym = pytest.importorskip("gymnasium")
    torch.manual_seed(2)
    obs_dim = _obs_dim(data)
    mlp = models.build_actor_critic(obs_dim, gym.spaces.Discrete(3), models.ModelConfig())
    card = _export(mlp, data, tmp_path / "mlp")
    assert ModelCard.load(tmp_path / "mlp" / "best_model.json") == card
    saved = torch.load(tmp_path / "mlp" / "best_model.pt", weights_only=False)
    assert saved["model_config"]["name"] == "mlp"

    config = models.ModelConfig(name="transformer", d_model=16, n_heads=2, n_layers=1)
    transformer = models.build_actor_critic(
        obs_dim, gym.spaces.Box(-1.0, 1.0, (1,)), config, window=WINDOW, n_features=data.spec.n_features
    )
    card = _export(transformer, data, tmp_path / "tf", action_mapping=ActionRange(-1.0, 1.0))
    session = _session(tmp_path / "tf" / "best_model.onnx")
    (mean_out,) = session.run(["mean"], {"observation": data.observations[:50]})
    normalised = np.stack(
        [normalised_observation(data.spec, w, s) for w, s in zip(data.windows[:50], data.states[:50], strict=True)]
    )
    with torch.no_grad():
        expected = transformer.policy_outputs(torch.from_numpy(normalised)).numpy()
    np.testing.assert_allclose(mean_out, expected, atol=1e-5)


@pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning")  # the warning is the bug this test plants
def test_model_whose_trace_differs_fails_parity_and_writes_nothing(data: RealData, tmp_path: Path) -> None:
    torch.manual_seed(3)
    with pytest.raises(ExportParityError, match="'logits' differs from torch by"):
        _export(BatchSizeBranch(_obs_dim(data), 3), data, tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_tampered_onnx_weights_fail_parity(data: RealData, tmp_path: Path) -> None:
    torch.manual_seed(4)
    model = SmallMlp(_obs_dim(data), 3)
    card = _export(model, data, tmp_path)
    path = tmp_path / "best_model.onnx"
    mean, std = (a.astype(np.float32) for a in data.spec.observation_normalisation())
    wrapper = NormalizedPolicy(model, mean, std, card.norm_std_floor, [-1.0, 0.0, 1.0]).eval()
    assert verify_parity(path, wrapper, data.observations, "logits") <= 1e-5

    graph = onnx.load(str(path))
    initializer = next(i for i in graph.graph.initializer if numpy_helper.to_array(i).ndim == 2)
    weights = numpy_helper.to_array(initializer).copy()
    weights[0, 0] += 0.05
    initializer.CopyFrom(numpy_helper.from_array(weights, initializer.name))
    onnx.save(graph, str(path))
    assert file_sha256(path) != card.onnx_sha256
    with pytest.raises(ExportParityError, match="'logits' differs from torch"):
        verify_parity(path, wrapper, data.observations, "logits")


def test_export_validates_its_inputs(data: RealData, tmp_path: Path) -> None:
    model = SmallMlp(_obs_dim(data), 3)
    with pytest.raises(ValueError, match="needs >= 1000 observations, got 999"):
        _export(model, data, tmp_path, parity_observations=data.observations[:999])
    with pytest.raises(ValueError, match="norm_mean has 3 values"):
        _export(model, data, tmp_path, norm_mean=[0.0, 0.0, 0.0], norm_std=[1.0, 1.0, 1.0])
    with pytest.raises(ValueError, match="parity_observations must have shape"):
        _export(model, data, tmp_path, parity_observations=data.observations[:, :5])
    with pytest.raises(ValueError, match="no policy_outputs"):
        _export(nn.Linear(3, 3), data, tmp_path)
    unknown = {**data.spec.to_dict(), "names": ["log_return", "moon_phase"]}
    with pytest.raises(ValueError, match="unknown feature names"):
        _export(model, data, tmp_path, feature_spec=unknown)
    mean, std = data.spec.observation_normalisation()
    with pytest.raises(ModelCardError, match="differs from the feature spec's fitted statistics"):
        _export(model, data, tmp_path, norm_mean=mean + 0.5, norm_std=std)
    assert list(tmp_path.iterdir()) == []


def test_unfitted_spec_with_zero_std_uses_the_floor(data: RealData, tmp_path: Path) -> None:
    unfitted = FeatureSpec(window=WINDOW)
    obs = data.observations.copy()
    mean = obs.mean(axis=0).astype(np.float64)
    std = obs.std(axis=0).astype(np.float64)
    std[0] = 0.0
    card = _export(
        SmallMlp(obs.shape[1], 3), data, tmp_path, feature_spec=unfitted.to_dict(), norm_mean=mean, norm_std=std
    )
    assert card.norm_std[0] == 0.0 and card.norm_std_floor == STD_FLOOR
    (logits,) = _session(tmp_path / "best_model.onnx").run(["logits"], {"observation": obs})
    assert np.isfinite(logits).all()


def test_export_stores_the_training_feature_distribution_in_the_card(data: RealData, tmp_path: Path) -> None:
    frame: pd.DataFrame = load_ohlcv(sample_path("BTC/USDT-1h")).iloc[-1600:]
    train_frame = frame.iloc[: int(0.7 * len(frame))]
    distribution = training_distribution(data.spec, train_frame)
    assert distribution.names == data.spec.names
    assert distribution.rows == len(train_frame) - data.spec.warmup_bars  # warm-up rows are not counted
    torch.manual_seed(0)
    card = _export(SmallMlp(_obs_dim(data), 3), data, tmp_path, feature_distribution=distribution)
    assert card.feature_distribution == distribution
    assert ModelCard.load(tmp_path / "best_model.json").feature_distribution == distribution
    embedded = {p.key: p.value for p in onnx.load(str(tmp_path / "best_model.onnx")).metadata_props}[METADATA_KEY]
    assert ModelCard.from_json(embedded).feature_distribution == distribution
    assert _export(SmallMlp(_obs_dim(data), 3), data, tmp_path / "plain").feature_distribution is None
