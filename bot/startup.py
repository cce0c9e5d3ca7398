"""Start-up of the daemon: the checks that refuse a start, the model, and what the config implies.

Start-up refuses, with one line naming the problem and exit 2 (`bot.errors`), a missing/corrupt/mismatched
model card, a bad config, an unconfirmed live start, and a model whose card disagrees with the data.
Every mode publishes its events to the sinks of `sinks_of`.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import structlog

from adapters.errors import FatalError
from adapters.secrets import Credentials, load_credentials
from adapters.types import timeframe_seconds
from bot.app_config import BotAppConfig
from bot.errors import ConfigError, DataMismatch, ModelRefused, StartupError
from bot.ledger.shadows import LIVE_MODEL
from bot.ledger.store import Ledger
from bot.model.card import ModelCardError
from bot.model.policy import OnnxPolicy

log = structlog.get_logger()

CONFIRM_LIVE_ENV = "AI_TRADING_CONFIRM_LIVE"
"""Environment variable that confirms a live start, like bot.confirm_live=true."""
WANDB_PREFIX = "wandb:"


# --------------------------------------------------------------------------------------------- start-up checks


def is_live_confirmed(cfg: BotAppConfig, env: Mapping[str, str]) -> bool:
    """Return whether a live start is confirmed by config or environment."""
    return cfg.bot.confirm_live or env.get(CONFIRM_LIVE_ENV, "").strip().lower() in ("1", "true", "yes")


def check_live_start(cfg: BotAppConfig, env: Mapping[str, str] | None = None) -> Credentials:
    """Refuse a live start without explicit confirmation and API keys; return the credentials."""
    environ = os.environ if env is None else env
    if not is_live_confirmed(cfg, environ):
        raise ConfigError(
            "mode=live sends real orders: confirm with bot.confirm_live=true or "
            f"{CONFIRM_LIVE_ENV}=1 (use mode=paper to trade on paper)"
        )
    secrets = Path(cfg.exchange.secrets_file) if cfg.exchange.secrets_file else None
    try:
        credentials = load_credentials(cfg.exchange.exchange_id, env=environ, secrets_file=secrets)
    except FatalError as e:
        raise ConfigError(f"mode=live needs API keys: {e}") from e
    assert credentials is not None
    return credentials


def resolve_model_path(cfg: BotAppConfig) -> Path:
    """Return the local ONNX path of bot.model_path, downloading a `wandb:` artifact reference first."""
    return resolve_model_ref(cfg, cfg.bot.model_path, "bot.model_path")


def resolve_model_ref(cfg: BotAppConfig, ref: str, key: str) -> Path:
    """Return the local ONNX path of the config value `key` = `ref`: a file, or a `wandb:` artifact downloaded."""
    if not ref.startswith(WANDB_PREFIX):
        return Path(ref)
    name = ref[len(WANDB_PREFIX) :]
    if name.count("/") != 2 or ":" not in name.rsplit("/", 1)[1]:
        raise ConfigError(f"{key} {ref!r}: a W&B reference looks like wandb:entity/project/name:alias")
    from monitoring.wandb_server import server_status

    usable, why = server_status()
    if not usable:
        raise StartupError(f"{key} {ref!r} needs a W&B server: {why}; or point {key} at a file")
    try:
        import wandb

        artifact = wandb.Api().artifact(name)
        root = Path(artifact.download(root=str(Path(cfg.output_dir) / "artifacts" / name.replace(":", "-"))))
    except Exception as e:  # wandb raises many kinds (network, auth, missing artifact)
        raise StartupError(f"cannot fetch model artifact {name!r} from W&B: {e}") from e
    models = sorted(root.rglob("*.onnx"))
    if len(models) != 1:
        raise ModelRefused(f"W&B artifact {name!r} holds {len(models)} .onnx files under {root}; expected one")
    return models[0]


def load_policy(cfg: BotAppConfig) -> OnnxPolicy:
    """Load the policy with its card; a missing, corrupt or mismatched card stops the start."""
    path = resolve_model_path(cfg)
    try:
        return OnnxPolicy.load(path)
    except ModelCardError as e:
        raise ModelRefused(f"model refused: {e}") from e


def shadow_name(ref: str, path: Path) -> str:
    """Return a shadow model's name: its W&B artifact name (without the alias), or its file's stem."""
    if ref.startswith(WANDB_PREFIX):
        return ref[len(WANDB_PREFIX) :].rsplit("/", 1)[1].split(":", 1)[0]
    return path.stem


def load_shadows(cfg: BotAppConfig, live: OnnxPolicy, *, timeframe: str) -> list[tuple[str, OnnxPolicy]]:
    """Load bot.shadow_models, each with its verified card; refuse the start (one line) for any that cannot run.

    A shadow is refused when its file or card is missing, corrupt or mismatched, when its card was trained on
    another timeframe than the one traded, when two shadows share a name, or when it is the live model itself."""
    shadows: list[tuple[str, OnnxPolicy]] = []
    for index, ref in enumerate(cfg.bot.shadow_models):
        key = f"bot.shadow_models[{index}]"
        path = resolve_model_ref(cfg, ref, key)
        try:
            policy = OnnxPolicy.load(path)
        except ModelCardError as e:
            raise ModelRefused(f"shadow model refused ({key}): {e}") from e
        name = shadow_name(ref, path)
        if policy.sha256 == live.sha256:
            raise ConfigError(f"{key} {ref!r} is the live model itself (sha256 {live.sha256[:12]})")
        if name == LIVE_MODEL:
            raise ConfigError(f"{key} {ref!r}: {LIVE_MODEL!r} names the live policy in the ledger; rename the file")
        if any(name == other for other, _ in shadows):
            raise ConfigError(f"{key} {ref!r}: another shadow model is already named {name!r}; rename its file")
        try:
            check_card_agrees(policy, timeframe=timeframe, symbols=(), source="the traded")
        except DataMismatch as e:
            raise ModelRefused(f"shadow model refused ({key}): {e}") from e
        shadows.append((name, policy))
    return shadows


def unkept_promotion(ledger: Ledger, live: OnnxPolicy) -> str | None:
    """Say so when the ledger's last `promote` made another model live than the one this start runs, else None.

    A promotion lasts until the daemon stops: a restart runs bot.model_path again. Blocking (SQLite): call it off
    the event loop."""
    payloads = ledger.event_payloads("model_promoted")
    if not payloads:
        return None
    last = json.loads(payloads[-1])
    if last.get("sha256") == live.sha256:
        return None
    return (
        f"the last promote ({last.get('ts')}) made {last.get('model')} ({last.get('path')}, sha256 "
        f"{str(last.get('sha256'))[:12]}) live, but this start runs bot.model_path={live.onnx_path} (sha256 "
        f"{live.sha256[:12]}); set bot.model_path to the promoted file to keep it"
    )


# --------------------------------------------------------------------------------------------- card and data


def card_timeframe(policy: OnnxPolicy) -> str | None:
    """Return the timeframe the model was trained on, as its card says (None when the card does not say)."""
    value = policy.card.data_range.get("timeframe")
    if value is None:
        data = policy.card.training_config.get("data")
        value = data.get("timeframe") if isinstance(data, Mapping) else None
    return str(value) if value else None


def card_symbol(policy: OnnxPolicy) -> str | None:
    """Return the symbol the model was trained on, as its card says (None when the card does not say)."""
    value = policy.card.data_range.get("symbol")
    if value is None:
        data = policy.card.training_config.get("data")
        value = data.get("symbol") if isinstance(data, Mapping) else None
    return str(value) if value else None


def check_card_agrees(policy: OnnxPolicy, *, timeframe: str, symbols: Sequence[str], source: str) -> None:
    """Refuse (DataMismatch) data of another timeframe than the card's; warn once when the symbol differs.

    `source` names where `timeframe` comes from in the message ("the file data/x.parquet", "the feed").
    """
    trained = card_timeframe(policy)
    if trained is not None:
        try:
            same = timeframe_seconds(trained) == timeframe_seconds(timeframe)
        except ValueError:
            same = trained == timeframe
        if not same:
            raise DataMismatch(
                f"model card timeframe {trained} != {source} timeframe {timeframe}: the model "
                f"{policy.onnx_path.name} was trained on {trained} candles; trade it on {trained} candles or "
                "train a model on these"
            )
    symbol = card_symbol(policy)
    others = [s for s in symbols if symbol is not None and s != symbol]
    if others:
        log.warning("model_symbol_differs", card_symbol=symbol, symbols=others, model=str(policy.onnx_path))
