"""ONNX policy runner: loads only with a matching card, acts like the exported model, never imports torch."""

from __future__ import annotations

import dataclasses
import json
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from bot.model.card import METADATA_KEY, ActionRange, ModelCard, ModelCardError, check_feature_spec, file_sha256
from bot.model.policy import OnnxPolicy, describe
from tests.test_export import RealData, SmallMlp, TinyAttention, real_data
from training.export import export_onnx

DATA_RANGE = {"start": "2025-09-01T00:00:00+00:00", "end": "2025-11-30T23:00:00+00:00"}
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def data() -> RealData:
    return real_data(seed=1)


@pytest.fixture(scope="module")
def discrete_dir(data: RealData, tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    out = tmp_path_factory.mktemp("discrete")
    export_onnx(
        SmallMlp(data.observations.shape[1], 3),
        feature_spec=data.spec.to_dict(),
        action_mapping=[-1.0, 0.0, 1.0],
        data_range=DATA_RANGE,
        parity_observations=data.observations,
        out_dir=out,
        metrics={"test": {"policy": {"sharpe": 0.7}}},
    )
    return out


@pytest.fixture(scope="module")
def continuous_dir(data: RealData, tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(1)
    out = tmp_path_factory.mktemp("continuous")
    export_onnx(
        TinyAttention(data.spec.window, data.spec.n_features, 3, 1),
        feature_spec=data.spec.to_dict(),
        action_mapping=ActionRange(-0.5, 0.5),
        data_range=DATA_RANGE,
        parity_observations=data.observations,
        out_dir=out,
    )
    return out


def _copy(source: Path, tmp_path: Path) -> Path:
    target = tmp_path / "model"
    shutil.copytree(source, target)
    return target


def _rewrite(model_dir: Path, edit: Callable[[dict[str, Any]], None]) -> None:
    """Apply `edit` to both the card file and the embedded card, then fix the sha256 (a consistent forgery)."""
    onnx_path, card_path = model_dir / "best_model.onnx", model_dir / "best_model.json"
    card = json.loads(card_path.read_text())
    edit(card)
    card["onnx"]["sha256"] = None
    graph = onnx.load(str(onnx_path))
    del graph.metadata_props[:]
    onnx.helper.set_model_props(graph, {METADATA_KEY: json.dumps(card)})
    onnx.save(graph, str(onnx_path))
    card["onnx"]["sha256"] = file_sha256(onnx_path)
    card_path.write_text(json.dumps(card))


def test_discrete_policy_acts_like_the_exported_graph(data: RealData, discrete_dir: Path) -> None:
    policy = OnnxPolicy.load(discrete_dir / "best_model.onnx")
    assert policy.sha256 == file_sha256(discrete_dir / "best_model.onnx")
    assert policy.feature_spec == data.spec
    options = policy.session.get_session_options()
    assert options.intra_op_num_threads == 1 and options.inter_op_num_threads == 1
    assert options.execution_mode == ort.ExecutionMode.ORT_SEQUENTIAL

    reference = ort.InferenceSession(str(discrete_dir / "best_model.onnx"), providers=["CPUExecutionProvider"])
    (expected,) = reference.run(["action"], {"observation": data.observations[:300]})
    actions = [policy.act(obs) for obs in data.observations[:300]]
    assert actions == expected.tolist()
    assert len(set(actions)) > 1, "fixture model should not be constant"
    targets = [policy.target_position(obs) for obs in data.observations[:300]]
    assert targets == [(-1.0, 0.0, 1.0)[a] for a in actions]
    # float64 observations are accepted and cast into the float32 buffer
    assert policy.act(data.observations[0].astype(np.float64)) == actions[0]
    assert describe(policy)["metrics"] == {"test": {"policy": {"sharpe": 0.7}}}


def test_continuous_policy_clips_to_the_action_range(data: RealData, continuous_dir: Path) -> None:
    policy = OnnxPolicy.load(continuous_dir / "best_model.onnx", continuous_dir / "best_model.json")
    reference = ort.InferenceSession(str(continuous_dir / "best_model.onnx"), providers=["CPUExecutionProvider"])
    (means,) = reference.run(["mean"], {"observation": data.observations[:200]})
    targets = np.array([policy.target_position(obs) for obs in data.observations[:200]])
    np.testing.assert_allclose(targets, np.clip(means[:, 0], -0.5, 0.5), atol=1e-7)
    assert isinstance(policy.act(data.observations[0]), float)
    assert targets.min() >= -0.5 and targets.max() <= 0.5


@pytest.mark.parametrize("fixture", ["discrete_dir", "continuous_dir"])
def test_a_batchs_targets_are_the_one_row_targets_bit_for_bit(
    data: RealData, fixture: str, request: pytest.FixtureRequest
) -> None:
    """What a backtest's flat bars decided ahead rest on (`bot.model.ahead`), for training's MLP and attention."""
    model_dir: Path = request.getfixturevalue(fixture)
    policy = OnnxPolicy.load(model_dir / "best_model.onnx")
    observations = data.observations[:300]
    batched = policy.target_positions(observations)
    single = np.array([policy.target_position(obs) for obs in observations])
    assert batched.dtype == np.float64 and batched.shape == (300,)
    assert np.array_equal(batched.view(np.uint64), single.view(np.uint64))
    assert len(set(single.tolist())) > 1, "fixture model should not be constant"
    with pytest.raises(ValueError, match=r"observations must have shape \(n, \d+\), was \(300, 3\)"):
        policy.target_positions(observations[:, :3])


def test_act_checks_the_observation_shape(data: RealData, discrete_dir: Path) -> None:
    policy = OnnxPolicy.load(discrete_dir / "best_model.onnx")
    with pytest.raises(ValueError, match=r"observation must have shape \(83,\), was \(82,\)"):
        policy.act(data.observations[0][:-1])


def test_missing_files_are_refused(discrete_dir: Path, tmp_path: Path) -> None:
    model_dir = _copy(discrete_dir, tmp_path)
    with pytest.raises(ModelCardError, match="ONNX file not found"):
        OnnxPolicy.load(model_dir / "other.onnx")
    (model_dir / "best_model.json").unlink()
    with pytest.raises(ModelCardError, match=r"model card not found: .*best_model\.json"):
        OnnxPolicy.load(model_dir / "best_model.onnx")


def test_sha_mismatch_is_refused(discrete_dir: Path, tmp_path: Path) -> None:
    model_dir = _copy(discrete_dir, tmp_path)
    with (model_dir / "best_model.onnx").open("ab") as handle:
        handle.write(b"\0")
    with pytest.raises(ModelCardError, match=r"sha256 mismatch for .*best_model\.onnx"):
        OnnxPolicy.load(model_dir / "best_model.onnx")


def test_card_file_differing_from_the_embedded_card_is_refused(discrete_dir: Path, tmp_path: Path) -> None:
    model_dir = _copy(discrete_dir, tmp_path)
    card_path = model_dir / "best_model.json"
    card = json.loads(card_path.read_text())
    card["metrics"] = {"test": {"policy": {"sharpe": 9.9}}}
    card_path.write_text(json.dumps(card))
    with pytest.raises(ModelCardError, match=r"differ in \['metrics'\]"):
        OnnxPolicy.load(model_dir / "best_model.onnx")


def test_missing_embedded_card_is_refused(discrete_dir: Path, tmp_path: Path) -> None:
    model_dir = _copy(discrete_dir, tmp_path)
    onnx_path = model_dir / "best_model.onnx"
    graph = onnx.load(str(onnx_path))
    del graph.metadata_props[:]
    onnx.save(graph, str(onnx_path))
    card = ModelCard.load(model_dir / "best_model.json")
    dataclasses.replace(card, onnx_sha256=file_sha256(onnx_path)).save(model_dir / "best_model.json")
    with pytest.raises(ModelCardError, match="has no embedded model card"):
        OnnxPolicy.load(onnx_path)


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (
            lambda c: c["feature_spec"].update(names=["log_return", "moon_phase"]),
            "feature spec cannot be computed here: unknown feature names",
        ),
        (lambda c: c["feature_spec"].update(version="features-v0"), "feature spec version 'features-v0'"),
        (
            lambda c: (
                c["observation"].update(shape=[84])
                or c["observation"]["normalization"].update(mean=[0.0] * 84, std=[1.0] * 84)
            ),
            r"feature spec gives observation shape \[83\]",
        ),
        (
            lambda c: c["observation"]["normalization"].update(mean=[0.1] * 83),
            "differs from the feature spec's fitted statistics",
        ),
        (lambda c: c["onnx"].update(input_name="obs"), r"graph inputs \['observation'\] != card input \['obs'\]"),
        (lambda c: c["onnx"].update(output_names=["action", "probs"]), r"card outputs \['probs'\] are not in"),
        (lambda c: c["action"].update(mapping=[-1.0, -0.5, 0.5, 1.0]), r"output 'logits' has shape \['batch', 3\]"),
        (lambda c: c["observation"].update(dtype="float64"), "is tensor\\(float\\), card says tensor\\(double\\)"),
    ],
)
def test_inconsistent_cards_are_refused(discrete_dir: Path, tmp_path: Path, edit: Any, message: str) -> None:
    model_dir = _copy(discrete_dir, tmp_path)
    _rewrite(model_dir, edit)
    ModelCard.load(model_dir / "best_model.json").verify_onnx(model_dir / "best_model.onnx")  # sha is right
    with pytest.raises(ModelCardError, match=message):
        OnnxPolicy.load(model_dir / "best_model.onnx")


def test_check_feature_spec_accepts_the_real_spec(data: RealData, discrete_dir: Path) -> None:
    card = ModelCard.load(discrete_dir / "best_model.json")
    assert check_feature_spec(card) == data.spec


@pytest.mark.integration
def test_loading_and_acting_never_imports_torch(data: RealData, discrete_dir: Path) -> None:
    np.save(discrete_dir / "obs.npy", data.observations[:5])
    code = (
        "import sys, numpy as np\n"
        "from bot.model.policy import OnnxPolicy\n"
        f"policy = OnnxPolicy.load({str(discrete_dir / 'best_model.onnx')!r})\n"
        f"obs = np.load({str(discrete_dir / 'obs.npy')!r})\n"
        "print([policy.target_position(o) for o in obs])\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\n"
        "assert 'training' not in sys.modules, 'training was imported'\n"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    targets = json.loads(result.stdout.strip().splitlines()[-1])
    policy = OnnxPolicy.load(discrete_dir / "best_model.onnx")
    assert targets == [policy.target_position(o) for o in data.observations[:5]]
