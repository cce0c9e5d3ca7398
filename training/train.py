"""`ai-trading train` / `python -m training.train`: train a PPO policy on real candles, honestly evaluated.

Hydra overrides exactly as the user guide uses them::

    ai-trading train wandb.enabled=true
    ai-trading train wandb.enabled=true wandb.log_frequency.steps=10 wandb.log_model=true
    ai-trading train wandb.enabled=true model=transformer_small
    ai-trading train model=transformer_small model.d_model=96 training.lr=0.0002 env.reward_scaling=2.5

One run: load and validate the candles → split train / validation / test by time → fit the feature
normalisation on the train split only → PPO on the vector env over the train split → every
`training.eval_every` updates, a deterministic pass over the validation split picks the best checkpoint →
the best checkpoint is exported to ONNX with its model card → one pass over the test split it never saw,
next to buy-and-hold and an SMA rule with the same costs, printed, stored and logged.

Everything lands in `outputs/<run_id>/` (config, metrics history, trades, summary, checkpoints, exported
model) whether or not W&B is on. The daemon's default model (`models/best_model.onnx`) is replaced only when
asked: `training.publish=true` copies the export to `training.export_dir`, as `ai-trading models publish
<run_id>` does later (bot/publish.py). Ctrl-C stops training cleanly and carries on with the best checkpoint.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
import re
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import structlog

from adapters.costs import CostModel
from adapters.data.ohlcv import load_ohlcv
from adapters.data.sample import sample_path
from adapters.data.splits import TimeSplit, split_by_fraction, walk_forward
from adapters.errors import DataError
from bot.config import DataConfig, WandbConfig
from bot.errors import ConfigError
from bot.model.features import FeatureSpec
from bot.publish import PublishError
from monitoring.logging import configure_logging
from monitoring.run_store import FLAT_PPO_KEYS, RunWriter, json_safe, new_run_id, write_json
from training.cli import print_error
from training.overfitting import OverfittingConfig
from training.ppo_config import PPOConfig

log = structlog.get_logger()

EXIT_OK, EXIT_ERROR, EXIT_CONFIG = 0, 1, 2


@dataclass(frozen=True)
class WalkForwardConfig:
    """Walk-forward evaluation: train and test on K consecutive folds."""

    folds: int = 0
    """Number of folds; 0 runs one train/validation/test split."""
    expanding: bool = False
    """Train every fold from the first bar (expanding window) instead of a rolling window."""


@dataclass(frozen=True)
class TrainingConfig:
    """PPO and run settings (config/training/)."""

    ppo: PPOConfig = field(default_factory=PPOConfig)
    """The PPO hyperparameters (training.ppo.*; the trading defaults are in config/training/default.yaml, not
    PPOConfig's CartPole ones). `torch_threads` and `device` may say "auto", resolved when training starts; the
    seed is the root `seed`. The flat spellings of before (`training.lr`, `training.num_envs`) still work."""
    eval_every: int = 5
    """Updates between validation passes (checkpoint selection uses the validation split only)."""
    select_metric: str = "sharpe"
    """Validation metric that picks the best checkpoint (a field of the evaluation report; higher is better)."""
    publish: bool = False
    """Copy the exported model to export_dir, replacing the daemon's default model; off: it stays in the run."""
    export_dir: str = "models"
    """Where training.publish=true copies the model (best_model.onnx, .json, .pt, config.json)."""
    progress: bool | None = None
    """Show a progress bar; null shows it when stderr is a terminal."""
    walk_forward: WalkForwardConfig = field(default_factory=WalkForwardConfig)
    """Walk-forward mode (training.walk_forward.folds=K)."""
    embargo_bars: int | None = None
    """Bars left unused between train, validation and test; null = the observation's warm-up
    (FeatureSpec.min_history - 1), so no evaluated observation window reads a bar of an earlier part."""
    overfitting: OverfittingConfig = field(default_factory=OverfittingConfig)
    """How sweeps judge their trials: the DSR threshold and the CSCV groups of the PBO."""


def _model_config_type() -> type:
    from training.models import ModelConfig

    return ModelConfig


def _env_config_type() -> type:
    from training.env import EnvConfig

    return EnvConfig


@dataclass(frozen=True)
class TrainAppConfig:
    """The root config of a training run."""

    seed: int = 42
    """Seed of everything random (torch, envs, minibatch order)."""
    output_dir: str = "outputs"
    """Root of the run directories."""
    run_name: str | None = None
    """Run name; a timestamped id is made when null."""
    log_level: str = "INFO"
    """Log level."""
    data: DataConfig = field(default_factory=DataConfig)
    """Candles and splits."""
    env: Any = None
    """training.env.EnvConfig."""
    model: Any = None
    """training.models.ModelConfig."""
    training: TrainingConfig = field(default_factory=TrainingConfig)
    """PPO and run settings."""
    wandb: WandbConfig = field(default_factory=WandbConfig)
    """Weights & Biases."""
    costs: CostModel = field(default_factory=CostModel)
    """Fees and slippage (the paper venue's model)."""


def canonical_key(key: str) -> str:
    """Return today's spelling of a config key: `training.lr` is `training.ppo.learning_rate` (issue 10)."""
    section, _, name = key.partition(".")
    return f"training.ppo.{FLAT_PPO_KEYS[name]}" if section == "training" and name in FLAT_PPO_KEYS else key


def canonical_overrides(overrides: Sequence[str]) -> tuple[list[str], dict[str, str]]:
    """Respell the flat PPO keys of Hydra overrides (`training.lr=3e-4`); also return {new key: the key typed}."""
    result: list[str] = []
    typed: dict[str, str] = {}
    for override in overrides:
        body = override.lstrip("+~")
        key, sep, value = body.partition("=")
        new = canonical_key(key)
        if new != key:
            typed[new] = key
            override = f"{override[: len(override) - len(body)]}{new}{sep}{value}"
        result.append(override)
    return result, typed


def load_train_config(overrides: Sequence[str]) -> TrainAppConfig:
    """Compose config.yaml with overrides and build typed objects; ConfigError names a bad key as it was typed."""
    from bot.config import build, compose, own_file_window, unknown_key_message

    respelled, typed = canonical_overrides(overrides)
    # Hydra would name only today's keys; a typo of a flat spelling (`training.lrr`) is told the alias it missed.
    known = [f.name for f in dataclasses.fields(TrainingConfig)] + list(FLAT_PPO_KEYS)
    for override in overrides:
        section, _, name = override.lstrip("+~").partition("=")[0].partition(".")
        name = name.split(".")[0]
        if section == "training" and name and name not in known:
            raise ConfigError(unknown_key_message("training", name, known))
    try:
        raw = compose(own_file_window(respelled))
        env = build(_env_config_type(), raw.get("env"), "env")
        model = build(_model_config_type(), raw.get("model"), "model")
        rest = {k: v for k, v in raw.items() if k in {f.name for f in dataclasses.fields(TrainAppConfig)}}
        rest.pop("env", None)
        rest.pop("model", None)
        if "seed" in ((rest.get("training") or {}).get("ppo") or {}):
            raise ConfigError("training.ppo.seed: PPO is seeded by the root seed; set seed=N instead")
        app = build(TrainAppConfig, rest)
    except ConfigError as e:
        message = str(e)
        for new, old in typed.items():
            message = re.sub(rf"{re.escape(new)}\b", old, message)
        if message == str(e):
            raise
        raise ConfigError(message) from e
    # The record of the run (config.json, the model card) shows the seed PPO really gets.
    training = dataclasses.replace(app.training, ppo=dataclasses.replace(app.training.ppo, seed=app.seed))
    return dataclasses.replace(app, env=env, model=model, training=training)


def check_hardware(ppo: PPOConfig) -> None:
    """Refuse, before any work, a device or precision this machine does not have (`training.device=cuda` without
    CUDA, `training.ppo.precision=bf16` on a CPU without bfloat16): ConfigError naming the key."""
    from training.ppo import resolve_device, resolve_precision

    try:
        resolve_precision(ppo.precision, resolve_device(ppo.device))
    except ValueError as e:
        raise ConfigError(str(e)) from None


def check_model_overrides(family: str, overrides: Sequence[str]) -> None:
    """Refuse `model.KEY=...` when the chosen network ignores KEY (d_model on an mlp), naming the presets that use it.

    The command lines call it (a user's override that does nothing is a mistake); sweeps do not, since a
    sweep may search `model` and `model.d_model` together and an mlp trial ignoring d_model is expected.
    """
    from training.models import presets_using, unused_keys

    keys, chosen = [], "mlp"
    for override in overrides:
        key, _, value = override.lstrip("+~").partition("=")
        if key == "model":
            chosen = value
        elif key.startswith("model."):
            keys.append(key.removeprefix("model.").split(".")[0])
    unused = unused_keys(family, keys)
    if unused:
        users = presets_using(unused[0])
        raise ConfigError(
            f"model.{unused[0]}: the {family} network of model={chosen} does not use it; "
            f"the model presets that do: {', '.join(users)} "
            f"(e.g. ai-trading train model={users[0]} model.{unused[0]}=...)"
        )


# --- data --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Dataset:
    """Candles of a run and where they came from."""

    frame: pd.DataFrame
    path: Path
    sha256: str
    timeframe: str


def load_dataset(config: DataConfig) -> Dataset:
    """Load, validate and window the configured candles (bundled BTC/USDT 1h when data.path is null)."""
    path = Path(config.path) if config.path else sample_path()
    if not path.exists():
        raise DataError(f"data.path {path} does not exist")
    whole = load_ohlcv(path, gaps=config.gaps)
    frame = whole
    if config.start:
        frame = frame.loc[pd.Timestamp(config.start, tz="UTC") :]
    if config.end:
        frame = frame.loc[: pd.Timestamp(config.end, tz="UTC")]
    if len(frame) < 500:
        span = f"{whole.index[0]} .. {whole.index[-1]}" if len(whole) else "no candles"
        if not config.start and not config.end:
            raise DataError(f"{path}: only {len(frame)} candles ({span}); need at least 500")
        window = f"data.start={config.start or 'null'} and data.end={config.end or 'null'}"
        raise DataError(
            f"{path}: only {len(frame)} candles between {window} (the file holds {len(whole)}, {span}); "
            "need at least 500"
        )
    timeframe = str(frame.attrs.get("timeframe") or config.timeframe)
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    return Dataset(frame, path, digest, timeframe)


def code_version() -> str:
    """Package version plus the git commit when run from a checkout."""
    try:
        version = metadata.version("ai-trading")
    except metadata.PackageNotFoundError:
        version = "unknown"
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=Path(__file__).resolve().parent,
            capture_output=True,
            text=True,
            timeout=5,
            check=False,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        commit = ""
    return f"{version}+{commit}" if commit else version


# --- one training run ----------------------------------------------------------------------------------


ValidationHook = Callable[[int, Mapping[str, float]], None]
"""Called after every validation pass with the global step and the validation metrics (`sharpe`, ...)."""


@dataclass
class RunOutcome:
    """What one train/validate/test run produced."""

    run_dir: Path
    reports: dict[str, Any]
    table: str
    card_path: Path | None
    interrupted: bool
    published_path: Path | None = None
    """Where training.publish=true copied the model (the daemon's default path), else None."""


def train_once(
    cfg: TrainAppConfig,
    dataset: Dataset,
    split: TimeSplit,
    writer: RunWriter,
    *,
    fold: int | None = None,
    wandb_run: Any = None,
    on_validation: ValidationHook | None = None,
) -> RunOutcome:
    """Train on `split.train`, select on `split.validation`, export, and evaluate on `split.test`."""
    import torch

    from bot.evaluation import format_table
    from training.callbacks import Callback, CallbackContext
    from training.evaluation import evaluate_split, frame_with_warmup
    from training.export import export_onnx, training_distribution
    from training.models import DeterministicActor, build_actor_critic, window_transformers
    from training.ppo import PPO, resolve_device, resolve_precision, resolve_torch_threads
    from training.progress import ProgressCallback
    from training.vec_env import TradingVectorEnv
    from training.wandb_callback import WandbCallback

    env_cfg, tcfg = cfg.env, cfg.training
    frame = dataset.frame
    train_frame = split.train.take(frame)
    spec = FeatureSpec(window=env_cfg.window)
    vec_env = TradingVectorEnv(tcfg.ppo.num_envs, frame=train_frame, config=env_cfg, spec=spec, costs=cfg.costs)
    spec = vec_env.feature_spec  # fitted on the train split only
    validation_frame = frame_with_warmup(frame, split.validation, spec) if len(split.validation) else None
    test_frame = frame_with_warmup(frame, split.test, spec)

    total_timesteps = whole_updates(tcfg.ppo.total_timesteps, tcfg.ppo.batch_size)
    torch_threads = resolve_torch_threads(tcfg.ppo.torch_threads)
    device = resolve_device(tcfg.ppo.device)
    resolve_precision(tcfg.ppo.precision, device)  # refused here, before any work, where the hardware has no bf16
    # Threads before the model: initialisation differs in the last bits between thread counts.
    torch.set_num_threads(torch_threads)
    torch.manual_seed(cfg.seed)
    obs_dim = int(np.prod(spec.observation_shape))
    model = build_actor_critic(
        obs_dim, vec_env.single_action_space, cfg.model, window=spec.window, n_features=spec.n_features
    )
    ppo_config = dataclasses.replace(
        tcfg.ppo, total_timesteps=total_timesteps, seed=cfg.seed, torch_threads=torch_threads, device=device
    )
    prefix = f"fold{fold}/" if fold is not None else ""
    fold_suffix = f"-fold{fold}" if fold is not None else ""
    checkpoints = writer.dir / (f"fold{fold}" if fold is not None else "") / "checkpoints"
    checkpoints.mkdir(parents=True, exist_ok=True)

    # Validation and test passes encode every bar's window in batches, then act bar by bar.
    act = DeterministicActor(model)

    wandb_callback = WandbCallback(cfg.wandb, wandb_run) if wandb_run is not None else None

    class ValidationCheckpoint(Callback):
        """Every `eval_every` updates: validation pass, keep the best weights (validation split only)."""

        def __init__(self) -> None:
            self.best_score = -math.inf
            self.best_state: dict[str, Any] | None = None
            self.best_step = 0
            self.updates = 0
            self.seconds = 0.0
            """Wall-clock spent in validation passes and checkpointing."""

        def on_update(self, context: CallbackContext) -> bool:
            self.updates += 1
            if self.updates % max(1, tcfg.eval_every) and context.iteration < context.num_iterations:
                return True
            self.evaluate(context.global_step)
            return True

        def evaluate(self, global_step: int) -> None:
            evaluate_started = time.perf_counter()
            was_training = model.training
            model.eval()
            result = None
            try:
                if validation_frame is not None:
                    result = evaluate_split(
                        act, validation_frame, spec, env_cfg, cfg.costs, dataset.timeframe, baselines=False
                    )
                    report = result.reports["policy"]
                    score = float(getattr(report, tcfg.select_metric))
                    metrics = {f"{prefix}validation/{k}": v for k, v in report.to_dict().items() if _number(v)}
                else:
                    score, metrics = float(global_step), {}
            finally:
                model.train(was_training)
            score = score if math.isfinite(score) else -math.inf
            writer.log_metrics(global_step, metrics)
            improved = score > self.best_score or self.best_state is None
            if improved:
                self.best_score, self.best_step = score, global_step
                self.best_state = _cpu_state(model)
                torch.save(
                    {"state_dict": self.best_state, "global_step": global_step, "score": score},
                    checkpoints / "best.pt",
                )
                if result is not None:  # the selected checkpoint's per-bar returns: a sweep's PBO and DSR use them
                    writer.write_frame(f"{VALIDATION_RETURNS}{fold_suffix}", validation_returns(result.equity))
            torch.save({"state_dict": _cpu_state(model), "global_step": global_step}, checkpoints / "latest.pt")
            self.seconds += time.perf_counter() - evaluate_started
            if wandb_run is not None:
                wandb_run.log(
                    {**metrics, f"{prefix}validation/best_{tcfg.select_metric}": self.best_score}, step=global_step
                )
                if wandb_callback is not None:
                    wandb_callback.log_checkpoint(
                        checkpoints / "latest.pt", score=score, metadata={"global_step": global_step}
                    )
            log.info(
                "validation_evaluated",
                step=global_step,
                metric=tcfg.select_metric,
                score=score,
                best=self.best_score,
                improved=improved,
            )
            if on_validation is not None and validation_frame is not None:
                # Sweeps follow (and may prune on) validation results; an exception here stops the run.
                on_validation(global_step, {k.removeprefix(f"{prefix}validation/"): v for k, v in metrics.items()})

    class HistoryRecorder(Callback):
        """Write every update's metrics to the run directory (whether W&B is on or off)."""

        def on_update(self, context: CallbackContext) -> bool:
            writer.log_metrics(context.global_step, {f"{prefix}{k}": v for k, v in context.metrics.items()})
            return True

        def on_episode_end(self, context: CallbackContext) -> bool:
            if context.episode is not None:
                episode_return = context.episode.episode_return
                writer.log_metrics(context.global_step, {f"{prefix}charts/episodic_return": episode_return})
            return True

    checkpoint = ValidationCheckpoint()
    callbacks: list[Callback] = [HistoryRecorder(), checkpoint]
    if wandb_callback is not None:
        callbacks.append(wandb_callback)
    show_progress = sys.stderr.isatty() if tcfg.progress is None else tcfg.progress
    callbacks.append(ProgressCallback(total_timesteps, enabled=show_progress))

    interrupted = False
    started = time.perf_counter()
    ppo = PPO(vec_env, model, ppo_config, callbacks=callbacks)
    result = None
    try:
        result = ppo.learn()
    except KeyboardInterrupt:
        interrupted = True
        log.warning("training_interrupted", note="keeping the best checkpoint so far")
    train_seconds = time.perf_counter() - started
    if checkpoint.best_state is None:
        checkpoint.evaluate(0)
    assert checkpoint.best_state is not None
    model.load_state_dict(checkpoint.best_state)
    model.eval()

    # Honest out-of-sample evaluation on the test split, with the selected checkpoint.
    test_started = time.perf_counter()
    test = evaluate_split(act, test_frame, spec, env_cfg, cfg.costs, dataset.timeframe)
    test_seconds = time.perf_counter() - test_started
    reports = {name: report.to_dict() for name, report in test.reports.items()}
    table = format_table(test.reports)
    split_name = f"{prefix}test".replace("/", "-")
    writer.write_trades(test.trades.to_dict("records"), split=split_name)
    writer.write_frame(f"equity-{split_name}", test.equity.rename("equity").to_frame())

    data_range = {
        name: {"first": v["first"], "last": v["last"], "rows": v["rows"]} for name, v in split.describe(frame).items()
    }
    purge = {"embargo_bars": split.embargo_bars, "observation_warmup_bars": spec.min_history - 1}
    parity_frame = split.train.take(frame)
    parity = _raw_observations(parity_frame, spec, 1200)
    model_dir = writer.dir / (f"fold{fold}" if fold is not None else "") / "models"
    card_path: Path | None = None
    export_started = time.perf_counter()
    model.cpu()  # export and its parity check run on the CPU, where the daemon runs the model
    card = export_onnx(
        model,
        feature_spec=spec.to_dict(),
        action_mapping=(_action_range(env_cfg) if env_cfg.continuous else [float(a) for a in env_cfg.actions]),
        data_range={
            "start": str(data_range["train"]["first"]),
            "end": str(data_range["test"]["last"]),
            "source": str(dataset.path),
            "sha256": dataset.sha256,
            "timeframe": dataset.timeframe,
            **{f"{k}_{e}": str(v[e]) for k, v in data_range.items() for e in ("first", "last")},
        },
        parity_observations=parity,
        feature_distribution=training_distribution(spec, parity_frame),
        out_dir=model_dir,
        run_id=writer.run_id,
        run_url=getattr(wandb_run, "url", None) if wandb_run is not None else None,
        config=json_safe(dataclasses.asdict(cfg)),
        model_config=dataclasses.asdict(cfg.model),
        code_version=code_version(),
        metrics={
            "test": reports,
            "validation_best": {tcfg.select_metric: checkpoint.best_score},
            "costs": dataclasses.asdict(cfg.costs),
            "purge": purge,
        },
    )
    card_path = model_dir / "best_model.json"
    export_seconds = time.perf_counter() - export_started
    summary_extra = {
        "train_seconds": train_seconds,
        "timings": {
            "device": device,
            # What the run computed in: an MLP has no window encoder, so bf16 leaves it float32.
            "precision": tcfg.ppo.precision if window_transformers(model) else "fp32",
            "torch_threads": torch_threads,
            "global_step": result.global_step if result is not None else None,
            "rollout_seconds": result.rollout_seconds if result is not None else None,
            "update_seconds": result.update_seconds if result is not None else None,
            "validation_seconds": checkpoint.seconds,
            "train_seconds": train_seconds,
            "test_seconds": test_seconds,
            "export_seconds": export_seconds,
        },
        "total_timesteps": total_timesteps,
        "best_checkpoint_step": checkpoint.best_step,
        f"best_validation_{tcfg.select_metric}": checkpoint.best_score,
        "interrupted": interrupted,
        "model_sha256": card.sha256 if hasattr(card, "sha256") else None,
        "data_range": data_range,
        "purge": purge,
    }
    if wandb_callback is not None:
        wandb_callback.log_evaluation(f"{prefix}test", reports, test.trades, test.equity)
        if cfg.wandb.log_model:
            wandb_callback.log_files(
                sorted(p for p in model_dir.iterdir() if p.is_file()),
                name=f"onnx-{writer.run_id}",
                aliases=["latest", "best"],
            )
    return RunOutcome(writer.dir, {"test": reports, **summary_extra}, table, card_path, interrupted)


def _stamp_walk_forward(cfg: TrainAppConfig, outcomes: Sequence[tuple[int | None, RunOutcome]]) -> None:
    """Put every fold's test figures on every fold's model card (`metrics.walk_forward`), one by one.

    A fold's card is written when that fold ends, before the later folds exist; each card then says how the
    whole walk-forward went, not only its own fold (which the card's `metrics.test` holds).
    """
    from training.export import amend_card

    block = {
        "folds": {str(fold): outcome.reports["test"] for fold, outcome in outcomes},
        "expanding": cfg.training.walk_forward.expanding,
        "planned_folds": cfg.training.walk_forward.folds,
    }
    for fold, outcome in outcomes:
        if outcome.card_path is not None:
            amend_card(outcome.card_path.with_suffix(".onnx"), {"walk_forward": {**block, "this_fold": fold}})


def _cpu_state(model: Any) -> dict[str, Any]:
    """A copy of the model's state dict on the CPU (checkpoints load anywhere; the weights can change after)."""
    return {name: value.detach().to("cpu", copy=True) for name, value in model.state_dict().items()}


def whole_updates(total_timesteps: int, update_steps: int) -> int:
    """Round a step budget up to whole PPO updates (num_envs × num_steps each), logging when it changes."""
    updates = max(1, math.ceil(total_timesteps / update_steps))
    rounded = updates * update_steps
    if rounded != total_timesteps:
        log.info(
            "total_timesteps_rounded",
            requested=total_timesteps,
            used=rounded,
            updates=updates,
            update_steps=update_steps,
            note="PPO trains in whole updates of training.ppo.num_envs x training.ppo.num_steps env steps",
        )
    return rounded


VALIDATION_RETURNS = "validation-returns"
"""Run-directory table (`<name>[-fold<k>].parquet`): per-bar returns of the selected checkpoint on validation."""


def validation_returns(equity: pd.Series) -> pd.DataFrame:
    """Per-bar simple returns of an equity curve, indexed by bar time (the first bar has none)."""
    returns = equity.astype(float).pct_change().iloc[1:]
    return returns.rename("return").rename_axis("time").to_frame()


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _action_range(env_cfg: Any) -> Any:
    from bot.model.card import ActionRange

    return ActionRange(low=float(min(env_cfg.actions)), high=float(max(env_cfg.actions)))


def _raw_observations(frame: pd.DataFrame, spec: FeatureSpec, count: int) -> np.ndarray:
    """Raw (unnormalised) observations from real candles, with varied position state, for export parity."""
    from bot.model.features import candle_arrays, compute_features

    ts, o, h, low, c, v = candle_arrays(frame)
    raw, valid = compute_features(spec, ts, o, h, low, c, v)
    width = spec.window * spec.n_features
    rows = np.flatnonzero(valid)
    ends = rows[rows >= rows[0] + spec.window - 1] if len(rows) else rows
    rng = np.random.default_rng(0)
    picked = rng.choice(ends, size=min(count, len(ends)), replace=len(ends) < count)
    obs = np.zeros((len(picked), width + len(spec.state_names)), dtype=np.float32)
    for i, end in enumerate(picked):
        obs[i, :width] = raw[end - spec.window + 1 : end + 1].ravel()
    obs[:, width:] = rng.uniform(-1, 1, size=(len(picked), len(spec.state_names)))
    return obs


# --- entry point -----------------------------------------------------------------------------------------


def embargo_bars(cfg: TrainAppConfig) -> int:
    """Bars purged between split parts: configured, or the observation's warm-up (min_history - 1)."""
    if cfg.training.embargo_bars is not None:
        if cfg.training.embargo_bars < 0:
            raise ValueError(f"training.embargo_bars must be >= 0, was {cfg.training.embargo_bars}")
        return cfg.training.embargo_bars
    return FeatureSpec(window=cfg.env.window).min_history - 1


def _splits(cfg: TrainAppConfig, frame: pd.DataFrame) -> list[tuple[int | None, TimeSplit]]:
    data = cfg.data
    test_fraction = 1.0 - data.train_fraction - data.validation_fraction
    folds = cfg.training.walk_forward.folds
    embargo = embargo_bars(cfg)
    if folds <= 0:
        split = split_by_fraction(
            frame, data.train_fraction, data.validation_fraction, test_fraction, embargo_bars=embargo
        )
        return [(None, split)]
    n = len(frame)
    test_bars = int(n * test_fraction / folds)
    validation_bars = int(n * data.validation_fraction / folds)
    chosen = walk_forward(
        frame,
        folds,
        test_bars=test_bars,
        validation_bars=validation_bars,
        embargo_bars=embargo,
        expanding=cfg.training.walk_forward.expanding,
    )
    return [(f.number, f) for f in chosen]


def run(cfg: TrainAppConfig, *, wandb_run: Any = None, on_validation: ValidationHook | None = None) -> RunOutcome:
    """Train (one split or walk-forward folds), export, evaluate, print the table; return the outcome.

    `wandb_run` is a W&B run already started by the caller (a sweep agent's trial) to log into instead of
    starting one; it is finished at the end. `on_validation` sees every validation pass (sweep pruning).
    """
    dataset = load_dataset(cfg.data)
    run_id = cfg.run_name or new_run_id("train")
    resolved = json_safe(dataclasses.asdict(cfg))
    run_config = {
        **resolved,
        "data_file": str(dataset.path),
        "data_sha256": dataset.sha256,
        "data_span": [str(dataset.frame.index[0]), str(dataset.frame.index[-1])],
        "data_rows": len(dataset.frame),
        "code_version": code_version(),
    }
    writer = RunWriter(cfg.output_dir, run_id, config=run_config)
    with structlog.contextvars.bound_contextvars(run_id=run_id):
        return _run(cfg, dataset, writer, run_config, wandb_run, on_validation)


def _run(
    cfg: TrainAppConfig,
    dataset: Dataset,
    writer: RunWriter,
    run_config: dict[str, Any],
    wandb_run: Any = None,
    on_validation: ValidationHook | None = None,
) -> RunOutcome:
    run_id = writer.run_id
    if wandb_run is None and cfg.wandb.enabled:
        from training.wandb_callback import init_run

        wandb_run = init_run(cfg.wandb, run_config, job_type="train", name=run_id, directory=writer.dir)
    outcomes: list[tuple[int | None, RunOutcome]] = []
    try:
        for fold, split in _splits(cfg, dataset.frame):
            log.info("split_prepared", fold=fold, **{k: v["rows"] for k, v in split.describe(dataset.frame).items()})
            outcome = train_once(
                cfg, dataset, split, writer, fold=fold, wandb_run=wandb_run, on_validation=on_validation
            )
            outcomes.append((fold, outcome))
            if outcome.interrupted:
                break
    except BaseException:
        writer.close()
        if wandb_run is not None:
            wandb_run.finish(exit_code=1)
        raise
    summary: dict[str, Any] = {"run_id": run_id, "wandb_run_id": getattr(wandb_run, "id", None)}
    if len(outcomes) == 1 and outcomes[0][0] is None:
        summary.update(outcomes[0][1].reports)
    else:
        summary["folds"] = {str(f): o.reports for f, o in outcomes}
        _stamp_walk_forward(cfg, outcomes)
    writer.write_summary(summary)
    writer.close()
    final = outcomes[-1][1]
    sync_dir: Path | None = None
    published: Path | None = None
    if final.card_path is not None and cfg.training.publish:
        from bot.publish import publish_model

        published = publish_model(final.card_path.parent, Path(cfg.training.export_dir))
        log.info("model_published", path=str(published), run_id=run_id)
    final.published_path = published
    if wandb_run is not None:
        for key, value in _flatten(summary).items():
            if _number(value):
                wandb_run.summary[key] = value
        files_dir = getattr(wandb_run, "dir", None)  # <wandb dir>/offline-run-.../files, wherever WANDB_DIR put it
        sync_dir = Path(files_dir).parent if files_dir else None
        wandb_run.finish()
    for fold, outcome in outcomes:
        heading = "Test split" if fold is None else f"Fold {fold} test split"
        print(f"\n{heading} (out of sample, after fees and slippage):\n{outcome.table}")
    print(f"\nrun directory: {writer.dir}")
    if final.card_path is not None:
        print(f"exported model: {final.card_path.with_suffix('.onnx')} (card beside it)")
        if published is not None:
            print(f"published as the daemon's default model: {published} (training.publish=true)")
        else:
            print(
                f"not published (the daemon's default model is unchanged); to use it: "
                f"ai-trading models publish {run_id} --output-dir {cfg.output_dir}"
            )
    if wandb_run is not None and cfg.wandb.resolved().mode == "offline":
        print(f"W&B offline run: sync it with `wandb sync {sync_dir or writer.dir / 'wandb'}`")
    write_json(writer.dir / "outcome.json", {"interrupted": final.interrupted})
    return final


def _flatten(data: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(data, dict):
        flat: dict[str, Any] = {}
        for key, value in data.items():
            flat.update(_flatten(value, f"{prefix}{key}/"))
        return flat
    return {prefix.rstrip("/"): data}


USAGE = """usage: ai-trading train [key=value ...]   (also: python -m training.train)

Train a PPO policy on candles, select it on the validation split, export it to ONNX and evaluate it
out of sample against buy-and-hold and an SMA rule. Overrides use Hydra syntax, for example:

  ai-trading train wandb.enabled=true
  ai-trading train wandb.enabled=true wandb.log_frequency.steps=10 wandb.log_model=true
  ai-trading train wandb.enabled=true model=transformer_small   (or _medium, _large, mlp)
  ai-trading train model=transformer_small training.ppo.precision=bf16   (the encoder in bfloat16: 1.7-1.9x faster where
      the CPU has AVX512-BF16 or AMX, or on CUDA; refused elsewhere)
  ai-trading train model=transformer_small model.d_model=96 training.lr=0.0002 env.reward_scaling=2.5
  ai-trading train data.path=FILE training.total_timesteps=50000 seed=3 training.walk_forward.folds=3
  ai-trading train training.publish=true   (also make the export the daemon's default models/best_model.onnx)

Every run keeps its exported model in outputs/<run_id>/models/; `ai-trading models publish RUN` makes
it the daemon's default model later.

Groups: data, env, model, training, wandb, costs (see config/ in the package).
"""


def main(argv: Sequence[str] | None = None) -> int:
    """Run training from command-line overrides; exit 0 ok, 1 error, 2 bad config."""
    args = list(sys.argv[1:] if argv is None else argv)
    if any(a in ("-h", "--help") for a in args):
        print(USAGE)
        return EXIT_OK
    try:
        cfg = load_train_config(args)
        check_model_overrides(cfg.model.name, args)
        check_hardware(cfg.training.ppo)
    except ConfigError as e:
        print_error("ai-trading train", e)
        return EXIT_CONFIG
    configure_logging(cfg.log_level)
    try:
        run(cfg)
    except (DataError, ValueError, PublishError) as e:
        print_error("ai-trading train", e)
        return EXIT_ERROR
    return EXIT_OK


if __name__ == "__main__":
    raise SystemExit(main())
