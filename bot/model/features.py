"""The one feature pipeline: OHLCV candles to policy observations, in batch (training) and live (daemon).

Features at bar ``t`` use bars ``<= t`` only (causal). Every feature is defined once, by the vectorised
functions in this module; the incremental path (`IncrementalFeatures`) keeps the last few candles in ring
buffers and evaluates each formula at the last bar only, so live and batch agree to rounding (a test replays
real candles and checks every bar to 1e-9).

Features (each row of the ``[T, n_features]`` matrix; ``c`` close, ``o`` open, ``h`` high, ``l`` low, ``v``
volume; times are the bar's open time, UTC):

- ``log_return``: ``log(c[t] / c[t-1])``.
- ``body``, ``upper_wick``, ``lower_wick``, ``range``: candle shape relative to the close,
  ``(c - o) / c``, ``(h - max(o, c)) / c``, ``(min(o, c) - l) / c``, ``(h - l) / c``.
- ``volatility``: population std of the last ``volatility_window`` log returns.
- ``volume_ratio``: ``log1p(v[t] / mean(v[t-n+1..t]))`` with ``n = volume_window`` (0 when that mean is 0).
- ``hour_sin``, ``hour_cos``: time of day on the unit circle; ``dow_sin``, ``dow_cos``: day of week.

A bar's features are valid once enough history exists (`FeatureSpec.warmup_bars` earlier bars); invalid rows
are 0.0 and flagged in the mask, never NaN.

Observation (what the policy sees at the close of bar ``t``), flat float32 of `FeatureSpec.observation_shape`
``(window * n_features + 3,)``:
``concat(features[t-window+1 .. t].ravel(), [position, unrealised_pnl, time_in_position])``, the window
oldest bar first and row-major (reshape the first part to ``[window, n_features]``). The position state is
appended by the consumer (env or daemon) with `position_state`:

- ``position``: the position held, as a signed fraction of equity (1 = fully long, -1 = fully short).
- ``unrealised_pnl``: the open trade's PnL so far (marked to the close, net of its costs) / equity.
- ``time_in_position``: ``log1p(bars the open trade has been held)``, 0 when flat.

Normalisation ``(x - mean) / max(std, STD_FLOOR)`` uses statistics fitted on the training split only
(`fit_normalisation`) and applies to the window part; the state part is passed through
(`FeatureSpec.observation_normalisation` gives the per-element mean/std, for baking into an ONNX graph).
The training env feeds the policy normalised observations; an exported graph that normalises inside takes
the raw observation (`raw_observation`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from itertools import pairwise
from types import MappingProxyType
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt
from numpy.lib.stride_tricks import sliding_window_view

from adapters.types import Candle, ms_from_utc, utc_from_ms

FloatArray = npt.NDArray[np.float64]
BoolArray = npt.NDArray[np.bool_]
IntArray = npt.NDArray[np.int64]

FEATURE_SPEC_VERSION = "features-v1"
"""Version of the feature definitions; a spec of another version is refused."""
STD_FLOOR = 1e-8
"""Smallest std divided by in normalisation (fitted stds below it are stored as 1.0)."""
STATE_NAMES = ("position", "unrealised_pnl", "time_in_position")
"""Position-state values appended to every observation, in this order."""
DEFAULT_FEATURES = (
    "log_return",
    "body",
    "upper_wick",
    "lower_wick",
    "volatility",
    "volume_ratio",
    "hour_sin",
    "hour_cos",
    "dow_sin",
    "dow_cos",
)
"""Features of the default spec, in observation order."""
DEFAULT_PARAMS: Mapping[str, int] = MappingProxyType({"volatility_window": 24, "volume_window": 24})
"""Default parameters of the rolling features."""
DEFAULT_WINDOW = 32
"""Default number of bars in an observation window."""

_MS_PER_DAY = 86_400_000
_MS_PER_WEEK = 7 * _MS_PER_DAY
# Epoch day 0 (1970-01-01) was a Thursday; shift so that Monday 00:00 UTC is angle 0.
_MONDAY_OFFSET_MS = 3 * _MS_PER_DAY
_TWO_PI = 2.0 * math.pi


@dataclass(frozen=True)
class _Bars:
    """The raw candle columns features are computed from (arrays of equal length)."""

    ts_ms: IntArray
    open: FloatArray
    high: FloatArray
    low: FloatArray
    close: FloatArray
    volume: FloatArray


def _lookback_zero(params: Mapping[str, int]) -> int:
    return 0


def _lookback_return(params: Mapping[str, int]) -> int:
    return 1


def _lookback_volatility(params: Mapping[str, int]) -> int:
    return params["volatility_window"]


def _lookback_volume(params: Mapping[str, int]) -> int:
    return params["volume_window"] - 1


def _log_return(bars: _Bars, params: Mapping[str, int]) -> FloatArray:
    out = np.zeros(len(bars.close))
    out[1:] = np.log(bars.close[1:] / bars.close[:-1])
    return out


def _body(bars: _Bars, params: Mapping[str, int]) -> FloatArray:
    return (bars.close - bars.open) / bars.close


def _upper_wick(bars: _Bars, params: Mapping[str, int]) -> FloatArray:
    return (bars.high - np.maximum(bars.open, bars.close)) / bars.close


def _lower_wick(bars: _Bars, params: Mapping[str, int]) -> FloatArray:
    return (np.minimum(bars.open, bars.close) - bars.low) / bars.close


def _range(bars: _Bars, params: Mapping[str, int]) -> FloatArray:
    return (bars.high - bars.low) / bars.close


def _volatility(bars: _Bars, params: Mapping[str, int]) -> FloatArray:
    n = params["volatility_window"]
    returns = _log_return(bars, params)
    out = np.zeros(len(returns))
    if len(returns) > n:
        # Explicit mean/std over each window of the last n returns (no running sums that drift), a block of
        # windows at a time: the squared deviations of every window at once are T x n floats (200,000 5m
        # candles, n = 24: 38 MB). Each window's figures do not depend on the block it is in.
        windows = sliding_window_view(returns[1:], n)
        for first in range(0, len(windows), _VOLATILITY_BLOCK):
            block = windows[first : first + _VOLATILITY_BLOCK]
            mean = block.mean(axis=1)
            out[n + first : n + first + len(block)] = np.sqrt(((block - mean[:, None]) ** 2).mean(axis=1))
    return out


_VOLATILITY_BLOCK = 8192
"""Windows whose volatility is computed at once (8192 x 24 floats: 1.5 MB of temporaries)."""


def _volume_ratio(bars: _Bars, params: Mapping[str, int]) -> FloatArray:
    n = params["volume_window"]
    out = np.zeros(len(bars.volume))
    if len(bars.volume) >= n:
        mean = sliding_window_view(bars.volume, n).mean(axis=1)
        current = bars.volume[n - 1 :]
        ratio = np.divide(current, mean, out=np.zeros_like(mean), where=mean > 0)
        out[n - 1 :] = np.log1p(ratio)
    return out


def _time_angle(ts_ms: IntArray, period_ms: int, offset_ms: int) -> FloatArray:
    phase = (ts_ms + offset_ms) % period_ms
    return _TWO_PI * phase.astype(np.float64) / period_ms


def _hour_sin(bars: _Bars, params: Mapping[str, int]) -> FloatArray:
    return np.sin(_time_angle(bars.ts_ms, _MS_PER_DAY, 0))


def _hour_cos(bars: _Bars, params: Mapping[str, int]) -> FloatArray:
    return np.cos(_time_angle(bars.ts_ms, _MS_PER_DAY, 0))


def _dow_sin(bars: _Bars, params: Mapping[str, int]) -> FloatArray:
    return np.sin(_time_angle(bars.ts_ms, _MS_PER_WEEK, _MONDAY_OFFSET_MS))


def _dow_cos(bars: _Bars, params: Mapping[str, int]) -> FloatArray:
    return np.cos(_time_angle(bars.ts_ms, _MS_PER_WEEK, _MONDAY_OFFSET_MS))


# The last bar's value of each feature, from the live ring buffers (`_Bars` of the last `warmup_bars + 1`
# candles): the formulas above, evaluated at one bar in plain floats instead of over a whole array (the batch
# functions on a 25-bar buffer cost ~80 µs a candle; these ~10 µs). `tests/test_features.py` replays real
# candles and checks every bar against the batch functions to 1e-9.


def _last_log_return(bars: _Bars, params: Mapping[str, int]) -> float:
    return math.log(float(bars.close[-1]) / float(bars.close[-2]))


def _last_body(bars: _Bars, params: Mapping[str, int]) -> float:
    c = float(bars.close[-1])
    return (c - float(bars.open[-1])) / c


def _last_upper_wick(bars: _Bars, params: Mapping[str, int]) -> float:
    c = float(bars.close[-1])
    return (float(bars.high[-1]) - max(float(bars.open[-1]), c)) / c


def _last_lower_wick(bars: _Bars, params: Mapping[str, int]) -> float:
    c = float(bars.close[-1])
    return (min(float(bars.open[-1]), c) - float(bars.low[-1])) / c


def _last_range(bars: _Bars, params: Mapping[str, int]) -> float:
    return (float(bars.high[-1]) - float(bars.low[-1])) / float(bars.close[-1])


def _last_volatility(bars: _Bars, params: Mapping[str, int]) -> float:
    n = params["volatility_window"]
    closes = bars.close[-(n + 1) :].tolist()
    returns = [math.log(b / a) for a, b in pairwise(closes)]
    mean = math.fsum(returns) / n
    return math.sqrt(math.fsum((r - mean) ** 2 for r in returns) / n)


def _last_volume_ratio(bars: _Bars, params: Mapping[str, int]) -> float:
    volumes = bars.volume[-params["volume_window"] :].tolist()
    mean = math.fsum(volumes) / len(volumes)
    return math.log1p(volumes[-1] / mean) if mean > 0 else 0.0


def _last_angle(bars: _Bars, period_ms: int, offset_ms: int) -> float:
    return _TWO_PI * float((int(bars.ts_ms[-1]) + offset_ms) % period_ms) / period_ms


def _last_hour_sin(bars: _Bars, params: Mapping[str, int]) -> float:
    return math.sin(_last_angle(bars, _MS_PER_DAY, 0))


def _last_hour_cos(bars: _Bars, params: Mapping[str, int]) -> float:
    return math.cos(_last_angle(bars, _MS_PER_DAY, 0))


def _last_dow_sin(bars: _Bars, params: Mapping[str, int]) -> float:
    return math.sin(_last_angle(bars, _MS_PER_WEEK, _MONDAY_OFFSET_MS))


def _last_dow_cos(bars: _Bars, params: Mapping[str, int]) -> float:
    return math.cos(_last_angle(bars, _MS_PER_WEEK, _MONDAY_OFFSET_MS))


@dataclass(frozen=True)
class _Feature:
    compute: Callable[[_Bars, Mapping[str, int]], FloatArray]
    """Every bar's value (batch: training, the backtest)."""
    last: Callable[[_Bars, Mapping[str, int]], float]
    """The last bar's value (live), the same formula at one bar."""
    lookback: Callable[[Mapping[str, int]], int]
    params: tuple[str, ...] = ()


_FEATURES: Mapping[str, _Feature] = MappingProxyType(
    {
        "log_return": _Feature(_log_return, _last_log_return, _lookback_return),
        "body": _Feature(_body, _last_body, _lookback_zero),
        "upper_wick": _Feature(_upper_wick, _last_upper_wick, _lookback_zero),
        "lower_wick": _Feature(_lower_wick, _last_lower_wick, _lookback_zero),
        "range": _Feature(_range, _last_range, _lookback_zero),
        "volatility": _Feature(_volatility, _last_volatility, _lookback_volatility, ("volatility_window",)),
        "volume_ratio": _Feature(_volume_ratio, _last_volume_ratio, _lookback_volume, ("volume_window",)),
        "hour_sin": _Feature(_hour_sin, _last_hour_sin, _lookback_zero),
        "hour_cos": _Feature(_hour_cos, _last_hour_cos, _lookback_zero),
        "dow_sin": _Feature(_dow_sin, _last_dow_sin, _lookback_zero),
        "dow_cos": _Feature(_dow_cos, _last_dow_cos, _lookback_zero),
    }
)
KNOWN_FEATURES = tuple(_FEATURES)
"""Every feature name this version can compute."""
_MIN_PARAM = 2


@dataclass(frozen=True)
class FeatureSpec:
    """What the policy observes: which features, how many bars, their parameters and normalisation."""

    names: tuple[str, ...] = DEFAULT_FEATURES
    """Feature names, in observation order (see `KNOWN_FEATURES`)."""
    window: int = DEFAULT_WINDOW
    """Number of bars in an observation window."""
    params: Mapping[str, int] = field(default_factory=lambda: dict(DEFAULT_PARAMS))
    """Parameters of the rolling features (`volatility_window`, `volume_window`), in bars."""
    norm_mean: tuple[float, ...] | None = None
    """Per-feature mean fitted on the training split, or None before fitting."""
    norm_std: tuple[float, ...] | None = None
    """Per-feature std fitted on the training split (each >= STD_FLOOR), or None before fitting."""
    version: str = FEATURE_SPEC_VERSION
    """Version of the feature definitions the spec was made with."""

    def __post_init__(self) -> None:
        if self.version != FEATURE_SPEC_VERSION:
            raise ValueError(
                f"feature spec version {self.version!r} is not supported; this build computes {FEATURE_SPEC_VERSION!r}"
            )
        names = tuple(self.names)
        if not names:
            raise ValueError("feature spec names must list at least one feature")
        unknown = [n for n in names if n not in _FEATURES]
        if unknown:
            raise ValueError(f"unknown feature names {unknown}; known: {list(KNOWN_FEATURES)}")
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"feature spec names repeat {duplicates}")
        object.__setattr__(self, "names", names)
        if isinstance(self.window, bool) or not isinstance(self.window, int) or self.window < 1:
            raise ValueError(f"feature spec window must be an integer >= 1, was {self.window!r}")
        object.__setattr__(self, "params", MappingProxyType(self._checked_params()))
        object.__setattr__(self, "norm_mean", self._checked_norm("norm_mean", self.norm_mean))
        object.__setattr__(self, "norm_std", self._checked_norm("norm_std", self.norm_std))
        if (self.norm_mean is None) != (self.norm_std is None):
            raise ValueError("feature spec needs both norm_mean and norm_std, or neither")
        if self.norm_std is not None and min(self.norm_std) < STD_FLOOR:
            raise ValueError(f"feature spec norm_std values must be >= {STD_FLOOR}, was {min(self.norm_std)}")

    def _checked_params(self) -> dict[str, int]:
        given = dict(self.params)
        needed = sorted({p for n in self.names for p in _FEATURES[n].params})
        known = sorted({p for f in _FEATURES.values() for p in f.params})
        unknown = sorted(set(given) - set(known))
        if unknown:
            raise ValueError(f"unknown feature params {unknown}; known: {known}")
        checked: dict[str, int] = {}
        for key in needed:
            value = given.get(key, DEFAULT_PARAMS.get(key))
            if isinstance(value, bool) or not isinstance(value, int) or value < _MIN_PARAM:
                raise ValueError(f"feature param {key} must be an integer >= {_MIN_PARAM}, was {value!r}")
            checked[key] = value
        return checked

    def _checked_norm(self, key: str, values: Sequence[float] | None) -> tuple[float, ...] | None:
        if values is None:
            return None
        result = tuple(float(v) for v in values)
        if len(result) != len(self.names):
            raise ValueError(f"feature spec {key} has {len(result)} values for {len(self.names)} features")
        if not all(math.isfinite(v) for v in result):
            raise ValueError(f"feature spec {key} must be finite, was {list(result)}")
        return result

    @property
    def n_features(self) -> int:
        """Number of features per bar."""
        return len(self.names)

    @property
    def warmup_bars(self) -> int:
        """Earlier bars a bar needs before its features are valid (index of the first valid bar)."""
        return max(_FEATURES[n].lookback(self.params) for n in self.names)

    @property
    def min_history(self) -> int:
        """Bars needed before the first complete observation window exists."""
        return self.warmup_bars + self.window

    @property
    def state_names(self) -> tuple[str, ...]:
        """Names of the position-state values appended to the observation."""
        return STATE_NAMES

    @property
    def observation_size(self) -> int:
        """Number of values in one flat observation."""
        return self.window * self.n_features + len(STATE_NAMES)

    @property
    def observation_shape(self) -> tuple[int]:
        """Shape of one flat observation (float32)."""
        return (self.observation_size,)

    @property
    def is_fitted(self) -> bool:
        """Whether normalisation statistics are present."""
        return self.norm_mean is not None

    def observation_normalisation(self) -> tuple[FloatArray, FloatArray]:
        """Return per-element (mean, std) of a flat observation: feature stats tiled, state passed through."""
        if self.norm_mean is None or self.norm_std is None:
            raise ValueError("feature spec has no normalisation statistics; call fit_normalisation first")
        n_state = len(STATE_NAMES)
        mean = np.concatenate([np.tile(np.asarray(self.norm_mean), self.window), np.zeros(n_state)])
        std = np.concatenate([np.tile(np.asarray(self.norm_std), self.window), np.ones(n_state)])
        return mean, std

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-safe dict (for the model card)."""
        return {
            "version": self.version,
            "names": list(self.names),
            "window": self.window,
            "params": dict(self.params),
            "norm_mean": None if self.norm_mean is None else list(self.norm_mean),
            "norm_std": None if self.norm_std is None else list(self.norm_std),
            "state_names": list(STATE_NAMES),
            "observation_shape": list(self.observation_shape),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> FeatureSpec:
        """Rebuild a spec from `to_dict` output; raise ValueError naming the bad key or value."""
        if not isinstance(data, Mapping):
            raise ValueError(f"feature spec must be a mapping, was {type(data).__name__}")
        required = ("version", "names", "window", "params")
        missing = [k for k in required if k not in data]
        if missing:
            raise ValueError(f"feature spec is missing keys {missing}")
        allowed = {*required, "norm_mean", "norm_std", "state_names", "observation_shape"}
        unknown = sorted(set(data) - allowed)
        if unknown:
            raise ValueError(f"feature spec has unknown keys {unknown}")
        if not isinstance(data["names"], list | tuple):
            raise ValueError(f"feature spec names must be a list, was {data['names']!r}")
        if not isinstance(data["params"], Mapping):
            raise ValueError(f"feature spec params must be a mapping, was {data['params']!r}")
        spec = cls(
            names=tuple(data["names"]),
            window=data["window"],
            params=dict(data["params"]),
            norm_mean=data.get("norm_mean"),
            norm_std=data.get("norm_std"),
            version=data["version"],
        )
        if "state_names" in data and list(data["state_names"]) != list(STATE_NAMES):
            raise ValueError(f"feature spec state_names {data['state_names']} differ from {list(STATE_NAMES)}")
        if "observation_shape" in data and list(data["observation_shape"]) != list(spec.observation_shape):
            raise ValueError(
                f"feature spec observation_shape {data['observation_shape']} does not match the "
                f"{list(spec.observation_shape)} its names and window give"
            )
        return spec

    def with_normalisation(self, mean: Sequence[float], std: Sequence[float]) -> FeatureSpec:
        """Return a copy carrying the given normalisation statistics."""
        return replace(self, norm_mean=tuple(float(v) for v in mean), norm_std=tuple(float(v) for v in std))


def candle_arrays(frame: Any) -> tuple[IntArray, FloatArray, FloatArray, FloatArray, FloatArray, FloatArray]:
    """Return (ts_ms, open, high, low, close, volume) arrays of a canonical candle frame (UTC DatetimeIndex)."""
    index = frame.index
    if getattr(index, "tz", None) is None:
        raise ValueError("candle frame index must be a tz-aware (UTC) DatetimeIndex")
    ts_ms = np.asarray(index.as_unit("ms").asi8, dtype=np.int64)
    o, h, lo, c, v = (np.ascontiguousarray(frame[name].to_numpy(dtype=np.float64)) for name in _PRICE_COLUMNS)
    return ts_ms, o, h, lo, c, v


_PRICE_COLUMNS = ("open", "high", "low", "close", "volume")


def _describe_bar(ts_ms: IntArray, i: int) -> str:
    return f"row {i} (ts_ms={int(ts_ms[i])}, {utc_from_ms(int(ts_ms[i])).isoformat()})"


def validate_candles(
    ts_ms: npt.ArrayLike,
    open: npt.ArrayLike,
    high: npt.ArrayLike,
    low: npt.ArrayLike,
    close: npt.ArrayLike,
    volume: npt.ArrayLike,
) -> tuple[IntArray, FloatArray, FloatArray, FloatArray, FloatArray, FloatArray]:
    """Check candle arrays (equal length, increasing times, finite, consistent OHLC) and return them typed."""
    ts = np.asarray(ts_ms)
    if ts.ndim != 1 or ts.dtype.kind not in "iu":
        raise ValueError(f"ts_ms must be a 1-D integer array of epoch milliseconds, was {ts.dtype} {ts.shape}")
    ts = ts.astype(np.int64, copy=False)
    arrays = []
    for name, values in zip(_PRICE_COLUMNS, (open, high, low, close, volume), strict=True):
        array = np.ascontiguousarray(values, dtype=np.float64)
        if array.shape != ts.shape:
            raise ValueError(f"candle column {name} has shape {array.shape}, ts_ms has {ts.shape}")
        bad = ~np.isfinite(array)
        if bad.any():
            i = int(np.argmax(bad))
            raise ValueError(f"candle column {name} is not finite at {_describe_bar(ts, i)}: {array[i]}")
        arrays.append(array)
    o, h, lo, c, v = arrays
    checks = (
        ("prices must be > 0", (o <= 0) | (h <= 0) | (lo <= 0) | (c <= 0)),
        ("volume must be >= 0", v < 0),
        ("high must be >= max(open, close)", h < np.maximum(o, c)),
        ("low must be <= min(open, close)", lo > np.minimum(o, c)),
    )
    for message, bad in checks:
        if bad.any():
            i = int(np.argmax(bad))
            raise ValueError(
                f"candle {_describe_bar(ts, i)} is invalid: {message} "
                f"(open={o[i]} high={h[i]} low={lo[i]} close={c[i]} volume={v[i]})"
            )
    if len(ts) > 1:
        bad_order = np.diff(ts) <= 0
        if bad_order.any():
            i = int(np.argmax(bad_order)) + 1
            raise ValueError(
                f"candle times must be strictly increasing: {_describe_bar(ts, i)} follows ts_ms={int(ts[i - 1])}"
            )
    return ts, o, h, lo, c, v


def compute_features(
    spec: FeatureSpec,
    ts_ms: npt.ArrayLike,
    open: npt.ArrayLike,
    high: npt.ArrayLike,
    low: npt.ArrayLike,
    close: npt.ArrayLike,
    volume: npt.ArrayLike,
) -> tuple[FloatArray, BoolArray]:
    """Compute raw features for every bar: (features [T, n_features] float64, valid mask [T]).

    Rows before `spec.warmup_bars` are 0.0 and marked invalid.
    """
    bars = _Bars(*validate_candles(ts_ms, open, high, low, close, volume))
    return _compute(spec, bars)


def _compute(spec: FeatureSpec, bars: _Bars) -> tuple[FloatArray, BoolArray]:
    count = len(bars.close)
    features = np.empty((count, spec.n_features))
    for j, name in enumerate(spec.names):
        features[:, j] = _FEATURES[name].compute(bars, spec.params)
    valid = np.arange(count) >= spec.warmup_bars
    features[~valid] = 0.0
    return features, valid


def observation_valid(spec: FeatureSpec, valid: BoolArray) -> BoolArray:
    """Return, per bar, whether a complete observation window of valid feature rows ends there."""
    count = len(valid)
    ok = np.zeros(count, dtype=bool)
    if count >= spec.window:
        ok[spec.window - 1 :] = sliding_window_view(valid, spec.window).all(axis=1)
    return ok


def fit_normalisation(spec: FeatureSpec, features: FloatArray, train_mask: BoolArray) -> FeatureSpec:
    """Return `spec` with mean/std fitted on the rows of `features` where `train_mask` is True.

    Pass the valid mask restricted to the training split; stds below STD_FLOOR are stored as 1.0.
    """
    features = np.asarray(features, dtype=np.float64)
    mask = np.asarray(train_mask, dtype=bool)
    if features.ndim != 2 or features.shape[1] != spec.n_features:
        raise ValueError(f"features must have shape (T, {spec.n_features}), was {features.shape}")
    if mask.shape != (features.shape[0],):
        raise ValueError(f"train_mask must have shape ({features.shape[0]},), was {mask.shape}")
    rows = features[mask]
    if len(rows) < 2:
        raise ValueError(f"fit_normalisation needs at least 2 training rows, got {len(rows)}")
    mean = rows.mean(axis=0)
    std = rows.std(axis=0)
    std = np.where(std < STD_FLOOR, 1.0, std)
    return spec.with_normalisation(mean.tolist(), std.tolist())


def normalise(spec: FeatureSpec, features: FloatArray) -> FloatArray:
    """Return ``(features - mean) / max(std, STD_FLOOR)`` with the spec's fitted statistics."""
    if spec.norm_mean is None or spec.norm_std is None:
        raise ValueError("feature spec has no normalisation statistics; call fit_normalisation first")
    mean = np.asarray(spec.norm_mean)
    std = np.maximum(np.asarray(spec.norm_std), STD_FLOOR)
    result: FloatArray = (np.asarray(features, dtype=np.float64) - mean) / std
    return result


def position_state(position: float, unrealised_pnl: float, bars_in_position: int) -> tuple[float, float, float]:
    """Encode the position state appended to an observation (order: `STATE_NAMES`)."""
    return (float(position), float(unrealised_pnl), math.log1p(bars_in_position))


def raw_observation(window_features: FloatArray, state: Sequence[float]) -> npt.NDArray[np.float32]:
    """Flatten a raw [window, n_features] block and append the position state (float32)."""
    return np.concatenate([np.asarray(window_features).ravel(), np.asarray(state)]).astype(np.float32)


def normalised_observation(
    spec: FeatureSpec, window_features: FloatArray, state: Sequence[float]
) -> npt.NDArray[np.float32]:
    """Normalise a raw [window, n_features] block with the spec, flatten it and append the state (float32)."""
    return raw_observation(normalise(spec, window_features), state)


def _plausible(open: float, high: float, low: float, close: float, volume: float) -> bool:
    """Whether one candle passes `validate_candles` (the scalar test; that function says what is wrong)."""
    return (
        math.isfinite(open + high + low + close + volume)
        and min(open, high, low, close) > 0
        and volume >= 0
        and high >= max(open, close)
        and low <= min(open, close)
    )


class IncrementalFeatures:
    """Live feature state: feed closed candles one at a time, get the raw observation window back.

    Each update costs O(window): the last `warmup_bars + 1` candles are kept in ring buffers and each feature's
    formula is evaluated at the last bar (`_Feature.last`, checked against the batch functions to 1e-9).
    """

    def __init__(self, spec: FeatureSpec) -> None:
        """Start empty (warming up) for `spec`."""
        self.spec = spec
        self._history = spec.warmup_bars + 1
        self._bars = np.zeros((5, self._history))
        self._ts = np.zeros(self._history, dtype=np.int64)
        self._rows = np.zeros((spec.window, spec.n_features))
        self._features = tuple(_FEATURES[name] for name in spec.names)
        self._count = 0
        self._valid_rows = 0
        self._last_ts: int | None = None

    def copy(self) -> IncrementalFeatures:
        """Return an independent copy of this state (the spec, immutable, is shared)."""
        twin = IncrementalFeatures.__new__(IncrementalFeatures)
        twin.__dict__.update(self.__dict__)
        twin._bars, twin._ts, twin._rows = self._bars.copy(), self._ts.copy(), self._rows.copy()
        return twin

    @property
    def bars_seen(self) -> int:
        """Number of candles fed so far."""
        return self._count

    @property
    def is_warm(self) -> bool:
        """Whether a complete window of valid feature rows exists (observations are available)."""
        return self._valid_rows >= self.spec.window

    @property
    def bars_until_warm(self) -> int:
        """Candles still needed before the first observation."""
        return max(0, self.spec.min_history - self._count)

    @property
    def latest(self) -> FloatArray | None:
        """The last bar's raw feature row, or None while the features themselves warm up."""
        return self._rows[-1].copy() if self._valid_rows > 0 else None

    def update(
        self, ts_ms: int, open: float, high: float, low: float, close: float, volume: float
    ) -> FloatArray | None:
        """Add one closed candle; return the raw [window, n_features] window, or None while warming up."""
        ts_ms = int(ts_ms)
        if self._last_ts is not None and ts_ms <= self._last_ts:
            raise ValueError(
                f"candle ts_ms={ts_ms} is not after the previous candle ts_ms={self._last_ts}; "
                "feed closed candles once each, in time order"
            )
        open, high, low, close, volume = float(open), float(high), float(low), float(close), float(volume)
        if not _plausible(open, high, low, close, volume):
            validate_candles([ts_ms], [open], [high], [low], [close], [volume])  # raises, naming the problem
        self._ts[:-1] = self._ts[1:]
        self._ts[-1] = ts_ms
        self._bars[:, :-1] = self._bars[:, 1:]
        self._bars[:, -1] = (open, high, low, close, volume)
        self._count += 1
        self._last_ts = ts_ms
        if self._count < self._history:  # the first warmup_bars candles give no feature row
            return None
        bars = _Bars(self._ts, *self._bars)
        params = self.spec.params
        self._rows[:-1] = self._rows[1:]
        self._rows[-1] = [feature.last(bars, params) for feature in self._features]
        self._valid_rows += 1
        return self.window()

    def update_candle(self, candle: Candle) -> FloatArray | None:
        """Add one closed `Candle`; see `update`."""
        return self.update(
            ms_from_utc(candle.open_time), candle.open, candle.high, candle.low, candle.close, candle.volume
        )

    def window(self) -> FloatArray | None:
        """Return a copy of the raw [window, n_features] window, or None while warming up."""
        return self._rows.copy() if self.is_warm else None

    def observation(self, state: Sequence[float], *, normalised: bool) -> npt.NDArray[np.float32] | None:
        """Return the flat float32 observation with `state` appended, or None while warming up.

        Use normalised=False for a graph that normalises inside (the exported ONNX policy).
        """
        if not self.is_warm:
            return None
        if len(state) != len(STATE_NAMES):
            raise ValueError(f"state must hold {len(STATE_NAMES)} values {STATE_NAMES}, got {len(state)}")
        if normalised:
            return normalised_observation(self.spec, self._rows, state)
        return raw_observation(self._rows, state)


class FeatureSource(Protocol):
    """What the engine asks of a symbol's features: one closed candle in, the raw window out (None while warming)."""

    @property
    def bars_until_warm(self) -> int:
        """Candles still needed before the first observation."""
        ...

    @property
    def latest(self) -> FloatArray | None:
        """The last bar's raw feature row, or None while the features themselves warm up."""
        ...

    def update_candle(self, candle: Candle) -> FloatArray | None:
        """Add one closed candle; return the raw [window, n_features] window, or None while warming up."""
        ...


class PrecomputedFeatures:
    """A `FeatureSource` over features computed once for a whole candle history (a backtest).

    `compute_features` over the history gives every bar's row with the functions `IncrementalFeatures` evaluates
    bar by bar (the live/batch parity test checks they agree), and a row at bar t uses bars <= t only, so handing
    them out candle by candle looks ahead no more than the live path. Each candle is looked up by its open time:
    a candle the history does not hold is an error, never a silently misaligned window.
    """

    def __init__(self, spec: FeatureSpec, frame: Any) -> None:
        """Compute the features of `frame` (canonical candles: the warm-up history and every candle to be fed)."""
        ts_ms, opens, highs, lows, closes, volumes = candle_arrays(frame)
        self.spec = spec
        self._ts = ts_ms
        self._raw, valid = compute_features(spec, ts_ms, opens, highs, lows, closes, volumes)
        self._ready = observation_valid(spec, valid)
        self._valid = valid
        self._next = 0
        self._last = -1

    @property
    def raw(self) -> tuple[FloatArray, npt.NDArray[np.bool_]]:
        """Every bar's raw feature row and whether it is valid (the rows `latest` hands out one by one)."""
        return self._raw, self._valid

    @property
    def bars_until_warm(self) -> int:
        """Candles still needed before the first observation."""
        if self._last >= 0 and self._ready[self._last]:
            return 0
        ahead = np.flatnonzero(self._ready[self._next :])
        return int(ahead[0]) + 1 if ahead.size else len(self._ts) - self._next + self.spec.min_history

    @property
    def latest(self) -> FloatArray | None:
        """The last fed bar's raw feature row, or None while the features themselves warm up."""
        if self._last < 0 or not self._valid[self._last]:
            return None
        row: FloatArray = self._raw[self._last]
        return row

    @property
    def bar(self) -> int:
        """Index in the history of the last fed candle (-1 before the first)."""
        return self._last

    def windows(self, start: int, stop: int) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.bool_]]:
        """Return the raw [window, n_features] windows of bars [start, stop) (clipped to the history) as one
        read-only [n, window, n_features] view, and whether each bar has a full valid window (`update_candle`
        hands out the same windows, bar by bar)."""
        width = self.spec.window
        start, stop = max(start, width - 1), min(stop, len(self._ts))
        if start >= stop:
            return np.empty((0, width, self.spec.n_features)), np.zeros(0, dtype=bool)
        views = sliding_window_view(self._raw[start - width + 1 : stop], width, axis=0)  # [n, n_features, window]
        return views.transpose(0, 2, 1), self._ready[start:stop]

    def update_candle(self, candle: Candle) -> FloatArray | None:
        """Advance to `candle` (the next bar of the history); return its raw window, or None while warming up."""
        ts = ms_from_utc(candle.open_time)
        i = self._next
        if i >= len(self._ts) or self._ts[i] != ts:
            found = int(np.searchsorted(self._ts, ts))
            if found >= len(self._ts) or self._ts[found] != ts:
                raise ValueError(f"candle {candle.open_time.isoformat()} is not in the precomputed history")
            if found <= self._last:
                raise ValueError(
                    f"candle {candle.open_time.isoformat()} is not after the previous one; feed each candle once"
                )
            i = found
        self._last = i
        self._next = i + 1
        if not self._ready[i]:
            return None
        window: FloatArray = self._raw[i - self.spec.window + 1 : i + 1]
        return window
