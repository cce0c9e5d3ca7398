"""Read a W&B sweep YAML and validate it strictly into a `SweepSpec`; errors name the key."""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import structlog
import yaml  # type: ignore[import-untyped]

from training.sweep.spec import (
    CONFIG_KEY,
    DISTRIBUTIONS,
    GOALS,
    MAX_GRID_SIZE,
    METHODS,
    RESERVED_KEYS,
    TOP_LEVEL_KEYS,
    VALIDATION_FIELDS,
    Hyperband,
    Metric,
    Parameter,
    SweepConfigError,
    SweepSpec,
)

log = structlog.get_logger()


class _YamlLoader(yaml.SafeLoader):  # type: ignore[misc]  # no PyYAML stubs installed
    """YAML 1.2 numbers (`1e-4` is a float, not a string) and no implicit dates (`2025-01-01` stays text)."""


_YamlLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(
        r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?|[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
        |\.[0-9_]+(?:[eE][-+]?[0-9]+)?|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$""",
        re.X,
    ),
    list("-+0123456789."),
)
_YamlLoader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag != "tag:yaml.org,2002:timestamp"]
    for first, resolvers in _YamlLoader.yaml_implicit_resolvers.items()
}


def load_sweep_config(path: Path | str) -> SweepSpec:
    """Read and validate a sweep YAML file."""
    path = Path(path)
    try:
        raw = yaml.load(path.read_text(), Loader=_YamlLoader)
    except OSError as e:
        raise SweepConfigError(f"--config {path}: cannot read it ({e.strerror or e})") from e
    except yaml.YAMLError as e:
        raise SweepConfigError(f"--config {path}: not valid YAML: {str(e).splitlines()[0]}") from e
    return parse_sweep_config(raw, source=str(path))


def parse_sweep_config(raw: Any, source: str = "sweep config") -> SweepSpec:
    """Validate a W&B sweep mapping strictly; SweepConfigError names the key and the problem."""
    if not isinstance(raw, Mapping):
        raise SweepConfigError(f"{source}: expected a mapping with method, metric and parameters, got {raw!r}")
    unknown = sorted(str(k) for k in raw if k not in TOP_LEVEL_KEYS)
    if unknown:
        raise SweepConfigError(
            f"{source}: unknown key {unknown[0]!r}; a sweep takes {', '.join(sorted(TOP_LEVEL_KEYS))}"
        )
    method = raw.get("method")
    if method not in METHODS:
        raise SweepConfigError(f"{source}: method must be one of {', '.join(METHODS)}, got {method!r}")
    metric = _parse_metric(raw.get("metric"), source)
    parameters = raw.get("parameters")
    if not isinstance(parameters, Mapping) or not parameters:
        raise SweepConfigError(f"{source}: parameters must be a non-empty mapping of config keys, got {parameters!r}")
    parsed = _parse_parameters(parameters, (), source)
    names = [p.name for p in parsed]
    for p in parsed:
        if p.name in RESERVED_KEYS:
            raise SweepConfigError(f"{source}: parameters.{p.name}: set by the sweep ({RESERVED_KEYS[p.name]})")
    if len(set(names)) != len(names):
        raise SweepConfigError(f"{source}: parameter {next(n for n in names if names.count(n) > 1)!r} appears twice")
    spec = SweepSpec(
        method=str(method),
        metric=metric,
        parameters=tuple(parsed),
        early_terminate=_parse_early_terminate(raw.get("early_terminate"), source),
        run_cap=_optional_positive_int(raw.get("run_cap"), f"{source}: run_cap"),
        name=_optional_str(raw.get("name"), f"{source}: name"),
        raw=dict(raw),
    )
    for key in ("description", "project", "entity"):
        _optional_str(raw.get(key), f"{source}: {key}")
    if spec.method == "grid":
        for p in spec.parameters:
            try:
                p.grid_values()
            except SweepConfigError as e:
                raise SweepConfigError(f"{source}: {e}") from None
        if spec.grid_size() > MAX_GRID_SIZE:
            raise SweepConfigError(f"{source}: the grid has {spec.grid_size()} points (more than {MAX_GRID_SIZE})")
    return spec


def _parse_metric(raw: Any, source: str) -> Metric:
    if not isinstance(raw, Mapping) or "name" not in raw:
        raise SweepConfigError(f"{source}: metric is missing; give metric.name (e.g. validation/sharpe) and goal")
    unknown = sorted(str(k) for k in raw if k not in ("name", "goal", "target"))
    if unknown:
        raise SweepConfigError(f"{source}: metric.{unknown[0]}: unknown key; metric takes name, goal, target")
    name, goal = raw["name"], raw.get("goal", "minimize")
    if not isinstance(name, str) or not name:
        raise SweepConfigError(f"{source}: metric.name must be a metric name, got {name!r}")
    if name.startswith(("test/", "test.", "test_")) or "/test/" in name:
        raise SweepConfigError(
            f"{source}: metric.name {name!r} is measured on the test split; a sweep must never tune on the test "
            f"split (it is the honest out-of-sample check). Use a validation metric, e.g. validation/sharpe"
        )
    field_name = name.removeprefix("validation/")
    if not name.startswith("validation/") or field_name not in VALIDATION_FIELDS:
        raise SweepConfigError(
            f"{source}: metric.name {name!r}: the objective must be a validation metric, validation/<field> with "
            f"field one of {', '.join(VALIDATION_FIELDS)}"
        )
    if goal not in GOALS:
        raise SweepConfigError(f"{source}: metric.goal must be minimize or maximize, got {goal!r}")
    if "goal" not in raw:
        log.warning("sweep_metric_goal_defaulted", metric=name, goal="minimize", note="W&B's default; say maximize?")
    target = raw.get("target")
    if target is not None:
        target = _number(target, f"{source}: metric.target")
    return Metric(name, "maximize" if goal == "maximize" else "minimize", target)


def _parse_parameters(raw: Mapping[Any, Any], prefix: tuple[str, ...], source: str) -> list[Parameter]:
    parsed: list[Parameter] = []
    for key, body in raw.items():
        path = (*prefix, str(key))
        where = f"{source}: parameters.{'.'.join(path)}"
        if not isinstance(key, str) or not CONFIG_KEY.match(".".join(path)):
            raise SweepConfigError(f"{where}: not a config key (letters, digits, _ and dots), got {key!r}")
        if not isinstance(body, Mapping):
            raise SweepConfigError(f"{where}: expected a mapping with value, values, min/max or distribution")
        if "parameters" in body:
            if set(body) != {"parameters"} or not isinstance(body["parameters"], Mapping) or not body["parameters"]:
                raise SweepConfigError(f"{where}: nested parameters must be the only key and a non-empty mapping")
            parsed += _parse_parameters(body["parameters"], path, source)
            continue
        parsed.append(_parse_parameter(path, body, where))
    return parsed


def _parse_parameter(path: tuple[str, ...], body: Mapping[Any, Any], where: str) -> Parameter:
    distribution = body.get("distribution")
    if distribution is None:
        if "value" in body:
            distribution = "constant"
        elif "values" in body:
            distribution = "categorical"
        elif "min" in body and "max" in body:
            ints = all(isinstance(body[k], int) and not isinstance(body[k], bool) for k in ("min", "max"))
            distribution = "int_uniform" if ints else "uniform"
        else:
            raise SweepConfigError(f"{where}: needs value, values, min and max, or a distribution")
    if not isinstance(distribution, str) or distribution not in DISTRIBUTIONS:
        raise SweepConfigError(
            f"{where}: distribution {distribution!r} is not supported; use one of {', '.join(DISTRIBUTIONS)}"
        )
    allowed = DISTRIBUTIONS[distribution] | {"distribution"}
    unknown = sorted(str(k) for k in body if k not in allowed)
    if unknown:
        raise SweepConfigError(
            f"{where}: {unknown[0]!r} does not go with distribution {distribution} (it takes "
            f"{', '.join(sorted(DISTRIBUTIONS[distribution]))})"
        )
    kwargs: dict[str, Any] = {}
    if distribution == "constant":
        if "value" not in body:
            raise SweepConfigError(f"{where}: distribution constant needs value")
        kwargs["values"] = (body["value"],)
    elif distribution == "categorical":
        values = body.get("values")
        if not isinstance(values, list) or not values:
            raise SweepConfigError(f"{where}: values must be a non-empty list, got {values!r}")
        kwargs["values"] = tuple(values)
        if "probabilities" in body:
            probabilities = body["probabilities"]
            if not isinstance(probabilities, list) or len(probabilities) != len(values):
                raise SweepConfigError(f"{where}: probabilities must be a list as long as values ({len(values)})")
            weights = tuple(_number(p, f"{where}.probabilities") for p in probabilities)
            if any(w < 0 for w in weights) or not math.isclose(sum(weights), 1.0, abs_tol=1e-6):
                raise SweepConfigError(f"{where}: probabilities must be >= 0 and sum to 1, got {list(weights)}")
            kwargs["probabilities"] = weights
    elif distribution in ("normal", "q_normal", "log_normal"):
        kwargs["mu"] = _number(body.get("mu", 0.0), f"{where}.mu")
        kwargs["sigma"] = _number(body.get("sigma", 1.0), f"{where}.sigma")
        if kwargs["sigma"] <= 0:
            raise SweepConfigError(f"{where}: sigma must be > 0, got {kwargs['sigma']}")
    else:
        for bound in ("min", "max"):
            if bound not in body:
                raise SweepConfigError(f"{where}: distribution {distribution} needs min and max")
        low, high = _number(body["min"], f"{where}.min"), _number(body["max"], f"{where}.max")
        if distribution == "int_uniform" and not (float(low).is_integer() and float(high).is_integer()):
            raise SweepConfigError(f"{where}: int_uniform needs integer min and max, got {body['min']}, {body['max']}")
        if not low < high:
            raise SweepConfigError(f"{where}: min must be < max, got min={body['min']} max={body['max']}")
        if distribution in ("log_uniform_values", "q_log_uniform_values") and low <= 0:
            raise SweepConfigError(f"{where}: {distribution} needs min > 0 (they are values, not exponents), got {low}")
        kwargs["low"], kwargs["high"] = low, high
    if "q" in DISTRIBUTIONS[distribution]:
        q = _number(body.get("q", 1.0), f"{where}.q")
        if q <= 0:
            raise SweepConfigError(f"{where}: q must be > 0, got {q}")
        kwargs["q"] = q
    return Parameter(path=path, distribution=str(distribution), **kwargs)


def _parse_early_terminate(raw: Any, source: str) -> Hyperband | None:
    if raw is None:
        return None
    where = f"{source}: early_terminate"
    if not isinstance(raw, Mapping) or raw.get("type") != "hyperband":
        raise SweepConfigError(f"{where}: only type: hyperband is supported, got {raw!r}")
    unknown = sorted(str(k) for k in raw if k not in ("type", "min_iter", "max_iter", "s", "eta", "strict"))
    if unknown:
        raise SweepConfigError(f"{where}.{unknown[0]}: unknown key; hyperband takes min_iter | max_iter + s, eta")
    min_iter = _optional_positive_int(raw.get("min_iter"), f"{where}.min_iter")
    max_iter = _optional_positive_int(raw.get("max_iter"), f"{where}.max_iter")
    s = _optional_positive_int(raw.get("s"), f"{where}.s")
    eta = _optional_positive_int(raw.get("eta", 3), f"{where}.eta") or 3
    if eta < 2:
        raise SweepConfigError(f"{where}.eta must be >= 2, got {eta}")
    if min_iter is None and (max_iter is None or s is None):
        raise SweepConfigError(f"{where}: hyperband needs min_iter, or max_iter and s")
    if min_iter is not None and max_iter is not None and min_iter > max_iter:
        raise SweepConfigError(f"{where}: min_iter ({min_iter}) must be <= max_iter ({max_iter})")
    return Hyperband(min_iter=min_iter, max_iter=max_iter, s=s, eta=eta)


def _number(value: Any, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise SweepConfigError(f"{where}: expected a finite number, got {value!r}")
    return float(value)


def _optional_positive_int(value: Any, where: str) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise SweepConfigError(f"{where}: expected an integer >= 1, got {value!r}")
    return value


def _optional_str(value: Any, where: str) -> str | None:
    if value is not None and not isinstance(value, str):
        raise SweepConfigError(f"{where}: expected a string, got {value!r}")
    return value
