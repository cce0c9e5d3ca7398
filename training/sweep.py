"""`ai-trading sweep` / `python -m training.sweep`: hyperparameter sweeps driven by a W&B sweep YAML.

The user guide's commands, same flags::

    ai-trading sweep --config sweep_config.yaml
    ai-trading sweep --config sweep_config.yaml --name "lr_and_layers_sweep" --count 20
    ai-trading sweep --config sweep_config.yaml --storage sqlite:///sweeps.db training.total_timesteps=50000

The YAML is W&B's own sweep schema (method, metric, parameters, early_terminate, run_cap, ...). Parameter
names are training config keys (`training.lr`, `model.d_model`, `env.reward_scaling`; `model` alone picks a
preset); each trial turns its parameters into Hydra overrides and runs `training.train.run` in this process.

Backends (`--backend auto` picks, and logs which and why, before anything runs):
- `wandb`: `wandb.sweep` + `wandb.agent(function=...)` when a W&B server is reachable with credentials. Every
  W&B sweep command needs a server and would fail or hang without one, so `auto` checks first: WANDB_MODE
  offline/disabled, no WANDB_API_KEY and no netrc entry, or no TCP answer within 2 s means no server. Scale
  out by running `ai-trading sweep --config ... --sweep-id ENTITY/PROJECT/ID` on each machine.
- `optuna`: the same YAML as a local Optuna study: grid → GridSampler, random → RandomSampler, bayes →
  TPESampler, hyperband → HyperbandPruner fed by every validation pass. With `--storage` (an Optuna RDB URL,
  e.g. sqlite:///sweeps.db or PostgreSQL) the study is resumable, and several processes or machines given the
  same storage and `--name` share it.

Honesty: the objective is always a validation metric (`validation/<field>` of the checkpoint the run
selected on the validation split); a `test/...` metric is refused. The test return of each trial is shown
for information only. Results: a table on stdout, `<output-dir>/sweeps/<name>/sweep_summary.json` and
`trials.parquet`; every trial is an ordinary run directory under `<output-dir>/` (reports and the dashboard
read it like any other run).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import hashlib
import itertools
import json
import math
import os
import re
import shlex
import statistics
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import pandas as pd
import structlog
import yaml  # type: ignore[import-untyped]

from bot.config import ConfigError
from bot.metrics import EvaluationReport
from monitoring.logging import configure_logging
from monitoring.run_store import json_safe, new_run_id, write_json
from monitoring.wandb_server import server_status as wandb_server_status

log = structlog.get_logger()

EXIT_OK, EXIT_ERROR, EXIT_CONFIG, EXIT_INTERRUPTED = 0, 1, 2, 130
METHODS = ("grid", "random", "bayes")
GOALS = ("minimize", "maximize")
TOP_LEVEL_KEYS = frozenset(
    {"method", "metric", "parameters", "early_terminate", "run_cap", "program", "command", "name", "description"}
    | {"project", "entity", "controller"}
)
# Keys each distribution takes besides `distribution` (W&B's names; min/max of log_uniform are exponents).
DISTRIBUTIONS: dict[str, frozenset[str]] = {
    "constant": frozenset({"value"}),
    "categorical": frozenset({"values", "probabilities"}),
    "int_uniform": frozenset({"min", "max"}),
    "uniform": frozenset({"min", "max"}),
    "q_uniform": frozenset({"min", "max", "q"}),
    "log_uniform": frozenset({"min", "max"}),
    "log_uniform_values": frozenset({"min", "max"}),
    "q_log_uniform_values": frozenset({"min", "max", "q"}),
    "normal": frozenset({"mu", "sigma"}),
    "q_normal": frozenset({"mu", "sigma", "q"}),
    "log_normal": frozenset({"mu", "sigma"}),
}
GRID_DISTRIBUTIONS = ("constant", "categorical", "int_uniform", "q_uniform")
MAX_GRID_SIZE = 100_000
# Set by the sweep for every trial; a user value would make trials overwrite each other.
RESERVED_KEYS = {
    "run_name": "each trial gets its own run name",
    "output_dir": "use --output-dir",
    "training.export_dir": "each trial exports under the sweep directory",
}
VALIDATION_FIELDS = tuple(
    f.name
    for f in dataclasses.fields(EvaluationReport)
    if f.type in ("float", "int", float, int) and f.name not in ("bars", "periods_per_year")
)
"""Evaluation report fields a sweep can optimise as `validation/<field>`."""
DEFAULT_COUNT = 10
"""Trials a random/bayes sweep runs when neither --count nor run_cap says."""
CONSECUTIVE_FAILURES_LIMIT = 3
SUMMARY_FILE = "sweep_summary.json"
TRIALS_FILE = "trials.parquet"
_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z0-9_]+)*$")
_PRIMITIVE = (str, int, float, bool, type(None))
_BARE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")  # written without quotes (e.g. a preset name)
_KEYWORDS = frozenset({"true", "false", "null", "nan", "inf"})


class SweepConfigError(ConfigError):
    """The sweep YAML or the sweep's command line is invalid; the message names the key."""


class SweepError(RuntimeError):
    """The sweep cannot run (e.g. the requested W&B server is unavailable)."""


# --- the sweep YAML -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Parameter:
    """One parameter of the sweep: a training config key and how W&B would sample it."""

    path: tuple[str, ...]
    """Keys as written in the YAML (("model.d_model",), or ("model", "d_model") for nested `parameters`)."""
    distribution: str
    """A key of DISTRIBUTIONS."""
    values: tuple[Any, ...] = ()
    """Choices (categorical) or the single value (constant)."""
    probabilities: tuple[float, ...] | None = None
    """Sampling weights of `values` (random/bayes; grid ignores them, as W&B does)."""
    low: float = 0.0
    """`min` of the range (an exponent for log_uniform)."""
    high: float = 0.0
    """`max` of the range."""
    q: float | None = None
    """Quantisation step of the q_* distributions."""
    mu: float = 0.0
    """Mean of the normal distributions."""
    sigma: float = 1.0
    """Standard deviation of the normal distributions."""

    @property
    def name(self) -> str:
        """The training config key (dotted)."""
        return ".".join(self.path)

    @property
    def is_int(self) -> bool:
        """Whether sampled values are integers."""
        if self.distribution == "int_uniform":
            return True
        steps = (self.low, self.high, self.q or 0.5)
        return self.distribution == "q_uniform" and all(float(v).is_integer() for v in steps)

    def grid_values(self) -> list[Any]:
        """Every value a grid search visits; SweepConfigError for a continuous distribution."""
        if self.distribution in ("constant", "categorical"):
            return list(self.values)
        if self.distribution == "int_uniform":
            return list(range(int(self.low), int(self.high) + 1))
        if self.distribution == "q_uniform":
            assert self.q is not None
            steps = math.floor((self.high - self.low) / self.q + 1e-9)
            return [self._quantise(self.low + i * self.q) for i in range(steps + 1)]
        raise SweepConfigError(
            f"parameters.{self.name}: method grid needs discrete values; distribution {self.distribution} is "
            f"continuous (grid takes {', '.join(GRID_DISTRIBUTIONS)})"
        )

    def suggest(self, trial: Any, *, grid: bool) -> Any:
        """Sample this parameter through an Optuna trial and return the value W&B's distribution means."""
        name, kind = self.name, self.distribution
        if kind == "constant":
            return self.values[0]
        if grid:
            return self._pick(trial.suggest_categorical(name, _choices(self.grid_values())), self.grid_values())
        if kind == "categorical":
            if self.probabilities is None:
                return self._pick(trial.suggest_categorical(name, _choices(self.values)), self.values)
            # Optuna has no weighted categorical: sample u ~ U(0, 1) and invert the cumulative weights.
            u = trial.suggest_float(name, 0.0, 1.0)
            edges = list(itertools.accumulate(self.probabilities))
            return self.values[min(next((i for i, e in enumerate(edges) if u < e), len(edges) - 1), len(edges) - 1)]
        if kind == "int_uniform":
            return trial.suggest_int(name, int(self.low), int(self.high))
        if kind in ("uniform", "q_uniform"):
            return self._quantise(trial.suggest_float(name, self.low, self.high))
        if kind in ("log_uniform_values", "q_log_uniform_values"):
            return self._quantise(trial.suggest_float(name, self.low, self.high, log=True))
        if kind == "log_uniform":
            return trial.suggest_float(name, math.exp(self.low), math.exp(self.high), log=True)
        # Normal family: sample the quantile so TPE still sees a bounded, order-preserving space.
        u = min(max(trial.suggest_float(name, 0.0, 1.0), 1e-6), 1 - 1e-6)
        x = statistics.NormalDist(self.mu, self.sigma).inv_cdf(u)
        return math.exp(x) if kind == "log_normal" else self._quantise(x)

    def describe(self, method: str) -> str:
        """W&B distribution → what the Optuna backend does with it."""
        kind = self.distribution
        if kind == "constant":
            return f"constant {self.values[0]!r} → fixed"
        if method == "grid":
            values = self.grid_values()
            return f"{kind} → grid over {len(values)} values {_short(values)}"
        if kind == "categorical":
            weights = "" if self.probabilities is None else f" with probabilities {list(self.probabilities)}"
            how = "weighted inverse CDF of u ~ U(0, 1)" if self.probabilities else "CategoricalDistribution"
            return f"categorical {_short(self.values)}{weights} → {how}"
        if kind == "int_uniform":
            return f"int_uniform [{int(self.low)}, {int(self.high)}] → IntDistribution"
        if kind == "log_uniform":
            return f"log_uniform e^[{self.low}, {self.high}] → FloatDistribution(log=True)"
        if kind in ("normal", "q_normal", "log_normal"):
            return f"{kind}(mu={self.mu}, sigma={self.sigma}) → quantile u ~ U(0, 1) through the normal inverse CDF"
        log_part = "(log=True)" if "log" in kind else ""
        q_part = f", rounded to multiples of {self.q}" if self.q else ""
        return f"{kind} [{self.low}, {self.high}] → FloatDistribution{log_part}{q_part}"

    def _quantise(self, value: float) -> float | int:
        if self.q is None:
            return value
        rounded = round(round(value / self.q) * self.q, 12)
        return int(rounded) if self.is_int else rounded

    @staticmethod
    def _pick(choice: Any, values: Sequence[Any]) -> Any:
        return choice if all(isinstance(v, _PRIMITIVE) for v in values) else values[int(choice)]


def _choices(values: Sequence[Any]) -> list[Any]:
    """Optuna categoricals hold only primitives; lists and mappings are chosen by index."""
    return list(values) if all(isinstance(v, _PRIMITIVE) for v in values) else list(range(len(values)))


def _short(values: Sequence[Any], limit: int = 8) -> str:
    shown = ", ".join(repr(v) for v in values[:limit])
    return f"[{shown}{', ...' if len(values) > limit else ''}]"


@dataclass(frozen=True)
class Metric:
    """The sweep objective: a validation metric and its direction."""

    name: str
    """`validation/<field>` of the evaluation report (never `test/...`)."""
    goal: Literal["minimize", "maximize"] = "minimize"
    """minimize or maximize (W&B's default is minimize)."""
    target: float | None = None
    """Stop the sweep once a trial reaches this value."""

    @property
    def field(self) -> str:
        """The evaluation report field (`sharpe` for `validation/sharpe`)."""
        return self.name.removeprefix("validation/")

    def better(self, a: float, b: float) -> bool:
        """Whether value `a` beats `b`."""
        return a > b if self.goal == "maximize" else a < b

    def worst(self) -> float:
        """The value a trial with no finite result gets."""
        return -math.inf if self.goal == "maximize" else math.inf


@dataclass(frozen=True)
class Hyperband:
    """early_terminate: hyperband (W&B's keys)."""

    min_iter: int | None
    """First bracket, in validation passes."""
    max_iter: int | None
    """Most validation passes a trial is expected to reach."""
    s: int | None
    """Number of brackets (with max_iter)."""
    eta: int = 3
    """Reduction factor between brackets."""

    def min_resource(self) -> int:
        """Optuna's min_resource: min_iter, or max_iter / eta^s."""
        if self.min_iter is not None:
            return self.min_iter
        assert self.max_iter is not None and self.s is not None
        return max(1, int(self.max_iter // self.eta**self.s))

    def pruner(self) -> Any:
        """The Optuna HyperbandPruner with these brackets."""
        import optuna

        return optuna.pruners.HyperbandPruner(
            min_resource=self.min_resource(),
            max_resource=self.max_iter if self.max_iter is not None else "auto",
            reduction_factor=self.eta,
        )


@dataclass(frozen=True)
class SweepSpec:
    """A validated W&B sweep configuration."""

    method: str
    """grid, random or bayes."""
    metric: Metric
    """The validation objective."""
    parameters: tuple[Parameter, ...]
    """Parameters in YAML order."""
    early_terminate: Hyperband | None = None
    """Hyperband early termination, if configured."""
    run_cap: int | None = None
    """Most trials over all workers."""
    name: str | None = None
    """Sweep name (the Optuna study name)."""
    raw: Mapping[str, Any] = field(default_factory=dict)
    """The YAML mapping as loaded (what a W&B server gets)."""

    def grid_size(self) -> int:
        """Number of grid points (1 if nothing varies)."""
        return math.prod(len(p.grid_values()) for p in self.parameters)

    def grid_space(self) -> dict[str, list[Any]]:
        """GridSampler's search space (constants excluded)."""
        return {p.name: _choices(p.grid_values()) for p in self.parameters if p.distribution != "constant"}

    def sample(self, trial: Any) -> dict[str, Any]:
        """Sample every parameter through an Optuna trial."""
        return {p.name: p.suggest(trial, grid=self.method == "grid") for p in self.parameters}

    def fingerprint(self) -> str:
        """Digest of what makes two sweeps the same study (method, metric, parameters, early_terminate)."""
        keys = ("method", "metric", "parameters", "early_terminate")
        text = json.dumps({k: self.raw.get(k) for k in keys}, sort_keys=True, default=str)
        return hashlib.sha256(text.encode()).hexdigest()[:16]


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
        if not isinstance(key, str) or not _KEY.match(".".join(path)):
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
    if distribution not in DISTRIBUTIONS:
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


# --- parameters → Hydra overrides ---------------------------------------------------------------------------


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
        if not _KEY.match(key):
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


def _override_keys(overrides: Sequence[str]) -> set[str]:
    return {o.split("=", 1)[0].lstrip("+~") for o in overrides if "=" in o}


# --- one trial ----------------------------------------------------------------------------------------------


@dataclass
class TrialResult:
    """What one trial produced; `value` is the validation objective (never a test figure)."""

    number: int
    params: dict[str, Any]
    state: str = "complete"
    """complete, pruned, interrupted or failed."""
    value: float | None = None
    test_total_return: float | None = None
    """Test-split return of the selected checkpoint: information only, never used for selection."""
    run_id: str | None = None
    run_dir: str | None = None
    seconds: float = 0.0
    error: str | None = None
    intermediate: list[float] = field(default_factory=list)

    def attrs(self) -> dict[str, Any]:
        """JSON-safe fields for Optuna user attributes and the summary."""
        return json_safe(dataclasses.asdict(self))  # type: ignore[no-any-return]


class ValidationTracker:
    """Follow validation passes the way train.py picks its checkpoint; the value is the objective so far."""

    def __init__(self, field_name: str, select_metric: str) -> None:
        self.field, self.select_metric = field_name, select_metric
        self.best_select = -math.inf
        self.value: float | None = None
        self.passes = 0

    def update(self, metrics: Mapping[str, float]) -> float | None:
        """Take one validation pass; return the metric at the checkpoint selected so far."""
        self.passes += 1
        score = float(metrics.get(self.select_metric, math.nan))
        score = score if math.isfinite(score) else -math.inf
        if self.value is None or score > self.best_select:
            self.best_select = score
            self.value = float(metrics.get(self.field, math.nan))
        return self.value


class _StopTrial(Exception):
    """Raised inside a training run's validation hook to stop it (pruning)."""


IntermediateHook = Callable[[int, float], bool]
"""Called with (validation pass number, objective so far); returns False to stop the trial."""


@dataclass
class TrialRunner:
    """Run trials: parameters → overrides → one in-process training run → the validation objective."""

    metric: Metric
    base_overrides: tuple[str, ...]
    """Overrides every trial shares (the command line's, plus those the sweep adds)."""
    output_dir: Path
    sweep_dir: Path
    slug: str

    def trial_overrides(self, params: Mapping[str, Any], run_id: str) -> list[str]:
        """Every override of one trial, in order."""
        return [
            *self.base_overrides,
            *to_overrides(params),
            f"output_dir={format_value(str(self.output_dir))}",
            f"run_name={format_value(run_id)}",
            f"training.export_dir={format_value(str(self.sweep_dir / 'exports' / run_id))}",
        ]

    def run(
        self,
        number: int,
        params: Mapping[str, Any],
        *,
        on_intermediate: IntermediateHook | None = None,
        wandb_run: Any = None,
    ) -> TrialResult:
        """Train one trial and return its result; failures are caught and reported, Ctrl-C is not."""
        from training.train import load_train_config
        from training.train import run as train_run

        result = TrialResult(number=number, params=dict(params), run_id=new_run_id(f"{self.slug}-t{number:04d}"))
        started = time.perf_counter()
        tracker: ValidationTracker | None = None
        log.info("sweep_trial_started", trial=number, run_id=result.run_id, **_log_params(params))
        try:
            assert result.run_id is not None
            cfg = load_train_config(self.trial_overrides(params, result.run_id))
            folds = cfg.training.walk_forward.folds
            tracker = ValidationTracker(self.metric.field, cfg.training.select_metric)
            if wandb_run is not None:
                wandb_run.config.update({"train_config": json_safe(dataclasses.asdict(cfg))}, allow_val_change=True)

            def on_validation(step: int, metrics: Mapping[str, float]) -> None:
                assert tracker is not None
                value = tracker.update(metrics)
                if value is not None and math.isfinite(value) and not folds:
                    result.intermediate.append(value)
                    if on_intermediate is not None and not on_intermediate(tracker.passes, value):
                        raise _StopTrial(f"pruned after validation pass {tracker.passes} (step {step})")

            # train.run prints its test table; keep stdout for the sweep's own results.
            with contextlib.redirect_stdout(sys.stderr):
                outcome = train_run(cfg, wandb_run=wandb_run, on_validation=on_validation)
            result.run_dir = str(outcome.run_dir)
            result.value, result.test_total_return = objective_from_run(outcome.run_dir, self.metric)
            result.state = "interrupted" if outcome.interrupted else "complete"
        except _StopTrial as e:
            result.state, result.error = "pruned", str(e)
            result.value = tracker.value if tracker is not None else None
            result.run_dir = str(self.output_dir / str(result.run_id))
        except Exception as e:  # a bad parameter combination or a crash fails this trial, not the sweep
            log.exception("sweep_trial_failed", trial=number, run_id=result.run_id, error=str(e))
            result.state, result.error = "failed", f"{type(e).__name__}: {e}"
            if wandb_run is not None:
                with contextlib.suppress(Exception):
                    wandb_run.finish(exit_code=1)
        result.seconds = time.perf_counter() - started
        log.info(
            "sweep_trial_finished",
            trial=number,
            state=result.state,
            metric=self.metric.name,
            value=result.value,
            seconds=round(result.seconds, 2),
        )
        return result


def objective_from_run(run_dir: Path, metric: Metric) -> tuple[float, float | None]:
    """Return (validation metric at the selected checkpoint, test return for information) of a finished run."""
    summary = json.loads((run_dir / "summary.json").read_text())
    history = pd.read_parquet(run_dir / "metrics.parquet")
    parts = [(f"fold{k}/", v) for k, v in summary["folds"].items()] if "folds" in summary else [("", summary)]
    values, returns = [], []
    for prefix, part in parts:
        column, step = f"{prefix}validation/{metric.field}", part["best_checkpoint_step"]
        rows = history.loc[history["step"] == step, column].dropna() if column in history else pd.Series()
        if rows.empty:
            raise ValueError(
                f"{run_dir}: no {column} at the selected checkpoint (step {step}); is there a validation split?"
            )
        value = float(rows.iloc[-1])
        values.append(value if math.isfinite(value) else metric.worst())
        test_return = part.get("test", {}).get("policy", {}).get("total_return")
        if test_return is not None:
            returns.append(float(test_return))
    return statistics.fmean(values), (statistics.fmean(returns) if returns else None)


def _log_params(params: Mapping[str, Any]) -> dict[str, Any]:
    return {f"param_{k.replace('.', '_')}": v for k, v in params.items()}


# --- backends -----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class BackendChoice:
    """Which backend runs the sweep, and why."""

    backend: str
    """wandb or optuna."""
    reason: str
    """One line a user can act on."""


def choose_backend(requested: str, env: Mapping[str, str] | None = None, timeout_s: float = 2.0) -> BackendChoice:
    """Resolve --backend; `wandb` without a server is a SweepError (it would fail or hang), `auto` falls back."""
    if requested == "optuna":
        return BackendChoice("optuna", "requested with --backend optuna")
    available, why = wandb_server_status(env, timeout_s)
    if requested == "wandb":
        if not available:
            raise SweepError(f"--backend wandb: {why}; use --backend optuna (or auto) to sweep locally")
        return BackendChoice("wandb", f"requested with --backend wandb; {why}")
    if available:
        return BackendChoice("wandb", why)
    return BackendChoice("optuna", f"{why}; running a local Optuna study instead")


class _TrialFailed(Exception):
    """A trial failed (its error is in the trial's attributes); Optuna records FAIL and goes on."""


def trial_budget(spec: SweepSpec, count: int | None, existing: int) -> int:
    """How many trials this process runs: --count, else the rest of the grid, run_cap, or DEFAULT_COUNT."""
    if count is not None:
        budget = count
    elif spec.method == "grid":
        budget = max(0, spec.grid_size() - existing)
    elif spec.run_cap is not None:
        budget = spec.run_cap
    else:
        budget = DEFAULT_COUNT
        log.info("sweep_count_defaulted", count=DEFAULT_COUNT, note="give --count N or run_cap for more")
    if spec.run_cap is not None:
        budget = min(budget, max(0, spec.run_cap - existing))
    return budget


def _sampler(spec: SweepSpec, seed: int | None) -> Any:
    import optuna

    if spec.method == "grid":
        return optuna.samplers.GridSampler(spec.grid_space(), seed=seed)
    if spec.method == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    return optuna.samplers.TPESampler(seed=seed)


def open_study(spec: SweepSpec, name: str, storage: str | None, seed: int | None) -> Any:
    """Create or resume the Optuna study; refuse to mix a different sweep config into an existing study."""
    import optuna
    from sqlalchemy.exc import SQLAlchemyError

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    pruner = spec.early_terminate.pruner() if spec.early_terminate else optuna.pruners.NopPruner()
    if storage is not None and storage.startswith("sqlite:///") and storage != "sqlite:///:memory:":
        Path(storage.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    try:
        study = optuna.create_study(
            storage=storage,
            study_name=name,
            direction=spec.metric.goal,
            pruner=pruner,
            sampler=_sampler(spec, seed),
            load_if_exists=True,
        )
    except (ValueError, ImportError, SQLAlchemyError, optuna.exceptions.OptunaError) as e:
        raise SweepConfigError(f"--storage {storage}: cannot open the study ({e})") from e
    existing = study.user_attrs.get("sweep_fingerprint")
    if existing is not None and existing != spec.fingerprint():
        raise SweepConfigError(
            f"study {name!r} in {storage} was made from a different sweep config (method, metric, parameters or "
            f"early_terminate differ); use another --name, or the config it was made with"
        )
    if existing is None:
        study.set_user_attr("sweep_fingerprint", spec.fingerprint())
        study.set_user_attr("sweep_config", json_safe(spec.raw))
    if seed is not None and study.trials:
        # A resumed study must not replay the first session's samples.
        study.sampler = _sampler(spec, seed + len(study.trials))
    return study


def run_optuna(
    spec: SweepSpec,
    runner: TrialRunner,
    study: Any,
    budget: int,
    on_trial_end: Callable[[], None] | None = None,
) -> bool:
    """Run `budget` trials of the study in this process; return whether the user interrupted a trial."""
    import optuna

    state = {"failures": 0, "interrupted": 0, "done": 0}
    started = time.perf_counter()

    def objective(trial: optuna.Trial) -> float:
        params = spec.sample(trial)
        trial.set_user_attr("params", json_safe(params))

        def report(iteration: int, value: float) -> bool:
            trial.report(value, iteration)
            return not trial.should_prune()

        result = runner.run(trial.number, params, on_intermediate=report)
        for key, value in result.attrs().items():
            trial.set_user_attr(key, value)
        if result.state == "failed":
            raise _TrialFailed(result.error)
        if result.state in ("pruned", "interrupted"):
            state["interrupted"] += result.state == "interrupted"
            raise optuna.TrialPruned(result.error or result.state)
        assert result.value is not None
        return result.value

    def after_trial(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        state["done"] += 1
        state["failures"] = state["failures"] + 1 if trial.state == optuna.trial.TrialState.FAIL else 0
        elapsed = time.perf_counter() - started
        eta = elapsed / state["done"] * max(0, budget - state["done"])
        log.info("sweep_progress", done=state["done"], total=budget, elapsed_s=round(elapsed, 1), eta_s=round(eta, 1))
        if on_trial_end is not None:
            on_trial_end()
        if state["interrupted"]:
            log.warning("sweep_interrupted", note="stopping after the interrupted trial")
            study.stop()
        elif state["failures"] >= CONSECUTIVE_FAILURES_LIMIT:
            log.error("sweep_stopped", reason=f"{state['failures']} trials failed in a row; see sweep_trial_failed")
            study.stop()
        elif (
            spec.metric.target is not None
            and trial.state == optuna.trial.TrialState.COMPLETE
            and trial.value is not None
            and not spec.metric.better(spec.metric.target, trial.value)
        ):
            log.info("sweep_target_reached", trial=trial.number, value=trial.value, target=spec.metric.target)
            study.stop()

    callbacks: list[Callable[[optuna.Study, optuna.trial.FrozenTrial], None]] = [after_trial]
    if spec.run_cap is not None:
        callbacks.append(optuna.study.MaxTrialsCallback(spec.run_cap, states=None))
    if budget > 0:
        study.optimize(objective, n_trials=budget, catch=(_TrialFailed,), callbacks=callbacks)
    return state["interrupted"] > 0


def rows_from_study(study: Any) -> list[dict[str, Any]]:
    """One row per trial of the study (all sessions and workers), as TrialResult fields."""
    from optuna.trial import TrialState

    rows = []
    for t in study.trials:
        attrs = dict(t.user_attrs)
        finished = t.state.is_finished()
        row = {
            "number": t.number,
            "params": attrs.get("params", {}),
            "state": attrs.get("state", t.state.name.lower()) if finished else t.state.name.lower(),
            "value": t.value if t.state == TrialState.COMPLETE else attrs.get("value"),
            "test_total_return": attrs.get("test_total_return"),
            "run_id": attrs.get("run_id"),
            "run_dir": attrs.get("run_dir"),
            "seconds": attrs.get("seconds"),
            "error": attrs.get("error"),
            "intermediate": [t.intermediate_values[k] for k in sorted(t.intermediate_values)],
        }
        rows.append(json_safe(row))
    return rows


def make_wandb_trial(
    spec: SweepSpec, runner: TrialRunner, results: list[TrialResult], init: Callable[..., Any] | None = None
) -> Callable[[], None]:
    """The function `wandb.agent` calls per trial: read the run's config, train, publish the objective."""

    def trial() -> None:
        import wandb

        start = init if init is not None else wandb.init
        run = start(
            job_type="sweep-trial",
            dir=str(runner.sweep_dir),
            reinit="finish_previous",
            settings=wandb.Settings(x_disable_stats=True, console="off", silent=True),
        )
        params = params_from_wandb_config(spec, run.config.as_dict())

        def publish(iteration: int, value: float) -> bool:
            # The run summary carries the selected checkpoint's validation value (what the bayes search
            # optimises), not the last pass; W&B's hyperband stops runs from the server side.
            run.summary[spec.metric.name] = value
            return True

        results.append(runner.run(len(results), params, on_intermediate=publish, wandb_run=run))

    return trial


def run_wandb(
    spec: SweepSpec,
    runner: TrialRunner,
    *,
    name: str,
    project: str,
    entity: str | None,
    count: int | None,
    sweep_id: str | None,
    on_trial_end: Callable[[list[TrialResult]], None] | None = None,
) -> tuple[str, list[TrialResult]]:
    """Create (or join) a W&B sweep and run this process's agent; return the sweep id and its trials."""
    import wandb

    if sweep_id is None:
        sweep_id = wandb.sweep(sweep={**spec.raw, "name": name}, project=project, entity=entity)
        log.info("wandb_sweep_created", sweep_id=sweep_id, project=project, entity=entity)
    results: list[TrialResult] = []
    trial = make_wandb_trial(spec, runner, results)

    def trial_and_record() -> None:
        trial()
        if on_trial_end is not None:
            on_trial_end(results)

    wandb.agent(sweep_id, function=trial_and_record, count=count, project=project, entity=entity)
    return sweep_id, results


# --- results ------------------------------------------------------------------------------------------------


def best_row(rows: Sequence[Mapping[str, Any]], metric: Metric) -> Mapping[str, Any] | None:
    """The completed trial with the best validation value, or None."""
    done = [r for r in rows if r.get("state") == "complete" and isinstance(r.get("value"), int | float)]
    if not done:
        return None
    pick = max if metric.goal == "maximize" else min
    return pick(done, key=lambda r: float(r["value"]))


def write_results(
    sweep_dir: Path,
    header: Mapping[str, Any],
    rows: Sequence[Mapping[str, Any]],
    metric: Metric,
    base_overrides: Sequence[str],
) -> dict[str, Any]:
    """Write sweep_summary.json and trials.parquet; return the summary."""
    best = best_row(rows, metric)
    best_block = None
    if best is not None:
        overrides = [*base_overrides, *to_overrides(best["params"])]
        best_block = {
            **best,
            "overrides": overrides,
            "retrain_command": shlex.join(["ai-trading", "train", *overrides]),
            "model": str(Path(best["run_dir"]) / "models" / "best_model.onnx") if best.get("run_dir") else None,
        }
    states: dict[str, int] = {}
    for r in rows:
        states[str(r.get("state"))] = states.get(str(r.get("state")), 0) + 1
    summary = {**header, "n_trials": len(rows), "states": states, "best": best_block, "trials": list(rows)}
    sweep_dir.mkdir(parents=True, exist_ok=True)
    write_json(sweep_dir / SUMMARY_FILE, summary)
    frame = trials_frame(rows, metric)
    tmp = sweep_dir / f".{TRIALS_FILE}.tmp"
    frame.to_parquet(tmp, index=False)
    os.replace(tmp, sweep_dir / TRIALS_FILE)
    return summary


def trials_frame(rows: Sequence[Mapping[str, Any]], metric: Metric) -> pd.DataFrame:
    """One row per trial: number, state, the validation metric, test return (info), params, run id."""
    records = []
    for r in rows:
        record = {
            "number": r["number"],
            "state": r["state"],
            metric.name: r.get("value"),
            "test_total_return_info_only": r.get("test_total_return"),
        }
        for key, value in (r.get("params") or {}).items():
            record[f"param/{key}"] = json.dumps(value) if isinstance(value, list | dict) else value
        record.update({"run_id": r.get("run_id"), "seconds": r.get("seconds"), "error": r.get("error")})
        records.append(record)
    frame = pd.DataFrame(records)
    for column in frame.columns:
        kinds = {type(v) for v in frame[column] if v is not None and not (isinstance(v, float) and math.isnan(v))}
        if len(kinds - {int, float}) and len(kinds) > 1:  # mixed types (e.g. str and number) → text
            frame[column] = frame[column].map(lambda v: None if v is None else str(v))
    return frame


def format_results(rows: Sequence[Mapping[str, Any]], metric: Metric, summary: Mapping[str, Any]) -> str:
    """The results table, the best parameters and the command that retrains with them."""
    names = list(dict.fromkeys(k for r in rows for k in (r.get("params") or {})))
    header = ["trial", "state", *names, metric.name, "test return (info only)", "run"]
    table = [header]
    for r in sorted(rows, key=lambda r: int(r["number"])):
        params = r.get("params") or {}
        test_return = r.get("test_total_return")
        table.append(
            [
                str(r["number"]),
                str(r["state"]),
                *[_cell(params.get(n, "")) for n in names],
                _cell(r.get("value")),
                "" if test_return is None else f"{100 * float(test_return):.2f}%",
                str(r.get("run_id") or ""),
            ]
        )
    widths = [max(len(row[i]) for row in table) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip() for row in table]
    lines.insert(1, "  ".join("-" * w for w in widths))
    best = summary.get("best")
    lines.append("")
    if best is None:
        lines.append("no trial completed")
    else:
        lines.append(
            f"best: trial {best['number']}, {metric.name} = {_cell(best['value'])} ({metric.goal}; validation split "
            "only, the test split was never used to choose)"
        )
        lines.append("best parameters: " + shlex.join(to_overrides(best["params"])))
        lines.append(f"retrain with them: {best['retrain_command']}")
        if best.get("model"):
            lines.append(f"best trial's model: {best['model']}")
    return "\n".join(lines)


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return "" if value is None else str(value)


# --- command line -------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SweepPlan:
    """Everything decided before the first trial."""

    spec: SweepSpec
    name: str
    slug: str
    backend: BackendChoice
    runner: TrialRunner
    user_overrides: tuple[str, ...]
    added_overrides: tuple[str, ...]


def slugify(name: str) -> str:
    """A file-system-safe form of a sweep name."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", name).strip("-.") or "sweep"


def probe_parameter_sets(spec: SweepSpec) -> list[dict[str, Any]]:
    """A few parameter sets that together use every categorical value and both ends of every range."""
    ends: dict[str, list[Any]] = {}
    for p in spec.parameters:
        if p.distribution in ("constant", "categorical") or (spec.method == "grid" and p.distribution != "constant"):
            ends[p.name] = list(p.values) if spec.method != "grid" else p.grid_values()
        elif p.distribution == "int_uniform":
            ends[p.name] = [int(p.low), int(p.high)]
        elif p.distribution == "log_uniform":
            ends[p.name] = [math.exp(p.low), math.exp(p.high)]
        elif p.distribution in ("normal", "q_normal"):
            ends[p.name] = [p._quantise(p.mu)]
        elif p.distribution == "log_normal":
            ends[p.name] = [math.exp(p.mu)]
        else:
            ends[p.name] = [p._quantise(p.low), p._quantise(p.high)]
    width = min(max(len(v) for v in ends.values()), 64)
    return [{name: values[i % len(values)] for name, values in ends.items()} for i in range(width)]


def prepare(args: argparse.Namespace, env: Mapping[str, str] | None = None) -> SweepPlan:
    """Validate the sweep against the training config and pick the backend; errors name the problem."""
    from training.train import load_train_config

    spec = load_sweep_config(args.config)
    name = args.name or spec.name or Path(args.config).stem
    slug = slugify(name)
    user = tuple(args.overrides)
    swept = {p.name for p in spec.parameters}
    for key in sorted(_override_keys(user)):
        if key in RESERVED_KEYS:
            raise SweepConfigError(f"override {key}=...: set by the sweep ({RESERVED_KEYS[key]})")
        if key in swept:
            raise SweepConfigError(f"override {key}=...: {key} is a sweep parameter; remove one of them")
    cfg = load_train_config(user)
    if cfg.data.validation_fraction <= 0:
        raise SweepConfigError("data.validation_fraction: a sweep needs a validation split (> 0) to score trials")
    added: list[str] = []
    user_keys = _override_keys(user) | swept
    if spec.metric.goal == "maximize" and "training.select_metric" not in user_keys:
        added.append(f"training.select_metric={spec.metric.field}")  # select each checkpoint on the objective
    if cfg.wandb.enabled and "wandb.group" not in user_keys:
        added.append(f"wandb.group={format_value(name)}")
    output_dir = Path(args.output_dir)
    runner = TrialRunner(spec.metric, (*user, *added), output_dir, output_dir / "sweeps" / slug, slug)
    for i, params in enumerate(probe_parameter_sets(spec)):
        try:
            load_train_config([*runner.base_overrides, *to_overrides(params)])
        except ConfigError as e:
            raise SweepConfigError(f"{args.config}: parameters {params} (probe {i}) are not a valid config: {e}") from e
    ignored = sorted(k for k in ("program", "command", "controller") if k in spec.raw)
    if ignored:
        log.info("sweep_keys_ignored", keys=ignored, note="trials run in this process (wandb.agent function / Optuna)")
    backend = choose_backend(args.backend, env)
    return SweepPlan(spec, name, slug, backend, runner, user, tuple(added))


def preview(plan: SweepPlan, count: int, seed: int | None) -> list[dict[str, Any]]:
    """Sample `count` parameter sets the way a fresh study would (bayes: its random start-up trials)."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    spec = plan.spec
    sampler = _sampler(spec, seed) if spec.method != "bayes" else optuna.samplers.RandomSampler(seed=seed)
    study = optuna.create_study(sampler=sampler, direction=spec.metric.goal)
    sets: list[dict[str, Any]] = []

    def record(trial: optuna.Trial) -> float:
        sets.append(spec.sample(trial))
        return 0.0

    # optimize, not ask/tell: GridSampler stops the study itself once the grid is done.
    study.optimize(record, n_trials=min(count, spec.grid_size()) if spec.method == "grid" else count)
    return sets


def format_plan(plan: SweepPlan, sets: Sequence[Mapping[str, Any]], storage: str | None) -> str:
    """The dry-run text: backend and why, the parameter mapping, and each trial's overrides."""
    spec = plan.spec
    lines = [
        f"sweep {plan.name!r}: method {spec.method}, metric {spec.metric.name} ({spec.metric.goal}; measured on the "
        "validation split only)",
        f"backend: {plan.backend.backend} ({plan.backend.reason})",
        f"storage: {storage or 'in memory (pass --storage sqlite:///sweeps.db to resume or share the study)'}",
        f"outputs: trial runs under {plan.runner.output_dir}/, summary in {plan.runner.sweep_dir}/",
        "parameters:",
    ]
    width = max(len(p.name) for p in spec.parameters)
    lines += [f"  {p.name.ljust(width)}  {p.describe(spec.method)}" for p in spec.parameters]
    if spec.early_terminate is not None:
        h = spec.early_terminate
        lines.append(
            f"early_terminate: hyperband → HyperbandPruner(min_resource={h.min_resource()}, max_resource="
            f"{h.max_iter if h.max_iter is not None else 'auto'}, reduction_factor={h.eta}); one resource unit is "
            "one validation pass"
        )
    if spec.run_cap is not None:
        lines.append(f"run_cap: {spec.run_cap} trials over all workers")
    if plan.added_overrides:
        lines.append("added to every trial: " + " ".join(plan.added_overrides))
    note = " (bayes: TPE's random start-up trials; later ones follow the results)" if spec.method == "bayes" else ""
    lines.append(f"trials ({len(sets)}){note}:")
    for i, params in enumerate(sets):
        lines.append(f"  {i:>3}  " + shlex.join([*plan.user_overrides, *to_overrides(params)]))
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    """The `ai-trading sweep` argument parser."""
    parser = argparse.ArgumentParser(
        prog="ai-trading sweep",
        description="Run a hyperparameter sweep from a W&B sweep YAML: a W&B sweep when a server is reachable, "
        "else a local Optuna study. The objective is always a validation metric; the test split is never tuned on.",
        epilog="examples:\n"
        "  ai-trading sweep --config sweep_config.yaml\n"
        '  ai-trading sweep --config sweep_config.yaml --name "lr_and_layers_sweep" --count 20\n'
        "  ai-trading sweep --config sweep_config.yaml --storage sqlite:///sweeps.db data.start=2024-01-01\n"
        "  ai-trading sweep --config sweep_config.yaml --dry-run",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--config", default="sweep_config.yaml", help="sweep YAML (W&B schema)")
    parser.add_argument("--name", help="sweep / study name (default: the YAML's name, else the file name)")
    parser.add_argument("--count", type=_positive_int, help="trials to run in this process")
    parser.add_argument("--backend", choices=("auto", "wandb", "optuna"), default="auto", help="default: auto")
    parser.add_argument("--storage", help="Optuna RDB URL, e.g. sqlite:///sweeps.db (resumable, shareable)")
    parser.add_argument("--project", help="W&B project (default: the YAML's, WANDB_PROJECT, or ai-trading)")
    parser.add_argument("--entity", help="W&B entity (default: the YAML's or WANDB_ENTITY)")
    parser.add_argument("--sweep-id", help="join an existing W&B sweep (ENTITY/PROJECT/ID) instead of creating one")
    parser.add_argument("--output-dir", default="outputs", help="root of the trial runs and sweep results")
    parser.add_argument("--seed", type=int, help="sampler seed (reproducible trial parameters)")
    parser.add_argument("--dry-run", action="store_true", help="print the mapping and the trials' parameters, exit")
    parser.add_argument("--log-level", default=None, help="log level (default INFO)")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="Hydra overrides applied to every trial")
    return parser


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def main(argv: Sequence[str] | None = None) -> int:
    """Run a sweep from the command line; exit 0 ok, 1 error, 2 bad config, 130 interrupted."""
    args = build_parser().parse_args(list(sys.argv[1:] if argv is None else argv))
    api_key = os.environ.get("WANDB_API_KEY")
    configure_logging(args.log_level, secrets=[api_key] if api_key else ())
    try:
        plan = prepare(args)
    except ConfigError as e:
        print(f"ai-trading sweep: {e}", file=sys.stderr)
        return EXIT_CONFIG
    except SweepError as e:
        print(f"ai-trading sweep: {e}", file=sys.stderr)
        return EXIT_ERROR
    spec, runner = plan.spec, plan.runner
    log.info("sweep_backend_selected", backend=plan.backend.backend, reason=plan.backend.reason, sweep=plan.name)
    if args.dry_run:
        count = args.count or (spec.grid_size() if spec.method == "grid" else spec.run_cap or DEFAULT_COUNT)
        print(format_plan(plan, preview(plan, count, args.seed), args.storage))
        return EXIT_OK
    header: dict[str, Any] = {
        "name": plan.name,
        "backend": plan.backend.backend,
        "backend_reason": plan.backend.reason,
        "method": spec.method,
        "metric": dataclasses.asdict(spec.metric),
        "objective": f"{spec.metric.name} of each run's selected checkpoint, on the validation split only; "
        "test_total_return is shown for information and never used to choose",
        "config": str(args.config),
        "overrides": list(runner.base_overrides),
        "output_dir": str(runner.output_dir),
    }
    interrupted = False
    try:
        if plan.backend.backend == "optuna":
            header.update(storage=args.storage, study_name=plan.name)
            study = open_study(spec, plan.name, args.storage, args.seed)
            budget = trial_budget(spec, args.count, len(study.trials))
            log.info("sweep_started", trials=budget, existing_trials=len(study.trials), storage=args.storage)
            if budget == 0:
                log.warning("sweep_nothing_to_run", run_cap=spec.run_cap, existing_trials=len(study.trials))

            def save() -> None:
                write_results(runner.sweep_dir, header, rows_from_study(study), spec.metric, runner.base_overrides)

            try:
                interrupted = run_optuna(spec, runner, study, budget, on_trial_end=save)
            except KeyboardInterrupt:
                interrupted = True
            rows = rows_from_study(study)
        else:
            project = args.project or spec.raw.get("project") or os.environ.get("WANDB_PROJECT") or "ai-trading"
            entity = args.entity or spec.raw.get("entity") or os.environ.get("WANDB_ENTITY")
            header.update(project=project, entity=entity)

            def save_results(results: list[TrialResult]) -> None:
                rows = [r.attrs() for r in results]
                write_results(runner.sweep_dir, header, rows, spec.metric, runner.base_overrides)

            sweep_id, results = run_wandb(
                spec,
                runner,
                name=plan.name,
                project=project,
                entity=entity,
                count=args.count,
                sweep_id=args.sweep_id,
                on_trial_end=save_results,
            )
            header["sweep_id"] = sweep_id
            rows = [r.attrs() for r in results]
    except ConfigError as e:
        print(f"ai-trading sweep: {e}", file=sys.stderr)
        return EXIT_CONFIG
    summary = write_results(runner.sweep_dir, header, rows, spec.metric, runner.base_overrides)
    print(format_results(rows, spec.metric, summary))
    print(f"\nsweep summary: {runner.sweep_dir / SUMMARY_FILE}")
    if interrupted:
        return EXIT_INTERRUPTED
    return EXIT_OK if summary["best"] is not None or not rows else EXIT_ERROR


if __name__ == "__main__":
    raise SystemExit(main())
