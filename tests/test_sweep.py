"""`ai-trading sweep`: the W&B sweep schema, parameter → override conversion, and Optuna sweeps on real candles.

The W&B server path (`wandb.sweep` + `wandb.agent`) needs a server, which tests never have; its trial function
is exercised with a real offline W&B run instead.
"""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import optuna
import pandas as pd
import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bot.model.policy import OnnxPolicy
from monitoring.logging import reset_logging
from monitoring.wandb_server import server_status as wandb_server_status
from tests.support.wandb_runs import offline_runs
from training.sweep.cli import choose_backend, main
from training.sweep.overrides import to_overrides
from training.sweep.spec import SweepConfigError, SweepError
from training.sweep.spec_file import load_sweep_config, parse_sweep_config
from training.sweep.trial import TrialResult, TrialRunner
from training.sweep.wandb_backend import make_wandb_trial
from training.train import load_train_config

ROOT = Path(__file__).resolve().parents[1]

# Each trial is tiny: 4 PPO updates of 512 steps over real 2025 candles, a validation pass after each.
TINY = [
    "training.total_timesteps=2048",
    "training.num_envs=4",
    "training.num_steps=128",
    "env.episode_length=128",
    "data.start=2025-06-01",
    "training.eval_every=1",
    "training.progress=false",
]

TINY_SWEEP: dict[str, Any] = {
    "name": "tiny",
    "method": "random",
    "metric": {"name": "validation/sharpe", "goal": "maximize"},
    "parameters": {
        "training.lr": {"distribution": "log_uniform_values", "min": 1e-4, "max": 3e-3},
        "model": {"values": ["mlp", "transformer_small"]},
        "model.d_model": {"values": [32, 64]},
        "env.reward_scaling": {"min": 0.5, "max": 3.0},
    },
    "early_terminate": {"type": "hyperband", "min_iter": 1, "eta": 2},
}


@pytest.fixture(autouse=True)
def _reset_logging() -> Iterator[None]:
    """`main` configures logging onto pytest's captured stderr; undo it so later tests never write to it."""
    yield
    reset_logging()


def _write(tmp_path: Path, config: Mapping[str, Any], name: str = "sweep.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(dict(config), sort_keys=False))
    return path


def _events(stderr: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stderr.splitlines() if line.startswith("{")]


def _sweep(base: Mapping[str, Any], **changes: Any) -> dict[str, Any]:
    return {**json.loads(json.dumps(base)), **changes}


# --- schema ----------------------------------------------------------------------------------------------------


def test_the_shipped_sweep_config_is_valid_and_optimises_a_validation_metric() -> None:
    spec = load_sweep_config(ROOT / "sweep_config.yaml")
    assert spec.method == "bayes"
    assert spec.metric.name == "validation/sharpe" and spec.metric.goal == "maximize"
    names = [p.name for p in spec.parameters]
    assert {"training.lr", "model", "model.d_model", "env.reward_scaling", "training.total_timesteps"} <= set(names)
    lr = next(p for p in spec.parameters if p.name == "training.lr")
    assert (lr.distribution, lr.low, lr.high) == ("log_uniform_values", 1e-4, 3e-3)
    assert spec.early_terminate is not None and spec.early_terminate.eta == 3


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"method": "hillclimb"}, "method must be one of grid, random, bayes"),
        ({"metric": None}, "metric is missing"),
        ({"metric": {"name": "validation/sharpe", "goal": "up"}}, "metric.goal"),
        ({"metric": {"name": "charts/episodic_return", "goal": "maximize"}}, "must be a validation metric"),
        ({"metric": {"name": "validation/vibes", "goal": "maximize"}}, "validation/<field>"),
        ({"parameters": {}}, "parameters must be a non-empty mapping"),
        ({"parameters": {"training.lr": {"min": 0.01, "max": 0.001}}}, "training.lr: min must be < max"),
        (
            {"parameters": {"training.lr": {"distribution": "log_uniform_values", "min": 0, "max": 1}}},
            "training.lr: log_uniform_values needs min > 0",
        ),
        ({"parameters": {"training.lr": {"distribution": "beta", "a": 1}}}, "distribution 'beta' is not supported"),
        ({"parameters": {"training.lr": {"values": [1, 2], "min": 0}}}, "'min' does not go with distribution"),
        ({"parameters": {"model": {"values": ["mlp"], "probabilities": [0.5]}}}, "sum to 1"),
        ({"parameters": {"training.lr": {"nothing": 1}}}, "needs value, values, min and max, or a distribution"),
        ({"parameters": {"bad key!": {"value": 1}}}, "not a config key"),
        ({"parameters": {"run_name": {"values": ["a", "b"]}}}, "run_name: set by the sweep"),
        ({"method": "grid", "parameters": {"training.lr": {"min": 0.1, "max": 0.2}}}, "grid needs discrete values"),
        ({"early_terminate": {"type": "median"}}, "only type: hyperband"),
        ({"early_terminate": {"type": "hyperband", "eta": 3}}, "needs min_iter, or max_iter and s"),
        ({"controler": {"type": "local"}}, "unknown key 'controler'"),
    ],
)
def test_invalid_sweep_configs_are_refused_naming_the_problem(change: dict[str, Any], message: str) -> None:
    with pytest.raises(SweepConfigError) as error:
        parse_sweep_config(_sweep(TINY_SWEEP, **change), source="sweep.yaml")
    assert message in str(error.value)
    assert str(error.value).startswith("sweep.yaml")


@pytest.mark.parametrize("name", ["test/sharpe", "test/policy/total_return", "test_total_return"])
def test_a_test_split_metric_is_refused(name: str) -> None:
    with pytest.raises(SweepConfigError, match="never tune on the test split"):
        parse_sweep_config(_sweep(TINY_SWEEP, metric={"name": name, "goal": "maximize"}))


def test_the_cli_refuses_a_test_metric_with_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = _write(tmp_path, _sweep(TINY_SWEEP, metric={"name": "test/sharpe", "goal": "maximize"}))
    assert main(["--config", str(config), "--output-dir", str(tmp_path / "out"), *TINY]) == 2
    assert "never tune on the test split" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_yaml_numbers_follow_yaml_1_2_and_dates_stay_text(tmp_path: Path) -> None:
    path = tmp_path / "s.yaml"
    path.write_text(
        "method: random\nmetric: {name: validation/sharpe, goal: maximize}\nparameters:\n"
        "  training.lr: {distribution: log_uniform_values, min: 1e-4, max: 3e-3}\n"
        "  data.start: {values: [2024-01-01, 2025-01-01]}\n"
    )
    spec = load_sweep_config(path)
    lr, start = spec.parameters
    assert (lr.low, lr.high) == (1e-4, 3e-3)
    assert start.values == ("2024-01-01", "2025-01-01")


_YAMLISH = st.recursive(
    st.none() | st.booleans() | st.integers(-5, 5) | st.floats(allow_nan=True) | st.text(max_size=12),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=9) | st.integers(), inner, max_size=4),
    max_leaves=12,
)


@settings(max_examples=150, deadline=None)
@given(
    raw=st.fixed_dictionaries(
        {},
        optional={
            "method": st.sampled_from(["grid", "random", "bayes", "x"]) | _YAMLISH,
            "metric": st.fixed_dictionaries({"name": st.sampled_from(["validation/sharpe", "test/x"])}) | _YAMLISH,
            "parameters": st.dictionaries(
                st.sampled_from(["training.lr", "model", "a b", "env.reward_scaling"]),
                st.dictionaries(
                    st.sampled_from(["distribution", "min", "max", "values", "value", "q", "sigma", "parameters"]),
                    _YAMLISH | st.sampled_from(["uniform", "normal", "q_uniform", "categorical", "int_uniform"]),
                    max_size=4,
                ),
                max_size=3,
            )
            | _YAMLISH,
            "early_terminate": _YAMLISH,
            "run_cap": _YAMLISH,
        },
    )
    | _YAMLISH
)
def test_any_input_either_parses_or_raises_a_sweep_config_error(raw: Any) -> None:
    try:
        spec = parse_sweep_config(raw)
    except SweepConfigError:
        return
    assert spec.method in ("grid", "random", "bayes") and spec.metric.name.startswith("validation/")


# --- parameters → overrides -----------------------------------------------------------------------------------


@settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 2**31 - 1))
def test_every_sample_of_the_shipped_space_is_a_valid_training_config(seed: int) -> None:
    spec = load_sweep_config(ROOT / "sweep_config.yaml")
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=seed))
    params = spec.sample(study.ask())
    cfg = load_train_config(to_overrides(params))
    assert cfg.training.ppo.learning_rate == params["training.lr"] and 1e-4 <= cfg.training.ppo.learning_rate <= 3e-3
    assert cfg.model.d_model == params["model.d_model"]
    assert cfg.model.name == ("mlp" if params["model"] == "mlp" else "transformer")
    assert cfg.env.reward_scaling == params["env.reward_scaling"]
    assert cfg.training.ppo.total_timesteps == params["training.total_timesteps"]


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    lr=st.floats(1e-7, 1.0),
    timesteps=st.integers(1, 10**9),
    hidden=st.lists(st.integers(1, 512), min_size=1, max_size=3),
    target_kl=st.none() | st.floats(1e-4, 1.0),
    clip_vloss=st.booleans(),
    group=st.text(st.characters(codec="utf-8", exclude_categories=["Cs", "Cc"]), max_size=20)
    | st.from_regex(r"[A-Za-z_][A-Za-z0-9_]{0,8}", fullmatch=True)
    | st.sampled_from(["true", "Null", "NaN", "inf", "1e5", "2025-01-01", "a\\", "\\${x}", "'", "${x}"]),
    preset=st.sampled_from(["mlp", "transformer_small", "transformer_medium", "transformer_large"]),
)
def test_any_valid_parameter_set_round_trips_through_hydra_overrides(
    lr: float, timesteps: int, hidden: list[int], target_kl: float | None, clip_vloss: bool, group: str, preset: str
) -> None:
    params = {
        "model": preset,
        "training.lr": lr,
        "training.total_timesteps": timesteps,
        "model.hidden_sizes": hidden,
        "training.target_kl": target_kl,
        "training.clip_vloss": clip_vloss,
        "wandb.group": group,
    }
    cfg = load_train_config(to_overrides(params))
    assert cfg.training.ppo.learning_rate == lr and cfg.training.ppo.total_timesteps == timesteps
    assert cfg.model.hidden_sizes == tuple(hidden) and cfg.training.ppo.target_kl == target_kl
    assert cfg.training.ppo.clip_vloss is clip_vloss
    assert cfg.wandb.group == group  # quotes, backslashes and ${...} survive Hydra's grammar


def test_reserved_keys_cannot_be_swept_or_overridden(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SweepConfigError, match="output_dir: set by the sweep"):
        to_overrides({"output_dir": "x"})
    config = _write(tmp_path, TINY_SWEEP)
    assert main(["--config", str(config), "--dry-run", f"training.export_dir={tmp_path}"]) == 2
    assert "training.export_dir=...: set by the sweep" in capsys.readouterr().err
    assert main(["--config", str(config), "--dry-run", "training.lr=0.001"]) == 2
    assert "training.lr is a sweep parameter" in capsys.readouterr().err


def test_flat_ppo_keys_in_a_sweep_space_are_applied_and_name_one_setting(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    space = _sweep(TINY_SWEEP, parameters={"training.lr": {"values": [7e-4]}, "training.update_epochs": {"value": 2}})
    params = parse_sweep_config(space).sample(optuna.create_study().ask())
    ppo = load_train_config(_runner(tmp_path).trial_overrides(params, "run-1")).training.ppo
    assert (ppo.learning_rate, ppo.update_epochs, ppo.num_envs) == (7e-4, 2, 4)
    config = _write(tmp_path, space)
    # An override of the same setting in the other spelling is refused like the same spelling.
    assert main(["--config", str(config), "--dry-run", "training.ppo.learning_rate=0.001", *TINY]) == 2
    assert "training.ppo.learning_rate=...: training.lr is a sweep parameter" in capsys.readouterr().err
    both = _sweep(space, parameters={**space["parameters"], "training.ppo.learning_rate": {"values": [1e-3]}})
    assert main(["--config", str(_write(tmp_path, both, "both.yaml")), "--dry-run", *TINY]) == 2
    assert "parameters training.lr and training.ppo.learning_rate are the same setting" in capsys.readouterr().err
    # The workers' thread share is the user's in either spelling, and added in today's.
    assert main(["--config", str(config), "--workers", "2", "training.ppo.torch_threads=9999", *TINY]) == 2
    assert "needs 19998 cores" in capsys.readouterr().err
    from training.sweep.workers import usable_cores

    if usable_cores() >= 2:  # two workers need two cores
        assert main(["--config", str(config), "--dry-run", "--workers", "2", *TINY]) == 0
        assert f"training.ppo.torch_threads={usable_cores() // 2}" in capsys.readouterr().out


def test_the_duration_estimate_reads_older_runs_flat_configs(tmp_path: Path) -> None:
    from monitoring.run_store import RunWriter
    from training.sweep.estimate import measured_rates

    old = {"model": {"name": "mlp"}, "training": {"total_timesteps": 4096, "lr": 2e-4}}  # before issue 10
    RunWriter(tmp_path, "old", config=old).write_summary({"train_seconds": 4.0})
    new = {"model": {"name": "mlp"}, "training": {"ppo": {"total_timesteps": 2048}}}
    RunWriter(tmp_path, "new", config=new).write_summary({"train_seconds": 4.0})
    rates, runs = measured_rates(tmp_path)
    assert runs == 2 and rates["mlp"] == pytest.approx((4096 / 8.0 + 2048 / 8.0) / 2)


def test_a_typo_in_a_parameter_value_fails_before_any_training(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = _sweep(TINY_SWEEP)
    config["parameters"]["model"] = {"values": ["mlp", "transformer_tiny"]}
    assert main(["--config", str(_write(tmp_path, config)), "--output-dir", str(tmp_path / "out"), *TINY]) == 2
    assert "transformer_tiny" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


# --- backend choice --------------------------------------------------------------------------------------------


def test_auto_picks_optuna_offline_and_says_why(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--config", str(_write(tmp_path, TINY_SWEEP)), "--dry-run", "--count", "2", *TINY]) == 0
    captured = capsys.readouterr()
    (event,) = [e for e in _events(captured.err) if e["event"] == "sweep_backend_selected"]
    assert event["backend"] == "optuna" and "WANDB_MODE=offline" in event["reason"]
    assert "backend: optuna (WANDB_MODE=offline" in captured.out


def test_without_credentials_or_server_wandb_is_ruled_out_quickly(tmp_path: Path) -> None:
    env = {"NETRC": str(tmp_path / "absent-netrc")}
    available, why = wandb_server_status(env)
    assert not available and "no W&B credentials for api.wandb.ai" in why
    with socket.socket() as s:  # a loopback port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {"WANDB_API_KEY": "k" * 40, "WANDB_BASE_URL": f"http://127.0.0.1:{port}"}
    started = time.perf_counter()
    choice = choose_backend("auto", env)
    assert choice.backend == "optuna" and f"127.0.0.1:{port} did not answer" in choice.reason
    assert time.perf_counter() - started < 2.5
    with pytest.raises(SweepError, match=r"--backend wandb: W&B server 127\.0\.0\.1"):
        choose_backend("wandb", env)
    assert choose_backend("optuna", env).reason == "requested with --backend optuna"


def test_backend_wandb_without_a_server_exits_1_without_hanging(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["--config", str(_write(tmp_path, TINY_SWEEP)), "--backend", "wandb", "--dry-run"]) == 1
    assert "--backend wandb: WANDB_MODE=offline" in capsys.readouterr().err


def test_sweep_id_without_a_server_is_one_line_and_exit_1(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--config", str(_write(tmp_path, TINY_SWEEP)), "--sweep-id", "me/proj/abc123", *TINY]) == 1
    # Printed once: the plain line on a terminal, the JSON error line when piped (as here).
    lines = capsys.readouterr().err.splitlines()
    err = [json.loads(line)["error"] if line.startswith("{") else line for line in lines]
    err = [line for line in err if "--sweep-id" in line]
    assert len(err) == 1 and "--sweep-id me/proj/abc123: joining a W&B sweep needs a usable W&B server" in err[0]
    assert "WANDB_MODE=offline" in err[0] and "--storage postgresql://" in err[0]
    assert not (tmp_path / "outputs").exists()


# --- dry run ---------------------------------------------------------------------------------------------------


def test_dry_run_prints_the_mapping_and_the_grid_and_writes_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = _sweep(
        TINY_SWEEP,
        method="grid",
        parameters={"model.d_model": {"values": [32, 64]}, "env.reward_scaling": {"value": 2.0}},
    )
    db = tmp_path / "s.db"
    args = ["--config", str(_write(tmp_path, config)), "--dry-run", "--storage", f"sqlite:///{db}"]
    assert main([*args, "--output-dir", str(tmp_path / "out"), *TINY]) == 0
    out = capsys.readouterr().out
    assert "categorical → grid over 2 values [32, 64]" in out
    assert "constant 2.0 → fixed" in out
    assert "HyperbandPruner(min_resource=1, max_resource=auto, reduction_factor=2)" in out
    trial_lines = [line for line in out.splitlines() if "env.reward_scaling=2.0" in line]
    assert len(trial_lines) == 2
    swept = {word for line in trial_lines for word in line.split() if "d_model" in word}
    assert swept == {"model.d_model=32", "model.d_model=64"}
    assert not db.exists() and not (tmp_path / "out").exists()


# --- running trials --------------------------------------------------------------------------------------------


def test_optuna_sweep_end_to_end_with_sqlite_storage_and_resume(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = _write(tmp_path, TINY_SWEEP)
    out = tmp_path / "outputs"
    # No --seed: the default seed makes the dry run and the real run the same trials.
    args = ["--config", str(config), "--storage", f"sqlite:///{tmp_path / 'sweeps.db'}"]
    args += ["--output-dir", str(out), *TINY]

    assert main([*args, "--count", "2", "--dry-run"]) == 0
    previewed = [line.split()[1:] for line in capsys.readouterr().out.splitlines() if line.startswith("    ")]

    assert main([*args, "--count", "2"]) == 0
    captured = capsys.readouterr()
    assert "expected duration: ~" in captured.err and "for 2 trials, 4,096 environment steps" in captured.err
    summary = json.loads((out / "sweeps" / "tiny" / "sweep_summary.json").read_text())
    assert summary["backend"] == "optuna" and summary["metric"]["name"] == "validation/sharpe"
    assert "validation split only" in summary["objective"]
    assert [t["state"] for t in summary["trials"]] == ["complete", "complete"]
    # A fresh study with the same seed runs exactly the previewed parameter sets.
    for trial, words in zip(summary["trials"], previewed, strict=True):
        assert sorted(w for w in words if w.split("=")[0] in trial["params"]) == sorted(to_overrides(trial["params"]))

    for trial in summary["trials"]:
        run_summary = json.loads((Path(trial["run_dir"]) / "summary.json").read_text())
        # The objective is the validation score of the selected checkpoint, never a test figure.
        assert trial["value"] == pytest.approx(run_summary["best_validation_sharpe"])
        assert trial["test_total_return"] == pytest.approx(run_summary["test"]["policy"]["total_return"])
        assert len(trial["intermediate"]) == 4 and trial["intermediate"][-1] == pytest.approx(trial["value"])
        assert (out / "sweeps" / "tiny" / "exports" / trial["run_id"] / "best_model.onnx").exists()
        # Each trial is a W&B run (offline here) grouped by the sweep, read back from its .wandb file.
        (wandb_run,) = offline_runs(Path(trial["run_dir"]) / "wandb")
        assert wandb_run.run["run_group"] == "tiny" and wandb_run.exit_code == 0
        passes = wandb_run.values("validation/sharpe")
        assert len(passes) == 4 and max(passes) == pytest.approx(trial["value"])  # selected on validation sharpe
        assert wandb_run.summary["best_validation_sharpe"] == pytest.approx(trial["value"])
    best = summary["best"]
    assert best["value"] == max(t["value"] for t in summary["trials"])
    assert f"best: trial {best['number']}, validation/sharpe" in captured.out
    assert "training.select_metric=sharpe" in best["retrain_command"]
    assert load_train_config(best["overrides"]).training.ppo.learning_rate == best["params"]["training.lr"]
    frame = pd.read_parquet(out / "sweeps" / "tiny" / "trials.parquet")
    assert list(frame["number"]) == [0, 1] and "validation/sharpe" in frame and "param/training.lr" in frame
    # Overfitting: every trial recorded its validation returns; PBO of the study, DSR of each trial so far.
    overfitting = summary["overfitting"]
    assert overfitting["pbo"]["n_trials"] == 2 and overfitting["pbo"]["pbo"] is not None
    assert overfitting["dsr_threshold"] == 0.95
    assert [t["dsr_n_trials"] for t in summary["trials"]] == [1, 2] and "dsr" in frame
    for trial in summary["trials"]:
        assert trial["dsr_flagged"] == (trial["dsr"] is None or trial["dsr"] < 0.95)
    assert "PBO (probability of backtest overfitting" in captured.out and "DSR (so far)" in captured.out
    first = summary["trials"][0]
    assert first["dsr"] is None or f"{first['dsr']:.3f}" in captured.out.splitlines()[2]
    assert f"best trial {best['number']}: " in captured.out and "the DSR >= 0.95 check" in captured.out
    # Every trial's model card (its run's export and the copy in the sweep's exports/) carries the study's PBO
    # and its own DSR against all the trials, and says whether it is the best one.
    for trial in summary["trials"]:
        deflated = overfitting["against_all_trials"][str(trial["number"])]
        for onnx_path in (
            Path(trial["run_dir"]) / "models" / "best_model.onnx",
            out / "sweeps" / "tiny" / "exports" / trial["run_id"] / "best_model.onnx",
        ):
            card = OnnxPolicy.load(onnx_path).card  # the amended card still matches its file
            block = card.metrics["sweep"]
            assert block["name"] == "tiny" and block["trial"] == trial["number"] and block["n_trials"] == 2
            assert block["pbo"] == overfitting["pbo"]["pbo"] and block["dsr"] == deflated["dsr"]
            assert block["survives_dsr"] == deflated["passed"] and block["best"] == (trial["number"] == best["number"])
            assert card.out_of_sample()["sweep"]["pbo"] == overfitting["pbo"]["pbo"]

    # Same name and storage: the study goes on from where it was.
    assert main([*args, "--count", "1"]) == 0
    resumed = json.loads((out / "sweeps" / "tiny" / "sweep_summary.json").read_text())
    assert [t["number"] for t in resumed["trials"]] == [0, 1, 2]
    assert [t["run_id"] for t in resumed["trials"][:2]] == [t["run_id"] for t in summary["trials"]]
    assert resumed["trials"][2]["params"] != resumed["trials"][0]["params"]
    capsys.readouterr()

    # The same study name with a different search space is refused rather than mixed in.
    changed = _sweep(TINY_SWEEP)
    changed["parameters"]["model.d_model"] = {"values": [96]}
    assert main([*args[2:], "--config", str(_write(tmp_path, changed, "changed.yaml")), "--count", "1"]) == 2
    assert "was made from a different sweep config" in capsys.readouterr().err


def _runner(tmp_path: Path) -> TrialRunner:
    spec = parse_sweep_config(TINY_SWEEP)
    sweep_dir = tmp_path / "outputs" / "sweeps" / "t"
    return TrialRunner(spec.metric, (*TINY, "training.select_metric=sharpe"), tmp_path / "outputs", sweep_dir, "t")


def test_an_intermediate_hook_can_prune_a_trial_and_a_bad_combination_fails_only_its_trial(tmp_path: Path) -> None:
    runner = _runner(tmp_path)
    seen: list[tuple[int, float]] = []

    def prune_after_two(iteration: int, value: float) -> bool:
        seen.append((iteration, value))
        return iteration < 2

    result = runner.run(0, {"training.lr": 3e-4}, on_intermediate=prune_after_two)
    assert result.state == "pruned" and [i for i, _ in seen] == [1, 2]
    assert result.value == seen[-1][1] and result.intermediate == [v for _, v in seen]
    assert not (Path(str(result.run_dir)) / "summary.json").exists()  # stopped before the test split

    failed = runner.run(1, {"model": "transformer_small", "model.d_model": 30})
    assert failed.state == "failed" and "n_heads (4) must divide d_model (30)" in str(failed.error)


class _RecordingRun:
    """A real offline W&B run that remembers summary writes (an offline summary is unreadable after finish)."""

    def __init__(self, run: Any) -> None:
        self._run = run
        self.summary_writes: dict[str, Any] = {}
        outer = self

        class Summary:
            def __setitem__(self, key: str, value: Any) -> None:
                outer.summary_writes[key] = value
                run.summary[key] = value

            def __getitem__(self, key: str) -> Any:
                return run.summary[key]

        self.summary = Summary()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._run, name)


def test_the_wandb_agent_trial_reads_nested_config_and_publishes_the_validation_objective(tmp_path: Path) -> None:
    import wandb

    nested = _sweep(TINY_SWEEP)
    nested["parameters"] = {
        "training": {"parameters": {"lr": {"values": [5e-4]}}},
        "model.d_model": {"values": [32]},
    }
    spec = parse_sweep_config(nested)
    runs: list[_RecordingRun] = []

    def init(**kwargs: Any) -> Any:
        # What wandb.agent's run would carry: the sampled values, nested as W&B nests them.
        config = {"training": {"lr": 5e-4}, "model.d_model": 32}
        run = _RecordingRun(wandb.init(mode="offline", config=config, **kwargs))
        runs.append(run)
        return run

    results: list[TrialResult] = []
    make_wandb_trial(spec, _runner(tmp_path), results, init=init)()
    (result,) = results
    assert result.state == "complete" and result.params == {"training.lr": 5e-4, "model.d_model": 32}
    config = json.loads((Path(str(result.run_dir)) / "config.json").read_text())
    assert config["training"]["ppo"]["learning_rate"] == 5e-4 and config["model"]["d_model"] == 32
    run_summary = json.loads((Path(str(result.run_dir)) / "summary.json").read_text())
    assert runs[0].summary_writes["validation/sharpe"] == pytest.approx(run_summary["best_validation_sharpe"])
    assert result.value == pytest.approx(run_summary["best_validation_sharpe"])
    assert list((tmp_path / "outputs" / "sweeps" / "t" / "wandb").glob("offline-run-*/run-*.wandb"))


def test_workers_run_trials_in_parallel_processes_sharing_one_study(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from training.sweep.workers import usable_cores

    lr_only = {k: v for k, v in TINY_SWEEP.items() if k not in ("parameters", "early_terminate")}
    lr_only["parameters"] = {"training.lr": TINY_SWEEP["parameters"]["training.lr"]}
    config = _write(tmp_path, lr_only)
    out = tmp_path / "outputs"
    args = ["--config", str(config), "--output-dir", str(out), "--count", "3", "--workers", "2", *TINY]
    args.append("wandb.enabled=false")
    if usable_cores() < 2:
        pytest.skip("two workers need two cores")  # CI and the build machine have 2
    assert main(args) == 0, capsys.readouterr().err
    sweep_dir = out / "sweeps" / "tiny"
    summary = json.loads((sweep_dir / "sweep_summary.json").read_text())
    # One study in the sweep directory's SQLite file, three distinct trials, one of them run by the second worker.
    assert summary["workers"] == 2 and summary["storage"] == f"sqlite:///{sweep_dir / 'study.db'}"
    assert sorted(t["number"] for t in summary["trials"]) == [0, 1, 2]
    assert [t["state"] for t in summary["trials"]] == ["complete"] * 3
    assert len({t["params"]["training.lr"] for t in summary["trials"]}) == 3
    worker_log = (sweep_dir / "worker-1.log").read_text()
    assert worker_log.count('"event": "sweep_trial_finished"') == 1, worker_log[-2000:]
    threads = {
        json.loads((Path(t["run_dir"]) / "config.json").read_text())["training"]["ppo"]["torch_threads"]
        for t in summary["trials"]
    }
    assert threads == {usable_cores() // 2}, threads  # workers x threads never more than the cores
    capsys.readouterr()


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--workers", "9999"], "usable cores"),
        (["--workers", "2", "training.torch_threads=9999"], "needs 19998 cores"),
        (["--workers", "2", "--storage", "sqlite:///:memory:"], "in-memory"),
    ],
)
def test_workers_that_would_oversubscribe_the_cores_are_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], extra: list[str], message: str
) -> None:
    config = _write(tmp_path, TINY_SWEEP)
    assert main(["--config", str(config), "--output-dir", str(tmp_path), *extra, *TINY]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
