"""Hydra config loading into typed, frozen dataclasses, with errors that name the offending key.

Entry points call :func:`load_config` once with their root schema and the command-line overrides; nothing
else imports hydra or omegaconf. The YAML tree ships inside the package (``config/``) and is found through
Hydra's ``pkg://config`` search path, so it works from an installed wheel as well as from a checkout.

Hydra composes the YAML (defaults list, groups, ``key=value`` overrides); this module then converts the
plain result into the schema dataclasses with a strict converter: an unknown key, a missing required key or
a value of the wrong type raises :class:`ConfigError` naming the full key (``env.window: expected int, got
'abc'``). Entry points turn that into exit code 2.
"""

from __future__ import annotations

import dataclasses
import difflib
import os
import re
import types
import typing
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from enum import Enum
from pathlib import Path
from typing import Any, Literal, TypeVar, get_args, get_origin, get_type_hints

from adapters.data.policy import DEFAULT_GAPS
from adapters.types import split_symbol, timeframe_seconds
from bot.errors import ConfigError

T = TypeVar("T")

CONFIG_MODULE = "config"


@dataclass(frozen=True)
class LogFrequency:
    """How often training logs to W&B."""

    steps: int = 1000
    """Log step-level metrics every this many environment steps."""


@dataclass(frozen=True)
class WandbConfig:
    """Weights & Biases settings shared by training, sweeps and the daemon (config/wandb.yaml)."""

    enabled: bool = False
    """Log to W&B at all; when false nothing is built for it and nothing is paid."""
    project: str = "ai-trading"
    """W&B project; the environment variable WANDB_PROJECT overrides it."""
    entity: str | None = None
    """W&B entity (user or team); WANDB_ENTITY overrides it."""
    mode: Literal["online", "offline", "disabled"] = "offline"
    """W&B mode; offline needs no network and no key (sync later with `wandb sync`)."""
    log_frequency: LogFrequency = field(default_factory=LogFrequency)
    """Step-level logging cadence."""
    log_model: bool = False
    """Save checkpoints as versioned W&B artifacts (aliases `latest`, `best`)."""
    tags: tuple[str, ...] = ()
    """Tags attached to every run."""
    group: str | None = None
    """Optional run group (sweeps set it)."""

    def resolved(self, env: Mapping[str, str] | None = None) -> WandbConfig:
        """Apply WANDB_PROJECT / WANDB_ENTITY / WANDB_MODE from the environment over the file values."""
        env = os.environ if env is None else env
        changes: dict[str, Any] = {}
        if env.get("WANDB_PROJECT"):
            changes["project"] = env["WANDB_PROJECT"]
        if env.get("WANDB_ENTITY"):
            changes["entity"] = env["WANDB_ENTITY"]
        mode = env.get("WANDB_MODE")
        if mode in ("online", "offline", "disabled"):
            changes["mode"] = mode
        return dataclasses.replace(self, **changes) if changes else self


@dataclass(frozen=True)
class DataConfig:
    """Which candles to use and how to treat problems in them (config/data/)."""

    path: str | None = None
    """Candle file (parquet, CSV, Freqtrade JSON/feather); null means the bundled BTC/USDT 1h sample."""
    symbol: str = "BTC/USDT"
    """Symbol the candles belong to."""
    timeframe: str = "1h"
    """Candle timeframe, e.g. 1m, 5m, 1h."""
    start: str | None = None
    """First timestamp to use (ISO date, UTC), or null for the start of the file."""
    end: str | None = None
    """Last timestamp to use (ISO date, UTC), or null for the end of the file."""
    gaps: Literal["error", "drop", "ffill", "allow"] = DEFAULT_GAPS
    """Policy for missing candles; real exchange history has outages, so they are reported and kept by default
    (the same default as `ai-trading data check`)."""
    train_fraction: float = 0.7
    """Share of the rows used for training (chronologically first)."""
    validation_fraction: float = 0.15
    """Share used for checkpoint selection; the rest is the held-out test split."""

    def __post_init__(self) -> None:
        check_named("data.symbol", split_symbol, self.symbol, ConfigError)
        check_named("data.timeframe", timeframe_seconds, self.timeframe, ConfigError)
        if not (0 < self.train_fraction < 1 and 0 <= self.validation_fraction < 1):
            raise ConfigError("data.train_fraction and data.validation_fraction must be in (0, 1)")
        if self.train_fraction + self.validation_fraction >= 1:
            raise ConfigError(
                "data.train_fraction + data.validation_fraction must be < 1 (the rest is the test split), "
                f"was {self.train_fraction + self.validation_fraction}"
            )


def check_named(key: str, check: Callable[[Any], object], value: Any, error: type[Exception] = ValueError) -> None:
    """Run `check(value)`; the ValueError it raises comes back as `error`, its message prefixed with `key` (the
    one line a user sees, with no traceback of the check behind it)."""
    try:
        check(value)
    except ValueError as e:
        raise error(f"{key}: {e}") from None


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def convert(tp: Any, value: Any, key: str) -> Any:
    """Convert a plain (YAML-derived) value into `tp`, raising ConfigError that names `key`."""
    origin = get_origin(tp)
    if tp is Any:
        return value
    if origin is typing.Union or origin is types.UnionType:
        args = get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return convert(arg, value, key)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(f"{key}: expected {_type_name(tp)}, got {value!r}")
    if origin is Literal:
        allowed = get_args(tp)
        if value not in allowed:
            raise ConfigError(f"{key}: must be one of {', '.join(map(repr, allowed))}, got {value!r}")
        return value
    if dataclasses.is_dataclass(tp) and isinstance(tp, type):
        return build(tp, value, key)
    if isinstance(tp, type) and issubclass(tp, Enum):
        try:
            return tp(value)
        except ValueError:
            names = ", ".join(repr(m.value) for m in tp)
            raise ConfigError(f"{key}: must be one of {names}, got {value!r}") from None
    if origin in (tuple, list, Sequence) or tp in (tuple, list):
        if isinstance(value, str | bytes) or not isinstance(value, Sequence):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        args = get_args(tp)
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(args) != len(value):
                raise ConfigError(f"{key}: expected {len(args)} items, got {len(value)}")
            return tuple(convert(a, v, f"{key}[{i}]") for i, (a, v) in enumerate(zip(args, value, strict=True)))
        item_tp = args[0] if args else Any
        items = [convert(item_tp, v, f"{key}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if origin is tuple or tp is tuple else items
    if origin in (dict, Mapping) or tp is dict:
        if not isinstance(value, Mapping):
            raise ConfigError(f"{key}: expected a mapping, got {value!r}")
        args = get_args(tp)
        key_tp, val_tp = args if args else (Any, Any)
        return {convert(key_tp, k, f"{key}.{k}"): convert(val_tp, v, f"{key}.{k}") for k, v in value.items()}
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{key}: expected true or false, got {value!r}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ConfigError(f"{key}: expected an integer, got {value!r}")
    if tp is float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
        raise ConfigError(f"{key}: expected a number, got {value!r}")
    if tp is str:
        if isinstance(value, str):
            return value
        if isinstance(value, int | float) and not isinstance(value, bool):
            return str(value)
        raise ConfigError(f"{key}: expected a string, got {value!r}")
    if tp is Decimal:
        try:
            if isinstance(value, bool):
                raise InvalidOperation
            return Decimal(str(value))
        except InvalidOperation:
            raise ConfigError(f"{key}: expected a decimal number, got {value!r}") from None
    if tp is Path:
        if isinstance(value, str):
            return Path(value)
        raise ConfigError(f"{key}: expected a path, got {value!r}")
    raise ConfigError(f"{key}: unsupported config type {_type_name(tp)}")


def unknown_key_message(parent: str, name: str, known: Iterable[str]) -> str:
    """`training.lrr: unknown key; did you mean training.lr? (training accepts ...)`, suggested by difflib."""
    prefix = f"{parent}." if parent else ""
    choices = sorted(str(k) for k in known)
    close = difflib.get_close_matches(name, choices, n=1, cutoff=0.6)
    hint = f"; did you mean {prefix}{close[0]}?" if close else ""
    return f"{prefix}{name}: unknown key{hint} ({parent or 'the config'} accepts {', '.join(choices)})"


def build(cls: type[T], values: Any, key: str = "") -> T:
    """Build dataclass `cls` from a mapping, strictly: unknown keys and wrong types are ConfigErrors."""
    where = key or "config"
    if values is None:
        values = {}
    if not isinstance(values, Mapping):
        raise ConfigError(f"{where}: expected a mapping of settings, got {values!r}")
    hints = get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(values) - set(fields))
    if unknown:
        raise ConfigError(unknown_key_message(key, str(unknown[0]), fields))
    kwargs: dict[str, Any] = {}
    for name, f in fields.items():
        full = f"{key}.{name}" if key else name
        if name in values:
            kwargs[name] = convert(hints[name], values[name], full)
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise ConfigError(f"{full}: missing required setting")
    try:
        return cls(**kwargs)
    except ConfigError:
        raise
    except (ValueError, TypeError) as e:
        raise ConfigError(_named(where, str(e), cls.__name__)) from e


def _named(where: str, message: str, owner: str = "") -> str:
    """`message` of a __post_init__ check, led by the full key once: `bot.capital.quote must be ...`.

    A check may name its key in full (`bot.drift.window: ...`), from its own section (`capital.quote must ...`,
    raised by the dataclass behind `bot.capital`), as a field of its class `owner` (`PPOConfig.num_envs must ...`,
    raised by the dataclass behind `training.ppo`), or not at all; the section is never named twice.
    """
    head = message.split(" ", 1)[0].rstrip(":")
    if owner and head.startswith(f"{owner}.") and where != "config":
        return f"{where}.{message.removeprefix(f'{owner}.')}"
    if head == where or head.startswith(f"{where}."):
        return message
    parent, _, section = where.rpartition(".")
    if "." in head and head.split(".", 1)[0] == section and parent:
        return f"{parent}.{message}"
    return f"{where}: {message}"


def own_file_window(overrides: Sequence[str]) -> list[str]:
    """With `data.path=FILE` and no `data.start`/`data.end`, add `data.start=null data.end=null`.

    The window in config/data/ (`start: 2023-01-01`) belongs to the bundled file, not the user's: a file of
    2021 candles would otherwise hold no candle in it. Training, sweeps and backtests all cover the file's own
    span unless the user names a window.
    """
    result = list(overrides)
    keys = {a.partition("=")[0].lstrip("+") for a in result}
    if "data.path" in keys:
        result += [f"data.{k}=null" for k in ("start", "end") if f"data.{k}" not in keys]
    return result


def compose(overrides: Sequence[str] = (), config_name: str = "config") -> dict[str, Any]:
    """Compose the packaged YAML tree with Hydra and `key=value` overrides into a plain dict."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_module
    from hydra.core.global_hydra import GlobalHydra
    from hydra.errors import HydraException, MissingConfigException
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    GlobalHydra.instance().clear()
    try:
        with initialize_config_module(config_module=CONFIG_MODULE, version_base="1.3"):
            cfg = hydra_compose(config_name=config_name, overrides=list(overrides))
        container = OmegaConf.to_container(cfg, resolve=True)
    except MissingConfigException as e:
        raise ConfigError(_missing_option_message(e, overrides)) from e
    except (HydraException, OmegaConfBaseException) as e:
        message = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        bad = re.match(r"Could not override '([^']+)'", message)
        if bad:
            raise ConfigError(_unknown_override_message(bad.group(1), overrides, config_name)) from e
        raise ConfigError(f"bad configuration: {message}") from e
    finally:
        GlobalHydra.instance().clear()
    if not isinstance(container, dict):
        raise ConfigError("bad configuration: the root is not a mapping")
    return {str(k): v for k, v in container.items()}


def _missing_option_message(error: Any, overrides: Sequence[str]) -> str:
    """`model=transformer_huge: no such model preset; choose one of mlp, transformer_small, ...`."""
    missing = str(getattr(error, "missing_cfg_file", None) or "")
    group, _, option = missing.rpartition("/")
    options = sorted(getattr(error, "options", None) or [])
    if not group or not options:
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        return f"bad configuration: {first}"
    noun = "model preset" if group == "model" else f"{group} config"
    return f"{group}={option}: no such {noun}; choose one of {', '.join(options)}"


def _config_groups() -> set[str]:
    """Names of the config groups (the folders of the packaged YAML tree: model, env, training, ...)."""
    from importlib import resources

    return {entry.name for entry in resources.files(CONFIG_MODULE).iterdir() if entry.is_dir() and entry.name[0] != "_"}


def _unknown_override_message(full_key: str, overrides: Sequence[str], config_name: str) -> str:
    """Name the unknown key of a failed `key=value` override and suggest the closest existing one."""
    # The tree the override was aimed at, composed with the group choices alone (model=..., env=...).
    groups = _config_groups()
    choices = [o for o in overrides if o.split("=", 1)[0] in groups]
    tree: Any
    try:
        tree = compose(choices, config_name)
    except ConfigError:
        try:
            tree = compose((), config_name)
        except ConfigError:
            return f"{full_key}: unknown key"
    parent: list[str] = []
    for part in full_key.split("."):
        if not isinstance(tree, Mapping) or part not in tree:
            known = tree.keys() if isinstance(tree, Mapping) else ()
            message = unknown_key_message(".".join(parent), part, known)
            return f"{message}; to add a new key use +{full_key}=..." if not known else message
        tree = tree[part]
        parent.append(part)
    return f"{full_key}: could not override it"


def load_config(schema: type[T], overrides: Sequence[str] = (), config_name: str = "config") -> T:
    """Compose the config and convert the parts `schema` declares; other top-level groups are ignored."""
    raw = compose(overrides, config_name)
    known = {f.name for f in dataclasses.fields(schema)}  # type: ignore[arg-type]
    return build(schema, {k: v for k, v in raw.items() if k in known})
