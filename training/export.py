"""Export a trained policy to ONNX with its observation normalisation inside the graph, plus its model card.

The graph takes raw observations ``observation`` (float32, shape ``(batch, *observation_shape)``, dynamic
batch), computes ``(obs - mean) / max(std, STD_FLOOR)`` exactly as `bot.model.features.normalise` does, runs the
model's ``policy_outputs`` on that, and returns two outputs: ``action`` (int64 argmax of the logits for a
discrete policy, or the mean clipped to the action range for a continuous one) and the raw ``logits`` /
``mean``. The model card is embedded in the file's ``metadata_props`` (without its own sha256) and written
beside it as ``<name>.json`` with the sha256 of the final file. Before anything lands in ``out_dir`` the file
is run with onnxruntime on the parity observations and compared with torch; a difference above the tolerance
raises `ExportParityError` and writes nothing.

The exporter is torch's TorchScript-based one (``dynamo=False``): the torch.export-based default needs
``onnxscript``, which this project does not depend on.
"""

from __future__ import annotations

import dataclasses
import importlib.metadata
import json
import math
import tempfile
import warnings
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import onnx
import onnxruntime as ort
import structlog
import torch
from torch import nn

from bot.clock import utc_now
from bot.model.card import (
    METADATA_KEY,
    ActionRange,
    ModelCard,
    card_path_for,
    check_feature_spec,
    file_sha256,
)
from bot.model.drift import FeatureDistribution, fit_feature_distribution
from bot.model.features import STD_FLOOR, FeatureSpec, candle_arrays, compute_features

log = structlog.get_logger()

INPUT_NAME = "observation"
"""Name of the graph's observation input."""
ACTION_OUTPUT = "action"
"""Name of the graph's action output."""
MIN_PARITY_OBSERVATIONS = 1000
"""Fewest observations the torch/onnxruntime parity check accepts."""


class ExportParityError(RuntimeError):
    """The exported ONNX graph does not reproduce the torch model's outputs within tolerance."""


class NormalizedPolicy(nn.Module):
    """Normalise raw observations, run the model's policy head, and return (action, raw outputs)."""

    def __init__(
        self,
        model: nn.Module,
        norm_mean: npt.NDArray[np.float32],
        norm_std: npt.NDArray[np.float32],
        std_floor: float,
        action_mapping: Sequence[float] | ActionRange,
    ) -> None:
        super().__init__()
        self.model = model
        self.register_buffer("mean", torch.as_tensor(norm_mean, dtype=torch.float32))
        self.register_buffer("scale", torch.as_tensor(np.maximum(norm_std, np.float32(std_floor)), dtype=torch.float32))
        self.is_discrete = not isinstance(action_mapping, ActionRange)
        self.low = action_mapping.low if isinstance(action_mapping, ActionRange) else -1.0
        self.high = action_mapping.high if isinstance(action_mapping, ActionRange) else 1.0

    def forward(self, obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Return (action, logits or mean) for a batch of raw observations."""
        normalised = (obs - self.get_buffer("mean")) / self.get_buffer("scale")
        policy_outputs: Callable[[torch.Tensor], torch.Tensor] = self.model.policy_outputs  # type: ignore[assignment]
        raw = policy_outputs(normalised)
        if self.is_discrete:
            return torch.argmax(raw, dim=-1), raw
        return torch.clamp(raw, self.low, self.high), raw


def export_onnx(
    model: nn.Module,
    *,
    feature_spec: Mapping[str, Any],
    action_mapping: Sequence[float] | ActionRange,
    data_range: Mapping[str, str],
    parity_observations: npt.ArrayLike,
    out_dir: str | Path,
    norm_mean: npt.ArrayLike | None = None,
    norm_std: npt.ArrayLike | None = None,
    observation_shape: int | Sequence[int] | None = None,
    name: str = "best_model",
    run_id: str | None = None,
    run_url: str | None = None,
    config: Mapping[str, Any] | object | None = None,
    model_config: Mapping[str, Any] | object | None = None,
    code_version: str | None = None,
    metrics: Mapping[str, Any] | None = None,
    opset: int = 17,
    std_floor: float | None = None,
    tolerance: float = 1e-5,
    feature_distribution: FeatureDistribution | None = None,
) -> ModelCard:
    """Export `model` (with `.policy_outputs(obs)`) to `<out_dir>/<name>.onnx` with its card; return the card.

    `feature_spec` is `bot.model.features.FeatureSpec.to_dict()`; the observation shape and, unless given, the
    normalisation statistics come from it (`FeatureSpec.observation_normalisation`). `parity_observations`
    are RAW observations (as the daemon will feed them). Also writes `<name>.json` (the card), `<name>.pt`
    (state_dict, model config, normalisation) and, when `config` (a mapping or a dataclass) is given,
    `config.json`. `feature_distribution` (see `training_distribution`, from the training split only) goes into
    the card for the daemon's drift monitor; without it the card has none and the daemon runs without drift
    monitoring.

    Raises:
        ValueError: inconsistent shapes or statistics, or fewer than 1000 parity observations.
        ModelCardError: the feature spec cannot be computed by `bot.model.features` or disagrees with the card.
        ExportParityError: onnxruntime and torch disagree by more than `tolerance`.
    """
    if not hasattr(model, "policy_outputs"):
        raise ValueError(f"model {type(model).__name__} has no policy_outputs(obs) method to export")
    spec = FeatureSpec.from_dict(feature_spec)
    if observation_shape is None:
        shape: tuple[int, ...] = spec.observation_shape
    else:
        shape = (observation_shape,) if isinstance(observation_shape, int) else tuple(observation_shape)
    if norm_mean is None or norm_std is None:
        if norm_mean is not None or norm_std is not None:
            raise ValueError("pass both norm_mean and norm_std, or neither (to use the feature spec's)")
        norm_mean, norm_std = spec.observation_normalisation()
    floor = STD_FLOOR if std_floor is None else float(std_floor)
    mean = _statistic(norm_mean, shape, "norm_mean")
    std = _statistic(norm_std, shape, "norm_std")
    if (std < 0).any():
        raise ValueError("norm_std must be >= 0 everywhere")
    observations = np.asarray(parity_observations, dtype=np.float32)
    if observations.ndim != len(shape) + 1 or observations.shape[1:] != shape:
        raise ValueError(
            f"parity_observations must have shape (n, {', '.join(map(str, shape))}), was {observations.shape}"
        )
    if len(observations) < MIN_PARITY_OBSERVATIONS:
        raise ValueError(f"parity check needs >= {MIN_PARITY_OBSERVATIONS} observations, got {len(observations)}")
    if not np.isfinite(observations).all():
        raise ValueError("parity_observations contain NaN or inf")

    config_json = _jsonable(config) if config is not None else {}
    if not isinstance(config_json, dict):
        raise ValueError(f"config must be a mapping or a dataclass, was {type(config).__name__}")
    is_discrete = not isinstance(action_mapping, ActionRange)
    raw_output = "logits" if is_discrete else "mean"
    card = ModelCard(
        name=name,
        feature_spec=dict(feature_spec),
        observation_shape=shape,
        action_space="discrete" if is_discrete else "continuous",
        action_mapping=action_mapping if isinstance(action_mapping, ActionRange) else tuple(map(float, action_mapping)),
        norm_mean=tuple(float(v) for v in mean.ravel()),
        norm_std=tuple(float(v) for v in std.ravel()),
        norm_std_floor=floor,
        data_range=dict(data_range),
        onnx_input_name=INPUT_NAME,
        onnx_output_names=(ACTION_OUTPUT, raw_output),
        onnx_action_output=ACTION_OUTPUT,
        onnx_opset=opset,
        run_id=run_id,
        run_url=run_url,
        training_config=config_json,
        code_version=code_version or _package_version(),
        metrics=_jsonable(dict(metrics or {})),
        created_at=utc_now().isoformat(timespec="seconds"),
        feature_distribution=feature_distribution,
    )
    check_feature_spec(card)
    card_json = card.without_sha().to_json()  # fail on a non-JSON card before the slow export

    was_training = model.training
    policy = NormalizedPolicy(model, mean, std, floor, action_mapping).eval()
    target_dir = Path(out_dir)
    target_dir.mkdir(parents=True, exist_ok=True)
    try:
        with tempfile.TemporaryDirectory(dir=target_dir, prefix=f".{name}-export-") as scratch:
            staged = Path(scratch) / f"{name}.onnx"
            _torch_export(policy, torch.from_numpy(observations[:1].copy()), staged, raw_output, opset)
            _embed_card(staged, card_json)
            max_diff = verify_parity(staged, policy, observations, raw_output, tolerance)
            onnx_path = target_dir / f"{name}.onnx"
            staged.replace(onnx_path)
    finally:
        model.train(was_training)

    card = dataclasses.replace(card, onnx_sha256=file_sha256(onnx_path))
    card.save(target_dir / f"{name}.json")
    torch.save(
        {
            "state_dict": model.state_dict(),
            "model_config": _jsonable(model_config) if model_config is not None else _model_config(model),
            "observation_shape": list(shape),
            "norm_mean": mean,
            "norm_std": std,
            "std_floor": floor,
            "card": card.to_dict(),
        },
        target_dir / f"{name}.pt",
    )
    if config is not None:
        (target_dir / "config.json").write_text(json.dumps(config_json, indent=2) + "\n")
    log.info(
        "onnx_exported",
        path=str(onnx_path),
        sha256=card.onnx_sha256,
        parity_max_abs_diff=max_diff,
        parity_observations=len(observations),
    )
    return card


def amend_card(onnx_path: str | Path, metrics: Mapping[str, Any]) -> ModelCard:
    """Add `metrics` blocks to an exported model's card, in the JSON beside it, the ONNX file and the checkpoint.

    What is known only after the export goes on the card this way: the other walk-forward folds, and the PBO and
    DSR of the sweep the model came from. The file's sha256 is checked first (a card that does not match its
    file is not amended) and recomputed after the new card is embedded; each file is replaced atomically.
    Blocks already on the card under the same keys are replaced; the rest stay.
    """
    path = Path(onnx_path)
    card_file = card_path_for(path)
    card = ModelCard.load(card_file)
    card.verify_onnx(path)
    amended = dataclasses.replace(card, metrics={**card.metrics, **_jsonable(dict(metrics))})
    staged = path.with_name(f".{path.name}.amend")
    try:
        staged.write_bytes(path.read_bytes())
        _embed_card(staged, amended.without_sha().to_json())
        staged.replace(path)
    finally:
        staged.unlink(missing_ok=True)
    amended = dataclasses.replace(amended, onnx_sha256=file_sha256(path))
    amended.save(card_file)
    checkpoint_path = path.with_suffix(".pt")
    if checkpoint_path.exists():
        # Our own file, written by export_onnx (numpy arrays and the card in it: not weights-only).
        checkpoint = torch.load(checkpoint_path, map_location="cpu", weights_only=False)
        checkpoint["card"] = amended.to_dict()
        staged_checkpoint = checkpoint_path.with_name(f".{checkpoint_path.name}.amend")
        torch.save(checkpoint, staged_checkpoint)
        staged_checkpoint.replace(checkpoint_path)
    log.info("model_card_amended", path=str(card_file), blocks=sorted(metrics), sha256=amended.onnx_sha256)
    return amended


def training_distribution(spec: FeatureSpec, train_frame: Any) -> FeatureDistribution:
    """Return the distribution of each raw feature over the valid rows of the training split's candle frame."""
    raw, valid = compute_features(spec, *candle_arrays(train_frame))
    return fit_feature_distribution(spec.names, raw, valid)


def verify_parity(
    onnx_path: str | Path,
    policy: nn.Module,
    observations: npt.NDArray[np.float32],
    raw_output: str,
    tolerance: float = 1e-5,
) -> float:
    """Run `observations` through onnxruntime and torch; return the max abs difference of the raw outputs.

    Raises:
        ExportParityError: the raw outputs differ by more than `tolerance`, or a discrete action differs
            where torch's best two logits are more than `2 * tolerance` apart.
    """
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    try:
        session = ort.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])
        onnx_action, onnx_raw = session.run([ACTION_OUTPUT, raw_output], {INPUT_NAME: observations})
    except Exception as e:  # onnxruntime raises its own exception types for broken graphs
        raise ExportParityError(f"onnxruntime cannot run {onnx_path}: {e}") from e
    with torch.no_grad():
        torch_action, torch_raw = (t.numpy() for t in policy(torch.from_numpy(observations)))
    if onnx_raw.shape != torch_raw.shape:
        raise ExportParityError(f"ONNX output {raw_output!r} has shape {onnx_raw.shape}, torch {torch_raw.shape}")
    diff = np.abs(onnx_raw.astype(np.float64) - torch_raw.astype(np.float64))
    max_diff = float(diff.max()) if diff.size else 0.0
    if not math.isfinite(max_diff) or max_diff > tolerance:
        worst = int(np.unravel_index(np.nanargmax(np.nan_to_num(diff, nan=np.inf)), diff.shape)[0])
        raise ExportParityError(
            f"ONNX output {raw_output!r} differs from torch by {max_diff:.3g} > {tolerance:g} "
            f"(worst at observation {worst} of {len(observations)}) in {onnx_path}"
        )
    if torch_raw.ndim == 2 and torch_action.ndim == 1 and torch_raw.shape[1] > 1:
        top2 = np.sort(torch_raw, axis=1)[:, -2:]
        decisive = (top2[:, 1] - top2[:, 0]) > 2 * tolerance
        wrong = decisive & (onnx_action != torch_action)
    else:
        wrong = np.abs(onnx_action.astype(np.float64) - torch_action.astype(np.float64)).reshape(len(diff), -1)
        wrong = (wrong > tolerance).any(axis=1)
    if wrong.any():
        raise ExportParityError(
            f"ONNX output {ACTION_OUTPUT!r} differs from torch on {int(wrong.sum())} of {len(observations)} "
            f"observations (first at {int(np.argmax(wrong))}) in {onnx_path}"
        )
    return max_diff


def _torch_export(policy: nn.Module, example: torch.Tensor, path: Path, raw_output: str, opset: int) -> None:
    batch = {0: "batch"}
    with warnings.catch_warnings():
        # The TorchScript exporter is deprecated in favour of torch.export, which needs onnxscript (not a
        # dependency here); it is still supported and produces the same graph for these models.
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(
            policy,
            (example,),
            str(path),
            input_names=[INPUT_NAME],
            output_names=[ACTION_OUTPUT, raw_output],
            dynamic_axes={INPUT_NAME: batch, ACTION_OUTPUT: batch, raw_output: batch},
            opset_version=opset,
            do_constant_folding=True,
            dynamo=False,
        )


def _embed_card(path: Path, card_json: str) -> None:
    model = onnx.load(str(path))
    del model.metadata_props[:]
    onnx.helper.set_model_props(model, {METADATA_KEY: card_json})
    model.producer_name = "ai-trading"
    onnx.checker.check_model(model)
    onnx.save(model, str(path))


def _statistic(values: npt.ArrayLike, shape: tuple[int, ...], label: str) -> npt.NDArray[np.float32]:
    array = np.asarray(values, dtype=np.float32)
    if array.size != math.prod(shape):
        raise ValueError(
            f"{label} has {array.size} values but the observation shape {list(shape)} needs {math.prod(shape)}"
        )
    if not np.isfinite(array).all():
        raise ValueError(f"{label} contains NaN or inf")
    return array.reshape(shape)


def _model_config(model: nn.Module) -> dict[str, Any] | None:
    config = getattr(model, "config", None)
    if config is not None and dataclasses.is_dataclass(config) and not isinstance(config, type):
        return _jsonable(dataclasses.asdict(config))  # type: ignore[no-any-return]
    return None


def _package_version() -> str:
    try:
        return f"ai-trading {importlib.metadata.version('ai-trading')}"
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def _jsonable(value: Any) -> Any:
    """Convert dataclasses, tuples, paths and numpy scalars into plain JSON values."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return _jsonable(dataclasses.asdict(value))
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.generic):
        return _jsonable(value.item())
    if isinstance(value, np.ndarray):
        return _jsonable(value.tolist())
    if isinstance(value, float) and not math.isfinite(value):
        return None if math.isnan(value) else ("inf" if value > 0 else "-inf")
    if isinstance(value, str | int | float | bool) or value is None:
        return value
    return str(value)
