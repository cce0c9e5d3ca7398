"""The trained policy under analysis: loaded from `.pt` or `.onnx`, normalised observations in, decisions out."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import structlog

from bot.model.card import ActionRange, ModelCard, ModelCardError, card_path_for, check_feature_spec, file_sha256
from bot.model.features import FeatureSpec

log = structlog.get_logger()

FloatArray = npt.NDArray[np.float64]
ObsArray = npt.NDArray[np.float32]


class AnalysisError(RuntimeError):
    """The analysis cannot run (missing file, unusable model or data); the message names what."""


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
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:  # a damaged file fails inside pickle or torch's zip reader, with their own types
        raise AnalysisError(f"{path} is not a readable torch checkpoint ({type(e).__name__}: {e})") from e
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

            from bot.model.policy import session_options

            card = ModelCard.load(card_path_for(path))
            card.verify_onnx(path)
            spec = check_feature_spec(card)
            try:
                session = ort.InferenceSession(str(path), session_options(), providers=["CPUExecutionProvider"])
            except Exception as e:  # onnxruntime raises its own exception types for unreadable graphs
                first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
                raise AnalysisError(f"onnxruntime cannot load {path}: {first}") from e
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
