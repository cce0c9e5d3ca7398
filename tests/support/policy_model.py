"""Build small exported policies (ONNX graph + model card) with `onnx.helper`, without torch, for daemon tests.

The graph is what `training.export` produces for an MLP: ``(obs - mean) / max(std, floor)`` inside the graph,
then dense layers (ReLU between them), giving ``logits`` and ``action = argmax(logits)`` (int64). The numpy
twin `MlpWeights.act_normalised` acts on *normalised* observations, as the torch model does inside the
training env, so a test can run training's evaluation without torch.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import onnx
import pandas as pd
from onnx import TensorProto, helper, numpy_helper

from bot.model.card import METADATA_KEY, ModelCard, file_sha256
from bot.model.drift import FeatureDistribution
from bot.model.features import STD_FLOOR, FeatureSpec, candle_arrays, compute_features, fit_normalisation

DATA_RANGE = {"start": "2017-08-17T04:00:00+00:00", "end": "2023-12-31T23:00:00+00:00"}


@dataclass(frozen=True)
class MlpWeights:
    """Dense layers of a policy acting on normalised observations."""

    layers: tuple[tuple[npt.NDArray[np.float32], npt.NDArray[np.float32]], ...]

    def act_normalised(self, observation: npt.NDArray[np.float32]) -> int:
        """Return the argmax action for one normalised observation (float32 arithmetic like onnxruntime)."""
        x = observation.astype(np.float32)[None, :]
        for i, (w, b) in enumerate(self.layers):
            x = x @ w + b
            if i < len(self.layers) - 1:
                x = np.maximum(x, 0)
        return int(np.argmax(x[0]))


def fitted_spec(frame: pd.DataFrame, train_rows: int, window: int = 16) -> FeatureSpec:
    """Return the default feature spec with `window`, normalisation fitted on the first `train_rows` bars."""
    spec = FeatureSpec(window=window)
    raw, valid = compute_features(spec, *candle_arrays(frame.iloc[:train_rows]))
    return fit_normalisation(spec, raw, valid)


def random_weights(
    spec: FeatureSpec, actions: int, hidden: Sequence[int] = (), *, seed: int = 0, state_gain: float = 0.0
) -> MlpWeights:
    """Return seeded random dense layers; `state_gain` adds a weight on the position input (hysteresis)."""
    rng = np.random.default_rng(seed)
    sizes = [spec.observation_size, *hidden, actions]
    layers = []
    for i, (n_in, n_out) in enumerate(itertools.pairwise(sizes)):
        w = (rng.standard_normal((n_in, n_out)) / np.sqrt(n_in)).astype(np.float32)
        if i == 0 and not hidden and state_gain:
            position = spec.window * spec.n_features
            w[position, :] = np.linspace(-state_gain, state_gain, n_out, dtype=np.float32)
        b = np.zeros(n_out, dtype=np.float32)
        layers.append((w, b))
    return MlpWeights(tuple(layers))


def export_policy(
    out_dir: Path,
    spec: FeatureSpec,
    weights: MlpWeights,
    action_mapping: Sequence[float],
    *,
    name: str = "best_model",
    feature_distribution: FeatureDistribution | None = None,
    data_range: Mapping[str, str] | None = None,
    metrics: Mapping[str, Any] | None = None,
) -> Path:
    """Write `<name>.onnx` (card embedded) and `<name>.json` under `out_dir`; return the ONNX path.

    `data_range` is the card's training data (default: no timeframe or symbol, so no data check applies)."""
    mean, std = spec.observation_normalisation()
    size = spec.observation_size
    nodes = [
        helper.make_node("Sub", ["observation", "norm_mean"], ["centred"]),
        helper.make_node("Div", ["centred", "norm_std"], ["h0"]),
    ]
    initializers = [
        numpy_helper.from_array(mean.astype(np.float32), "norm_mean"),
        numpy_helper.from_array(np.maximum(std, STD_FLOOR).astype(np.float32), "norm_std"),
    ]
    current = "h0"
    for i, (w, b) in enumerate(weights.layers):
        initializers += [numpy_helper.from_array(w, f"w{i}"), numpy_helper.from_array(b, f"b{i}")]
        out = "logits" if i == len(weights.layers) - 1 else f"z{i}"
        nodes.append(helper.make_node("Gemm", [current, f"w{i}", f"b{i}"], [out]))
        if out != "logits":
            nodes.append(helper.make_node("Relu", [out], [f"h{i + 1}"]))
            current = f"h{i + 1}"
    nodes.append(helper.make_node("ArgMax", ["logits"], ["action"], axis=1, keepdims=0))
    graph = helper.make_graph(
        nodes,
        "policy",
        [helper.make_tensor_value_info("observation", TensorProto.FLOAT, ["batch", size])],
        [
            helper.make_tensor_value_info("action", TensorProto.INT64, ["batch"]),
            helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", len(action_mapping)]),
        ],
        initializers,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    card = ModelCard(
        name=name,
        feature_spec=spec.to_dict(),
        observation_shape=(size,),
        action_space="discrete",
        action_mapping=tuple(float(a) for a in action_mapping),
        norm_mean=tuple(float(v) for v in mean),
        norm_std=tuple(float(v) for v in std),
        norm_std_floor=STD_FLOOR,
        data_range=DATA_RANGE if data_range is None else dict(data_range),
        run_id="test-run",
        created_at="2025-01-01T00:00:00+00:00",
        feature_distribution=feature_distribution,
        metrics=dict(metrics or {}),
    )
    helper.set_model_props(model, {METADATA_KEY: card.without_sha().to_json()})
    out_dir.mkdir(parents=True, exist_ok=True)
    onnx_path = out_dir / f"{name}.onnx"
    onnx.save(model, str(onnx_path))
    dataclasses.replace(card, onnx_sha256=file_sha256(onnx_path)).save(out_dir / f"{name}.json")
    return onnx_path


def corrupt_card(onnx_path: Path) -> None:
    """Make the card beside `onnx_path` invalid JSON."""
    onnx_path.with_suffix(".json").write_text("{not json")


def mismatch_sha(onnx_path: Path) -> None:
    """Make the card's sha256 disagree with the ONNX file."""
    card_path = onnx_path.with_suffix(".json")
    card = json.loads(card_path.read_text())
    card["onnx"]["sha256"] = "0" * 64
    card_path.write_text(json.dumps(card))
