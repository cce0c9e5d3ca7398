"""`ai-trading train` end to end on real candles: run directory, W&B offline run, export, honest evaluation."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from training.ppo_config import PPOConfig
from training.train import load_train_config, main

# A small, fast run over real bundled candles (2025: ~8,000 hourly bars).
SMALL = [
    "data.start=2025-01-01",
    "training.total_timesteps=4096",
    "training.num_envs=4",
    "training.num_steps=256",
    "training.eval_every=2",
    "env.episode_length=256",
    "training.progress=false",
    "seed=7",
]


def _run(tmp_path: Path, *extra: str) -> Path:
    args = [*SMALL, f"output_dir={tmp_path / 'outputs'}", f"training.export_dir={tmp_path / 'models'}", *extra]
    assert main(args) == 0
    (run_dir,) = (tmp_path / "outputs").iterdir()
    return run_dir


def test_user_guide_overrides_reach_the_typed_config() -> None:
    cfg = load_train_config(
        ["model=transformer_small", "model.d_model=96", "training.lr=0.0002", "env.reward_scaling=2.5"]
    )
    assert (cfg.model.d_model, cfg.training.ppo.learning_rate, cfg.env.reward_scaling) == (96, 0.0002, 2.5)
    cfg = load_train_config(["model=transformer_small"])
    assert cfg.model.name == "transformer" and cfg.model.d_model == 64
    for preset in ("transformer_medium", "transformer_large", "mlp"):
        assert load_train_config([f"model={preset}"]).model is not None


FLAT_VALUES = {
    "total_timesteps": 50_000,
    "lr": 2e-4,
    "num_envs": 8,
    "num_steps": 128,
    "num_minibatches": 8,
    "update_epochs": 2,
    "gamma": 0.95,
    "gae_lambda": 0.9,
    "clip_coef": 0.1,
    "clip_vloss": False,
    "ent_coef": 0.02,
    "vf_coef": 0.25,
    "max_grad_norm": 1.0,
    "target_kl": 0.05,
    "anneal_lr": False,
    "norm_adv": False,
    "torch_threads": 2,
    "device": "cpu",
}


def test_flat_ppo_keys_and_their_training_ppo_spelling_give_the_same_ppo_config() -> None:
    from monitoring.run_store import FLAT_PPO_KEYS

    assert set(FLAT_VALUES) == set(FLAT_PPO_KEYS)
    text = {k: str(v).lower() if isinstance(v, bool) else str(v) for k, v in FLAT_VALUES.items()}
    flat = load_train_config([f"training.{k}={v}" for k, v in text.items()]).training.ppo
    nested = load_train_config([f"training.ppo.{FLAT_PPO_KEYS[k]}={v}" for k, v in text.items()]).training.ppo
    assert flat == nested
    assert (flat.learning_rate, flat.num_envs, flat.target_kl, flat.torch_threads) == (2e-4, 8, 0.05, 2)
    assert (
        load_train_config(["training.lr=0.0002"]).training.ppo
        == load_train_config(["training.ppo.learning_rate=0.0002"]).training.ppo
    )
    # The trading defaults of config/training/default.yaml, not PPOConfig's CartPole ones; the root seed.
    ppo = load_train_config(["seed=5"]).training.ppo
    assert (ppo.total_timesteps, ppo.learning_rate, ppo.num_steps, ppo.ent_coef) == (200_000, 3e-4, 256, 0.01)
    assert (ppo.torch_threads, ppo.device, ppo.seed) == ("auto", "auto", 5)


def test_train_once_hands_ppo_the_configured_settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import training.ppo

    seen = []

    class Stop(Exception):
        pass

    def capture(env: object, model: object, config: PPOConfig, **kwargs: object) -> None:
        seen.append(config)
        raise Stop

    monkeypatch.setattr(training.ppo, "PPO", capture)
    with pytest.raises(Stop):
        main([*SMALL, "training.lr=0.0002", "training.device=auto", f"output_dir={tmp_path}"])
    (config,) = seen
    cfg = load_train_config([*SMALL, "training.ppo.learning_rate=0.0002"])
    threads, device = training.ppo.resolve_torch_threads("auto"), training.ppo.resolve_device("auto")
    assert config == dataclasses.replace(cfg.training.ppo, torch_threads=threads, device=device)
    assert config.seed == 7 and config.learning_rate == 2e-4 and config.total_timesteps == 4096


@pytest.mark.parametrize(
    ("override", "named"),
    [
        ("training.lr=fast", "training.lr"),
        ("env.window=0", "env.window"),
        ("model.nlayers=3", "nlayers"),
        ("training.lr=-1", "training.lr must be > 0, was -1.0"),
        ("training.ppo.learning_rate=-1", "training.ppo.learning_rate must be > 0, was -1.0"),
        ("training.gae_lambda=2", "training.gae_lambda must be in [0, 1], was 2.0"),
        ("training.device=tpu", "training.device must be 'auto', 'cpu', 'cuda' or 'cuda:N', was 'tpu'"),
        ("training.ppo.torch_threads=0", "training.ppo.torch_threads must be > 0, was 0"),
        ("training.ppo.precision=fp16", "training.ppo.precision"),
        ("+training.ppo.seed=3", "training.ppo.seed: PPO is seeded by the root seed; set seed=N instead"),
    ],
)
def test_bad_config_exits_2_naming_the_key(override: str, named: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main([override]) == 2
    assert named in capsys.readouterr().err


def test_bf16_on_a_cpu_without_it_is_one_line_and_exit_2(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import training.ppo

    # A CPU without AVX512-BF16 or AMX cannot be had here: the capability probe is replaced, nothing else.
    monkeypatch.setattr(training.ppo, "cpu_has_bf16", lambda: False)
    args = [*SMALL, "model=transformer_small", "training.ppo.precision=bf16", "training.device=cpu"]
    assert main([*args, f"output_dir={tmp_path}"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "training.ppo.precision=bf16: this CPU has no native bfloat16" in err[0], err
    assert not any(tmp_path.iterdir())  # refused before a run directory was made


@pytest.mark.integration
def test_training_run_writes_everything_and_evaluates_out_of_sample(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run_dir = _run(tmp_path, "wandb.enabled=true", "wandb.log_frequency.steps=10", "wandb.log_model=true")
    out = capsys.readouterr().out
    assert "buy_and_hold" in out and "sma_crossover" in out and "total return" in out

    config = json.loads((run_dir / "config.json").read_text())
    assert config["training"]["ppo"]["total_timesteps"] == 4096 and len(config["data_sha256"]) == 64
    assert config["data_span"][0].startswith("2025-01-01")
    summary = json.loads((run_dir / "summary.json").read_text())
    for strategy in ("policy", "buy_and_hold", "sma_crossover"):
        assert {
            "total_return",
            "sharpe",
            "sortino",
            "max_drawdown",
            "win_rate",
            "profit_factor",
            "trade_count",
            "exposure",
            "turnover_per_year",
        } <= set(summary["test"][strategy])
    # The test split is the last 15% of the bars: it starts after the validation split ends.
    ranges = summary["data_range"]
    assert ranges["validation"]["last"] < ranges["test"]["first"]
    assert ranges["train"]["last"] < ranges["validation"]["first"]

    history = pd.read_parquet(run_dir / "metrics.parquet")
    for key in (
        "losses/policy_loss",
        "losses/value_loss",
        "losses/entropy",
        "losses/approx_kl",
        "losses/clipfrac",
        "losses/explained_variance",
        "grad_norm/total",
        "charts/learning_rate",
        "charts/SPS",
        "validation/sharpe",
    ):
        assert key in history.columns, key
    trades = pd.read_parquet(run_dir / "trades-test.parquet")
    assert summary["test"]["policy"]["trade_count"] == len(trades)

    card = json.loads((run_dir / "models" / "best_model.json").read_text())
    assert card["metrics"]["test"]["policy"]["total_return"] == summary["test"]["policy"]["total_return"]
    for name in ("best_model.onnx", "best_model.pt", "config.json"):
        assert (run_dir / "models" / name).is_file()
    assert not (tmp_path / "models").exists()  # not published: the daemon's default model is untouched

    # Every metric group reached the offline W&B run (its transaction log holds the keys).
    (log_file,) = (run_dir / "wandb").glob("offline-run-*/run-*.wandb")
    records = log_file.read_bytes()
    for key in (
        b"losses/policy_loss",
        b"grad_norm/total",
        b"actions/histogram",
        b"charts/SPS",
        b"charts/learning_rate",
        b"episode/return",
        b"test/cumulative_pnl",
        b"test/win_loss_distribution",
        b"test/duration_vs_return",
        b"test/win_rate_by_hour",
        b"test/trades",
        b"validation/sharpe",
    ):
        assert key in records, key
    assert b"latest" in records and b"best" in records  # checkpoint artifact aliases


@pytest.mark.integration
def test_walk_forward_folds_are_reported_one_by_one_and_every_fold_card_carries_them(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from bot.model.policy import OnnxPolicy

    run_dir = _run(tmp_path, "training.walk_forward.folds=2", "training.total_timesteps=2048", "training.publish=true")
    out = capsys.readouterr().out
    assert "Fold 0 test split" in out and "Fold 1 test split" in out
    folds = json.loads((run_dir / "summary.json").read_text())["folds"]
    assert set(folds) == {"0", "1"} and folds["0"]["test"] != folds["1"]["test"]
    for fold in ("0", "1"):
        onnx_path = run_dir / f"fold{fold}" / "models" / "best_model.onnx"
        card = OnnxPolicy.load(onnx_path).card  # amended after the last fold, and still consistent with its file
        block = card.metrics["walk_forward"]
        assert block["this_fold"] == int(fold) and block["planned_folds"] == 2
        assert block["folds"] == {f: folds[f]["test"] for f in ("0", "1")}, "each fold's own figures, not a mean"
        assert card.metrics["test"] == folds[fold]["test"]
        assert set(card.out_of_sample()["walk_forward"]) == {"0", "1"}
    # The published copy (the last fold's model) carries them too.
    published = json.loads((tmp_path / "models" / "best_model.json").read_text())
    assert published["metrics"]["walk_forward"]["this_fold"] == 1


@pytest.mark.integration
def test_exported_model_serves_without_torch(tmp_path: Path) -> None:
    run_dir = _run(tmp_path)
    code = (
        "import sys, numpy as np; from bot.model.policy import OnnxPolicy; "
        f"p = OnnxPolicy.load({str(run_dir / 'models' / 'best_model.onnx')!r}); "
        "obs = np.zeros(p.card.observation_shape, dtype=np.float32); print(p.target_position(obs)); "
        "assert 'torch' not in sys.modules and 'training' not in sys.modules"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert float(result.stdout.strip().splitlines()[-1]) in (0.0, 1.0)


@pytest.mark.integration
def test_ctrl_c_stops_cleanly_and_keeps_the_best_checkpoint(tmp_path: Path) -> None:
    args = [
        *SMALL,
        "training.total_timesteps=10000000",
        "training.eval_every=1",
        f"output_dir={tmp_path / 'outputs'}",
        f"training.export_dir={tmp_path / 'models'}",
    ]
    env = {**os.environ, "AI_TRADING_LOG_LEVEL": "INFO"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "training.train", *args],
        stderr=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    )
    assert proc.stderr is not None
    for line in proc.stderr:  # wait for the first validation checkpoint, then interrupt
        if "validation_evaluated" in line:
            proc.send_signal(signal.SIGINT)
            break
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 0
    assert "Test split" in out
    (run_dir,) = (tmp_path / "outputs").iterdir()
    assert json.loads((run_dir / "outcome.json").read_text()) == {"interrupted": True}
    assert (run_dir / "checkpoints" / "best.pt").is_file()
    assert (run_dir / "models" / "best_model.onnx").is_file()


def _train_cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    return subprocess.run(
        [sys.executable, "-m", "bot.cli", "train", *args], capture_output=True, text=True, timeout=120, cwd=cwd, env=env
    )


def test_a_model_key_the_chosen_preset_ignores_is_an_error_naming_the_presets_that_use_it() -> None:
    result = _train_cli("model.d_model=96", "training.lr=0.0002", "env.reward_scaling=2.5")
    assert result.returncode == 2
    (line,) = result.stderr.splitlines()
    assert "model.d_model" in line and "model=mlp" in line
    assert "transformer_small, transformer_medium, transformer_large" in line
    result = _train_cli("model=transformer_small", "model.hidden_sizes=[32]")
    assert result.returncode == 2 and "presets that do: mlp" in result.stderr
    # Keys every family reads pass, and the README's example (a transformer preset) configures what it says.
    assert load_train_config(["model.activation=relu"]).model.activation == "relu"


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ("training.lrr=1", "training.lrr: unknown key; did you mean training.lr?"),
        ("+training.lrr=1", "training.lrr: unknown key; did you mean training.lr?"),
        ("trainng.lr=1", "trainng: unknown key; did you mean training?"),
        ("training.num_env=1", "training.num_env: unknown key; did you mean training.num_envs?"),
        ("training.ppo.nonsense=1", "training.ppo.nonsense: unknown key (training.ppo accepts anneal_lr, clip_coef"),
        (
            "model=transformer_huge",
            "model=transformer_huge: no such model preset; choose one of mlp, transformer_large, transformer_medium, "
            "transformer_small",
        ),
    ],
)
def test_unknown_keys_and_presets_are_named_with_what_exists(override: str, expected: str) -> None:
    result = _train_cli(override)
    assert result.returncode == 2
    (line,) = result.stderr.splitlines()
    assert line.startswith(f"ai-trading train: {expected}"), line


@pytest.mark.integration
def test_step_metrics_follow_a_log_frequency_below_one_update_and_the_budget_rounds_up(tmp_path: Path) -> None:
    result = _train_cli(
        *[a for a in SMALL if not a.startswith("training.total_timesteps")],
        "training.total_timesteps=1500",  # updates are 4 envs x 256 steps = 1,024 env steps
        "wandb.enabled=true",
        "wandb.log_frequency.steps=128",
        "run_name=freq",
        f"output_dir={tmp_path / 'outputs'}",
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    rounded = [json.loads(line) for line in result.stderr.splitlines() if "total_timesteps_rounded" in line]
    assert [(r["requested"], r["used"], r["update_steps"]) for r in rounded] == [(1500, 2048, 1024)]
    run_dir = tmp_path / "outputs" / "freq"
    assert json.loads((run_dir / "summary.json").read_text())["total_timesteps"] == 2048
    (log_file,) = (run_dir / "wandb").glob("offline-run-*/run-*.wandb")
    records = log_file.read_bytes()
    # Eight step-level logs per update (1,024 / 128) against one log of the update's losses.
    assert records.count(b"charts/reward") >= 4 * records.count(b"losses/policy_loss") > 0
    assert records.count(b"actions/histogram") >= 4 * records.count(b"losses/policy_loss")


def test_an_error_prints_once_the_json_line_when_piped_the_plain_line_on_a_terminal(tmp_path: Path) -> None:
    import pty

    args = ["data.path=/nonexistent/candles.parquet", f"output_dir={tmp_path}"]
    piped = _train_cli(*args)
    assert piped.returncode == 1
    (line,) = piped.stderr.splitlines()
    event = json.loads(line)
    assert event["event"] == "command_failed" and event["level"] == "error"
    assert event["error"] == "data.path /nonexistent/candles.parquet does not exist"

    controller, terminal = pty.openpty()
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    proc = subprocess.run(
        [sys.executable, "-m", "bot.cli", "train", *args],
        stderr=terminal,
        stdout=subprocess.DEVNULL,
        env=env,
        timeout=120,
    )
    os.close(terminal)
    seen = b""
    while True:
        try:
            chunk = os.read(controller, 4096)
        except OSError:  # the terminal's other end is closed: everything was read
            break
        if not chunk:
            break
        seen += chunk
    os.close(controller)
    assert proc.returncode == 1
    lines = [line for line in seen.decode().splitlines() if line.strip()]
    assert lines == ["ai-trading train: data.path /nonexistent/candles.parquet does not exist"]


def test_the_readmes_train_commands_configure_without_error() -> None:
    import re
    import shlex

    from training.train import check_model_overrides

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    commands = re.findall(r"\| `(ai-trading train [^`]*)`", readme)
    assert len(commands) >= 4
    for command in commands:
        overrides = shlex.split(command)[2:]
        cfg = load_train_config(overrides)
        check_model_overrides(cfg.model.name, overrides)
    assert "ai-trading train model=transformer_small model.d_model=96 training.lr=0.0002" in readme
