"""Sampled sweep parameters as Hydra overrides, and back from a W&B run config."""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from typing import Any

from training.sweep.spec import CONFIG_KEY, RESERVED_KEYS, SweepConfigError, SweepError, SweepSpec

_BARE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")  # written without quotes (e.g. a preset name)
_KEYWORDS = frozenset({"true", "false", "null", "nan", "inf"})


def format_value(value: Any, where: str = "value") -> str:
    """Render a value in Hydra's override grammar (strings quoted and escaped, lists in brackets)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return (
            repr(value) if math.isfinite(value) else ("nan" if math.isnan(value) else ("inf" if value > 0 else "-inf"))
        )
    if isinstance(value, str):
        return value if _BARE.match(value) and value.lower() not in _KEYWORDS else _quote(value)
    if isinstance(value, list | tuple):
        return "[" + ",".join(format_value(v, where) for v in value) + "]"
    if isinstance(value, Mapping):
        bad = next((k for k in value if not isinstance(k, str) or not re.match(r"^[A-Za-z_][A-Za-z0-9_]*$", k)), None)
        if bad is not None:
            raise SweepConfigError(f"{where}: mapping key {bad!r} cannot be written as an override")
        return "{" + ",".join(f"{k}:{format_value(v, where)}" for k, v in value.items()) + "}"
    raise SweepConfigError(f"{where}: cannot pass a {type(value).__name__} ({value!r}) as a config value")


def _quote(text: str) -> str:
    # Hydra quoted strings: escape the quote, `${` (interpolation) and any backslashes that precede either
    # or end the string (https://hydra.cc/docs/advanced/override_grammar/basic/#escaped-characters).
    out: list[str] = []
    i = 0
    while i < len(text):
        if text[i] == "\\":
            j = i
            while j < len(text) and text[j] == "\\":
                j += 1
            run = text[i:j]
            special = j == len(text) or text[j] == "'" or text.startswith("${", j)
            out.append(run * 2 if special else run)
            i = j
        elif text[i] == "'":
            out.append("\\'")
            i += 1
        elif text.startswith("${", i):
            out.append("\\${")
            i += 2
        else:
            out.append(text[i])
            i += 1
    return "'" + "".join(out) + "'"


def to_overrides(params: Mapping[str, Any]) -> list[str]:
    """Turn sampled parameters (config keys → values) into Hydra override strings."""
    overrides = []
    for key, value in params.items():
        if not CONFIG_KEY.match(key):
            raise SweepConfigError(f"parameter {key!r}: not a config key")
        if key in RESERVED_KEYS:
            raise SweepConfigError(f"parameter {key}: set by the sweep ({RESERVED_KEYS[key]})")
        overrides.append(f"{key}={format_value(value, key)}")
    return overrides


def params_from_wandb_config(spec: SweepSpec, config: Mapping[str, Any]) -> dict[str, Any]:
    """Read each swept parameter from a W&B run config (dotted keys, or nested for nested `parameters`)."""
    params: dict[str, Any] = {}
    for p in spec.parameters:
        node: Any = config
        for key in p.path:
            if not isinstance(node, Mapping) or key not in node:
                raise SweepError(f"the W&B run config has no value for parameter {p.name} (keys: {sorted(config)})")
            node = node[key]
        params[p.name] = node
    return params


def override_keys(overrides: Sequence[str]) -> set[str]:
    """The config keys that Hydra overrides set (`+`/`~` prefixes dropped)."""
    return {o.split("=", 1)[0].lstrip("+~") for o in overrides if "=" in o}
