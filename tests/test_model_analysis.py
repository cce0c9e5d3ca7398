"""training.analysis.cli on a real tiny trained policy and on a hand-built policy with a known answer."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import torch

from adapters.costs import CostModel
from adapters.data.ohlcv import load_ohlcv
from adapters.data.sample import sample_path
from tests.support.training_runs import train_tiny_run
from training.analysis import cli as model_analysis
from training.analysis.analyses import analyse_features, analyse_sensitivity, pca_2d
from training.analysis.cli import run_analysis
from training.analysis.data import collect_observations
from training.analysis.policy import AnalysedPolicy, AnalysisError, load_policy
from training.env import EnvConfig
from training.models import ModelConfig, build_actor_critic

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# shap configures matplotlib colormaps on import with calls matplotlib plans to deprecate.
pytestmark = pytest.mark.filterwarnings("ignore::PendingDeprecationWarning")


@pytest.fixture(scope="session")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real run's export folder (best_model.pt/.onnx/.json, config.json) and its run directory beside it."""
    root = tmp_path_factory.mktemp("analysis-run")
    train_tiny_run(root, "run-x", 3, export_dir=root / "models")
    return root


def _assert_png(path: Path) -> None:
    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE, path
    width, height = struct.unpack(">II", data[16:24])
    assert width > 100 and height > 100


def test_all_analyses_write_charts_and_consistent_json(trained: Path, tmp_path: Path) -> None:
    models = trained / "models"
    path = run_analysis(models / "best_model.pt", models / "config.json", output_dir=tmp_path, max_bars=300, samples=60)
    result = json.loads(path.read_text())
    spec = load_policy(models / "best_model.pt").spec
    assert (
        result["data"]["split"] == "test" and result["data"]["observations"] == 299
    )  # the last bar is never decided on
    feature = result["analyses"]["feature"]
    assert feature["method"].startswith("shap.GradientExplainer")
    names = [f["name"] for f in feature["features"]]
    assert names == [*spec.names, *spec.state_names]
    assert sum(f["shap_share"] for f in feature["features"]) == pytest.approx(1.0)
    assert sum(f["permutation_share"] for f in feature["features"]) == pytest.approx(1.0)
    assert np.asarray(feature["by_lag"]["values"]).shape == (spec.window, spec.n_features)
    assert sorted(feature["ranking"]) == sorted(names)
    assert feature["shap_seconds"] < 30

    action = result["analyses"]["action"]
    shares = [v["share"] for v in action["action_distribution"].values()]
    assert sum(shares) == pytest.approx(1.0)
    assert action["mean_position"] == pytest.approx(action["action_distribution"]["+1"]["share"])
    assert sum(h["bars"] for h in action["by_hour_utc"]) == 299
    assert len(action["by_trend_quintile"]) == 5

    latent = result["analyses"]["latent"]
    assert latent["latent_dim"] == 64 and latent["points"] == 299
    ratios = latent["explained_variance_ratio"]
    assert ratios == sorted(ratios, reverse=True) and 0 < sum(ratios) <= 1 + 1e-9

    sensitivity = result["analyses"]["sensitivity"]
    assert set(sensitivity["perturbations"]) == {"last_return", "recent_returns", "volatility"}
    entry = sensitivity["perturbations"]["last_return"]
    zero = sensitivity["shocks_sigma"].index(0.0)
    assert entry["delta_vs_unshocked"][zero] == pytest.approx(0.0, abs=1e-9)
    assert entry["decision_change_rate"][zero] == 0.0

    for kind in ("feature", "action", "latent", "sensitivity"):
        _assert_png(tmp_path / result["analyses"][kind]["chart"])


def test_observations_are_the_evaluations_own(trained: Path, tmp_path: Path) -> None:
    """Over the whole test split, the analysed policy holds a position exactly as often as the evaluation said."""
    models = trained / "models"
    path = run_analysis(models / "best_model.pt", models / "config.json", ["action"], tmp_path, max_bars=0)
    action = json.loads(path.read_text())["analyses"]["action"]
    summary = json.loads((trained / "outputs" / "run-x" / "summary.json").read_text())["test"]["policy"]
    assert action["bars"] == summary["bars"] - 1  # the last bar's decision is never filled
    assert action["action_distribution"]["+1"]["share"] == pytest.approx(summary["exposure"], abs=1e-12)


def test_onnx_model_matches_torch_and_degrades_without_weights(trained: Path, tmp_path: Path) -> None:
    models = trained / "models"
    torch_policy = load_policy(models / "best_model.pt")
    with_weights = load_policy(models / "best_model.onnx")
    assert with_weights.torch_model is not None  # the .pt beside it belongs to this ONNX file
    alone = tmp_path / "onnx-only"
    alone.mkdir()
    for name in ("best_model.onnx", "best_model.json"):
        shutil.copy(models / name, alone / name)
    onnx_policy = load_policy(alone / "best_model.onnx")
    assert onnx_policy.torch_model is None
    frame = load_ohlcv(sample_path()).iloc[-400:]
    data = collect_observations(torch_policy, frame, EnvConfig(window=torch_policy.spec.window), CostModel())
    np.testing.assert_allclose(onnx_policy.outputs(data.obs), torch_policy.outputs(data.obs), atol=1e-4)

    result = json.loads(
        run_analysis(
            alone / "best_model.onnx",
            models / "config.json",
            ["feature", "latent"],
            tmp_path / "out",
            max_bars=200,
            samples=40,
        ).read_text()
    )
    assert result["analyses"]["feature"]["method"] == "permutation only"
    assert "torch weights" in result["analyses"]["feature"]["shap_skipped"]
    assert "torch weights" in result["analyses"]["latent"]["skipped"]


def _last_return_policy(spec_source: AnalysedPolicy, gain: float = 4.0) -> AnalysedPolicy:
    """A policy whose long-vs-flat logit gap is 2·gain·tanh(normalised last log return), nothing else."""
    spec = spec_source.spec
    model = build_actor_critic(spec.observation_size, gym.spaces.Discrete(2), ModelConfig(hidden_sizes=(1,)))
    column = (spec.window - 1) * spec.n_features + spec.names.index("log_return")
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.zero_()
        model.actor_body[0].weight[0, column] = 1.0
        model.actor_head.weight[:, 0] = torch.tensor([-gain, gain])
    return AnalysedPolicy(spec, (0.0, 1.0), torch_model=model.eval())


def test_sensitivity_and_importance_of_a_known_policy(trained: Path, tmp_path: Path) -> None:
    policy = _last_return_policy(load_policy(trained / "models" / "best_model.pt"))
    frame = load_ohlcv(sample_path()).iloc[-500:]
    data = collect_observations(policy, frame, EnvConfig(window=policy.spec.window), CostModel())

    result = analyse_sensitivity(policy, data, tmp_path, samples=200)
    last = result["perturbations"]["last_return"]
    positions = np.asarray(last["mean_expected_position"])
    assert np.all(np.diff(positions) > 0)  # more recent return → more long
    assert last["slope_per_sigma"] > 0.1
    assert result["perturbations"]["recent_returns"]["slope_per_sigma"] == pytest.approx(last["slope_per_sigma"])
    volatility = result["perturbations"]["volatility"]
    assert volatility["slope_per_sigma"] == pytest.approx(0.0, abs=1e-9)
    assert max(volatility["decision_change_rate"]) == 0.0
    probabilities = last["mean_action_probabilities"]
    assert probabilities["+1"][-1] > probabilities["+1"][0]

    importance = analyse_features(policy, data, tmp_path, samples=60, background=30)
    by_name = {f["name"]: f for f in importance["features"]}
    assert by_name["log_return"]["shap_share"] > 0.999
    assert by_name["log_return"]["permutation_share"] == pytest.approx(1.0)
    assert all(f["permutation_delta_position"] == 0.0 for n, f in by_name.items() if n != "log_return")
    assert importance["ranking"][0] == "log_return"
    lags = np.asarray(importance["by_lag"]["values"])
    assert lags[-1, policy.spec.names.index("log_return")] == pytest.approx(lags.sum())


def test_pca_finds_the_dominant_direction() -> None:
    rng = np.random.default_rng(0)
    t = rng.normal(size=(200, 1))
    points = t @ np.array([[1.0, 2.0, -3.0, 0.5]]) + 1e-3 * rng.normal(size=(200, 4))
    coords, ratios = pca_2d(points)
    assert coords.shape == (200, 2)
    assert ratios[0] > 0.999
    assert abs(np.corrcoef(coords[:, 0], t[:, 0])[0, 1]) > 0.999


def test_cli_logs_an_offline_wandb_analysis_run(
    trained: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    models = trained / "models"
    code = model_analysis.main(
        [
            "--model-path",
            str(models / "best_model.pt"),
            "--config-path",
            str(models / "config.json"),
            "--analysis-type",
            "sensitivity",
            "--log-to-wandb",
            "--max-bars",
            "200",
            "--output-dir",
            str(tmp_path),
        ]
    )
    assert code == 0
    printed = Path(capsys.readouterr().out.strip())
    result = json.loads(printed.read_text())
    assert list(result["analyses"]) == ["sensitivity"]
    assert result["wandb"]["mode"] == "offline"
    run_files = list((tmp_path / "wandb").glob(f"offline-run-*-{result['wandb']['run_id']}/run-*.wandb"))
    assert len(run_files) == 1 and run_files[0].stat().st_size > 0
    media = list((tmp_path / "wandb").glob("offline-run-*/files/media/images/analysis/*.png"))
    assert media, "the chart should be logged as a wandb.Image"


def test_errors_are_clear(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert model_analysis.main(["--model-path", str(tmp_path / "missing.pt"), "--output-dir", str(tmp_path)]) == 1
    assert "model file not found" in capsys.readouterr().err
    assert model_analysis.main(["--analysis-type", "everything"]) == 2
    with pytest.raises(AnalysisError, match="unknown analysis types"):
        run_analysis(tmp_path / "missing.pt", analysis_types=["colour"], output_dir=tmp_path)


def _analyze_cli(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    return subprocess.run(
        [sys.executable, "-m", "bot.cli", "analyze", *args], capture_output=True, text=True, timeout=120, env=env
    )


def test_a_corrupt_model_is_one_line_and_exit_1(trained: Path, tmp_path: Path) -> None:
    damaged = tmp_path / "damaged"
    shutil.copytree(trained / "models", damaged)
    # An ONNX file that is garbage although its card's sha256 matches it (the card was rewritten to fit).
    onnx = damaged / "best_model.onnx"
    onnx.write_bytes(b"not an onnx graph" * 64)
    card = json.loads((damaged / "best_model.json").read_text())
    card["onnx"]["sha256"] = hashlib.sha256(onnx.read_bytes()).hexdigest()
    (damaged / "best_model.json").write_text(json.dumps(card))
    # And a torch checkpoint cut short.
    pt = damaged / "best_model.pt"
    pt.write_bytes((trained / "models" / "best_model.pt").read_bytes()[:500])
    for model, says in ((onnx, "onnxruntime cannot load"), (pt, "is not a readable torch checkpoint")):
        result = _analyze_cli("--model-path", str(model), "--output-dir", str(tmp_path / "out"))
        assert result.returncode == 1, result.stderr
        (line,) = result.stderr.splitlines()
        assert says in line and "Traceback" not in result.stderr
