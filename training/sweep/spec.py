"""The sweep specification: a validated W&B sweep YAML as parameters, the objective and early termination."""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
import math
import re
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from bot.errors import ConfigError
from bot.evaluation import EvaluationReport

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
CONFIG_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z0-9_]+)*$")
"""A dotted training config key (`training.lr`)."""
_PRIMITIVE = (str, int, float, bool, type(None))


class SweepConfigError(ConfigError):
    """The sweep YAML or the sweep's command line is invalid; the message names the key."""


class SweepError(RuntimeError):
    """The sweep cannot run (e.g. the requested W&B server is unavailable)."""


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
