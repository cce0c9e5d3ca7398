"""Gymnasium trading environment over real candles, with the paper venue's fees and slippage.

Execution convention (the same as `bot.evaluation.simulate_positions` and the paper venue): the action
chosen at the close of bar ``t`` is a target position (a signed fraction of equity in [-1, 1]) that fills
at the open of bar ``t + 1`` and is held through bar ``t + 1``. The portfolio is marked at every open and
close; between target changes the position stays at its fraction of equity. Changing the position from
``p_old`` to ``p_new`` costs ``|p_new - p_old| * equity_at_open * (taker fee + slippage fraction)`` from
`adapters.costs.CostModel`, the slippage's participation being the traded quantity
(``|Δp| * equity / open``) over the bar's volume (1.0 when the volume is 0). The participation cap of the
paper venue is not simulated (fills are complete).

Reward: ``REWARD_UNIT * log(equity[t+1] / equity[t]) * reward_scaling``: the bar's log return in percent.
Observation: see `bot.model.features` (a window of normalised features, then position, unrealised PnL,
log1p(bars in position)). An episode is a random window
of ``episode_length`` steps (training) or one pass from the first complete window to the last bar
(``episode_length=None, random_start=False``, evaluation). It is truncated at its last bar and terminated
only if equity reaches 0.

`info` holds ``equity`` and ``position`` every step; ``trade`` when a trade closed on this step and, on an
episode's last step, ``open_trade`` for a position still held (marked to the last close, no exit cost,
``is_open=True``). A trade runs from an entry (flat to non-zero, or a sign flip) to an exit (back to flat or
a flip); resizing keeps it open. Trade dicts hold: ``side`` ("long"/"short"), ``direction`` (+1/-1),
``entry_time_ms``/``exit_time_ms`` (open times of the filling bars), ``entry_price``/``exit_price`` (the
open moved by slippage), ``size`` (|position| at entry, fraction of equity), ``bars``, ``duration_seconds``,
``pnl`` (equity change it caused, after costs, quote currency), ``return_fraction`` (pnl / equity at entry),
``fees`` (taker fees), ``costs`` (fees + slippage) and ``is_open``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cached_property, lru_cache
from typing import Any, SupportsFloat

import gymnasium as gym
import numpy as np
import numpy.typing as npt
import pandas as pd
import structlog
from gymnasium import spaces
from numpy.lib.stride_tricks import sliding_window_view

from adapters.costs import CostModel
from bot.model.features import (
    FeatureSpec,
    candle_arrays,
    compute_features,
    fit_normalisation,
    normalise,
)

log = structlog.get_logger()

FloatArray = npt.NDArray[np.float64]
ObsArray = npt.NDArray[np.float32]

_COLUMNS = ("open", "high", "low", "close", "volume")
_INT_TYPES: frozenset[Any] = frozenset(
    {int, np.int64, np.int32, np.int16, np.int8, np.uint64, np.uint32, np.uint16, np.uint8}
)
REWARD_UNIT = 100.0
"""Rewards are log returns in percent. In plain log returns (about 0.005 a bar on 1h candles) the critic's
targets are too small to learn: with the shipped PPO settings a policy learned neither the planted edge of
`adapters.data.synthetic` nor anything on the bundled candles (tests/benchmarks/known_answer.py)."""
_BLOCK_ROWS = 64
"""Observations `TradingEnv.step` allocates at a time (rows of one block; see `step`)."""
DEFAULT_SAMPLE = "BTC/USDT-1h"
"""Bundled candles the env uses when no frame is given."""


@dataclass(frozen=True)
class EnvConfig:
    """Trading environment settings (mirrored by config/env/*.yaml; costs come from the root `costs`)."""

    window: int = 32
    """Bars in each observation window (the feature spec's window)."""
    episode_length: int | None = 720
    """Steps per episode; None runs from the first complete window to the last bar."""
    actions: tuple[float, ...] = (0.0, 1.0)
    """Target positions (fractions of equity in [-1, 1]) of the discrete actions; the range if continuous."""
    continuous: bool = False
    """Use a Box action (a target position in [min(actions), max(actions)]) instead of Discrete."""
    reward_scaling: float = 1.0
    """Multiplier of the reward, the bar's log equity change in percent (`REWARD_UNIT`)."""
    initial_equity: float = 10_000.0
    """Equity at the start of every episode, in the quote currency."""
    random_start: bool = True
    """Start episodes at random bars (training); False starts at the first complete window (evaluation)."""

    def __post_init__(self) -> None:
        actions = tuple(float(a) for a in self.actions)
        object.__setattr__(self, "actions", actions)
        if isinstance(self.window, bool) or not isinstance(self.window, int) or self.window < 1:
            raise ValueError(f"env.window must be an integer >= 1, was {self.window!r}")
        if self.episode_length is not None and (
            isinstance(self.episode_length, bool) or not isinstance(self.episode_length, int) or self.episode_length < 1
        ):
            raise ValueError(f"env.episode_length must be an integer >= 1 or None, was {self.episode_length!r}")
        if not actions:
            raise ValueError("env.actions must list at least one target position")
        bad = [a for a in actions if not math.isfinite(a) or abs(a) > 1.0]
        if bad:
            raise ValueError(f"env.actions must be finite target positions in [-1, 1], got {bad}")
        if len(set(actions)) != len(actions):
            raise ValueError(f"env.actions must not repeat a target position, was {list(actions)}")
        if self.continuous and min(actions) == max(actions):
            raise ValueError(f"continuous env.actions must span a range (min < max), was {list(actions)}")
        if not math.isfinite(self.reward_scaling) or self.reward_scaling <= 0:
            raise ValueError(f"env.reward_scaling must be finite and > 0, was {self.reward_scaling}")
        if not math.isfinite(self.initial_equity) or self.initial_equity <= 0:
            raise ValueError(f"env.initial_equity must be finite and > 0, was {self.initial_equity}")
        if self.random_start and self.episode_length is None:
            raise ValueError("env.random_start needs env.episode_length (None means one full sequential pass)")


def validate_frame(frame: object) -> pd.DataFrame:
    """Check that `frame` is a canonical candle frame and return it; raise ValueError naming the problem."""
    if not isinstance(frame, pd.DataFrame):
        raise ValueError(f"candle frame must be a pandas DataFrame, was {type(frame).__name__}")
    if list(frame.columns) != list(_COLUMNS):
        raise ValueError(f"candle frame columns must be exactly {list(_COLUMNS)}, were {list(frame.columns)}")
    index = frame.index
    if not isinstance(index, pd.DatetimeIndex):
        raise ValueError(f"candle frame index must be a DatetimeIndex, was {type(index).__name__}")
    if index.tz is None or str(index.tz) != "UTC":
        raise ValueError(f"candle frame index must be in UTC, was tz={index.tz}")
    not_float = [c for c in _COLUMNS if frame[c].dtype != np.float64]
    if not_float:
        dtypes = [str(frame[c].dtype) for c in not_float]
        raise ValueError(f"candle frame columns {not_float} must be float64, were {dtypes}")
    if not index.is_unique:
        raise ValueError(f"candle frame index has duplicate times, first at {index[index.duplicated()][0]}")
    if not index.is_monotonic_increasing:
        bad = int(np.argmax(np.diff(index.asi8) < 0)) + 1
        raise ValueError(f"candle frame index must be sorted ascending; row {bad} ({index[bad]}) is out of order")
    return frame


class MarketData:
    """Candles and their precomputed observation features, shared read-only by env instances."""

    def __init__(self, frame: pd.DataFrame, spec: FeatureSpec) -> None:
        """Validate `frame`, compute and normalise its features (fitting `spec` on it if not yet fitted)."""
        validate_frame(frame)
        if len(frame) - spec.min_history < 1:
            raise ValueError(
                f"candle frame has {len(frame)} bars; the features need {spec.min_history} before the first "
                f"observation and one more to step"
            )
        ts_ms, opens, highs, lows, closes, volumes = candle_arrays(frame)
        raw, valid = compute_features(spec, ts_ms, opens, highs, lows, closes, volumes)
        if not spec.is_fitted:
            spec = fit_normalisation(spec, raw, valid)
            log.info(
                "feature_normalisation_fitted",
                rows=int(valid.sum()),
                first=str(frame.index[0]),
                last=str(frame.index[-1]),
            )
        self.spec = spec
        self.n_bars = len(frame)
        self.first_index = spec.min_history - 1
        """First bar with a complete observation window (where episodes may start)."""
        self.last_index = self.n_bars - 1
        normalised = np.where(valid[:, None], normalise(spec, raw), 0.0).astype(np.float32)
        width = spec.window * spec.n_features
        # Front padding of window - 1 zero rows makes row t of `windows` the window that ends at bar t.
        self.features = np.concatenate([np.zeros(width - spec.n_features, dtype=np.float32), normalised.ravel()])
        """Normalised features, flat float32, after (window - 1) * n_features zeros of padding."""
        self.windows = sliding_window_view(self.features, width)[:: spec.n_features]
        """Row t: the flat normalised observation window of bars t - window + 1 .. t (a view)."""
        self.ts_ms = ts_ms
        self.open = opens
        self.close = closes
        self.volume = volumes
        self.gap = np.zeros(self.n_bars)
        self.gap[1:] = opens[1:] / closes[:-1] - 1.0
        self.intra = closes / opens - 1.0
        self.start_time = str(frame.index[0])
        self.end_time = str(frame.index[-1])

    def max_steps(self) -> int:
        """Steps of one pass from the first complete window to the last bar."""
        return self.last_index - self.first_index

    @cached_property
    def observation_rows(self) -> npt.NDArray[np.float32]:
        """Row t: `windows[t]` and the values after it, as wide as an observation (a view, built once).

        Gathering rows of it (``observation_rows[t]``) makes observations with their windows in one copy;
        the caller overwrites the position state at the end of each row, which here holds other values.
        """
        spec = self.spec
        tail = np.zeros(spec.observation_size - spec.window * spec.n_features, dtype=np.float32)
        rows = sliding_window_view(np.concatenate([self.features, tail]), spec.observation_size)
        return rows[:: spec.n_features]

    @cached_property
    def window_views(self) -> list[memoryview]:
        """Item t: `windows[t]` as a flat float32 memoryview (built once, for `TradingEnv.step`'s copies)."""
        flat = memoryview(self.features)  # type: ignore[arg-type]
        nf, width = self.spec.n_features, self.spec.window * self.spec.n_features
        return [flat[begin : begin + width] for begin in range(0, self.n_bars * nf, nf)]


@lru_cache(maxsize=4)
def _bundled_market(window: int) -> MarketData:
    from adapters.data.ohlcv import load_ohlcv
    from adapters.data.sample import sample_path

    return MarketData(load_ohlcv(sample_path(DEFAULT_SAMPLE)), FeatureSpec(window=window))


def load_market(frame: pd.DataFrame | None, spec: FeatureSpec | None, config: EnvConfig) -> MarketData:
    """Return the market data for an env: `frame` (or the bundled candles) with `spec` (or the default)."""
    if spec is not None and spec.window != config.window:
        raise ValueError(f"feature spec window {spec.window} differs from env.window {config.window}")
    if frame is None and spec is None:
        market = _bundled_market(config.window)
    else:
        if frame is None:
            from adapters.data.ohlcv import load_ohlcv
            from adapters.data.sample import sample_path

            frame = load_ohlcv(sample_path(DEFAULT_SAMPLE))
        market = MarketData(frame, spec or FeatureSpec(window=config.window))
    if config.episode_length is not None and config.episode_length > market.max_steps():
        raise ValueError(
            f"env.episode_length {config.episode_length} is longer than the data allows: {market.n_bars} bars "
            f"leave {market.max_steps()} steps after the {market.spec.min_history}-bar warm-up"
        )
    return market


def action_space_for(config: EnvConfig) -> spaces.Space[Any]:
    """Return the single-env action space of a config."""
    if config.continuous:
        return spaces.Box(low=min(config.actions), high=max(config.actions), shape=(1,), dtype=np.float32)
    return spaces.Discrete(len(config.actions))


def observation_space_for(spec: FeatureSpec) -> spaces.Space[ObsArray]:
    """Return the single-env observation space of a feature spec."""
    box: spaces.Space[ObsArray] = spaces.Box(low=-np.inf, high=np.inf, shape=spec.observation_shape, dtype=np.float32)
    return box


class TradingEnv(gym.Env[ObsArray, Any]):
    """Trade one market over candles: choose a target position each bar, earn the log equity change."""

    metadata: dict[str, Any] = {"render_modes": []}  # noqa: RUF012 — gymnasium's class attribute
    # Slots for the state `step` reads and writes: a slot is read and written at a fixed offset, cheaper
    # than the instance dict (gymnasium's attributes and ours are too many for CPython's shared-key dicts).
    __slots__ = (
        "_block",
        "_block_view",
        "_end",
        "_entry_bar",
        "_entry_equity",
        "_entry_open_equity",
        "_entry_price",
        "_equity",
        "_hot",
        "_position",
        "_row",
        "_side",
        "_t",
        "_trade_costs",
        "_trade_hot",
        "_trade_size",
        "_trade_turnover",
    )

    def __init__(
        self,
        frame: pd.DataFrame | None = None,
        config: EnvConfig | None = None,
        spec: FeatureSpec | None = None,
        costs: CostModel | None = None,
        render_mode: str | None = None,
        market: MarketData | None = None,
    ) -> None:
        """Build over `frame` (default: bundled BTC/USDT 1h) with `spec` (default features, fitted on `frame`)."""
        if render_mode is not None:
            raise ValueError(f"render_mode {render_mode!r} is not supported (no rendering)")
        self.config = config or EnvConfig()
        self.costs = costs or CostModel()
        self.market = market or load_market(frame, spec, self.config)
        self.feature_spec = self.market.spec
        """The fitted feature spec (put it in the model card; reuse it for evaluation envs)."""
        self.action_space = action_space_for(self.config)
        self.observation_space = observation_space_for(self.feature_spec)
        self.render_mode = None
        cfg, market = self.config, self.market
        self._discrete = not cfg.continuous
        # Continuous envs get no fast-path table, so every action goes through _target's checks.
        self._targets = dict(enumerate(cfg.actions)) if self._discrete else {}
        self._low, self._high = min(cfg.actions), max(cfg.actions)
        self._fee = self.costs.fee_fraction(is_maker=False)
        self._fixed_slippage = self.costs.slippage_fraction(0.0)
        self._has_impact = self.costs.impact_bps != 0.0
        self._rate = self._fee + self._fixed_slippage
        self._scale = REWARD_UNIT * cfg.reward_scaling
        self._initial = cfg.initial_equity
        self._floor_equity = cfg.initial_equity * 1e-12
        # Python lists: scalar indexing of a list is several times faster than of an ndarray.
        self._gap = market.gap.tolist()
        self._intra = market.intra.tolist()
        self._open = market.open.tolist()
        self._close = market.close.tolist()
        self._volume = market.volume.tolist()
        self._ts = market.ts_ms.tolist()
        self._nf = self.feature_spec.n_features
        self._width = self.feature_spec.window * self._nf
        self._features: Any = memoryview(market.features)  # type: ignore[arg-type]
        self._obs = np.zeros(self.feature_spec.observation_size, dtype=np.float32)
        self._obs_view: Any = memoryview(self._obs)  # type: ignore[arg-type]
        # One attribute load for every constant of the hot path (attribute loads dominate its cost).
        self._hot = (
            self._targets,
            self._gap,
            self._intra,
            market.window_views,
            self._width,
            self.feature_spec.observation_size,
            self._scale,
        )
        self._trade_hot = (self._has_impact, self._fixed_slippage, self._rate, self._open, self._ts, self._fee)
        self._block = self._obs[None]
        self._block_view: Any = self._obs_view
        self._row = _BLOCK_ROWS
        """Observations are rows of `_block`, a fresh array every _BLOCK_ROWS steps (see `step`)."""
        self._t = -1
        self._end = -1
        self._reset_state(market.first_index)

    def _reset_state(self, start: int) -> None:
        self._t = start
        self._equity = self._initial
        self._position = 0.0
        self._side = 0
        self._entry_bar = 0
        self._entry_price = 0.0
        self._entry_equity = 0.0
        self._entry_open_equity = 0.0
        self._trade_turnover = 0.0
        self._trade_costs = 0.0
        self._trade_size = 0.0

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[ObsArray, dict[str, Any]]:
        """Start an episode; options: ``start_index`` (bar to start at, overrides the random start)."""
        super().reset(seed=seed)
        market, cfg = self.market, self.config
        first, last = market.first_index, market.last_index
        length = cfg.episode_length
        start = first
        if options and "start_index" in options:
            start = int(options["start_index"])
            room = last - (length or 1)
            if not first <= start <= room:
                raise ValueError(f"reset option start_index must be in [{first}, {room}], was {start}")
        elif cfg.random_start and length is not None:
            start = int(self.np_random.integers(first, last - length + 1))
        self._end = last if length is None else start + length
        self._reset_state(start)
        info = {
            "equity": self._equity,
            "position": 0.0,
            "start_index": start,
            "end_index": self._end,
            "start_time_ms": self._ts[start],
        }
        return self._observation(start, 0.0, 0.0, 0.0), info

    def _observation(self, t: int, position: float, unrealised: float, time_in_position: float) -> ObsArray:
        nf, width, view = self._nf, self._width, self._obs_view
        begin = t * nf
        view[:width] = self._features[begin : begin + width]
        view[width] = position
        view[width + 1] = unrealised
        view[width + 2] = time_in_position
        return self._obs.copy()

    def _target(self, action: Any) -> float:
        if self._discrete:
            if action.__class__ in _INT_TYPES or (isinstance(action, np.ndarray) and action.shape == ()):
                target = self._targets.get(int(action))
                if target is not None and (not isinstance(action, np.ndarray) or action.dtype.kind in "iu"):
                    return target
            raise ValueError(
                f"action {action!r} is outside the action space {self.action_space}: use an integer in "
                f"0..{len(self._targets) - 1} (target positions {list(self._targets.values())})"
            )
        try:
            value = np.asarray(action, dtype=np.float64)
        except (TypeError, ValueError):
            raise ValueError(f"action {action!r} is not a number; the action space is {self.action_space}") from None
        if value.size != 1 or value.ndim > 1:
            raise ValueError(f"action must have shape (1,), was {value.shape}; the action space is {self.action_space}")
        target = float(value.reshape(-1)[0])
        if not self._low <= target <= self._high:
            raise ValueError(
                f"action {target} is outside the action space [{self._low}, {self._high}] (target position)"
            )
        return target

    def step(self, action: Any) -> tuple[ObsArray, SupportsFloat, bool, bool, dict[str, Any]]:
        """Fill the target position at the next open, hold it to the close, return (obs, reward, ...)."""
        # Hot path (see tests/benchmarks/env_throughput.py): locals, no helper calls except to record a
        # trade still open at the episode's end. The arithmetic and its order match TradingVectorEnv exactly
        # (a test compares them).
        targets, gap, intra, windows, width, size, scale = self._hot
        target = targets.get(action) if action.__class__ in _INT_TYPES else None
        if target is None:
            target = self._target(action)
        t = self._t + 1
        if t > self._end:
            raise RuntimeError("step() called after the episode ended; call reset() first")
        self._t = t
        equity = self._equity
        held = self._position
        open_equity = (held * gap[t] + 1.0) * equity
        info: dict[str, Any]
        if target != held:
            # Rebalance at this bar's open (see the module docstring for the cost model).
            has_impact, slippage, rate, opens, ts, fee = self._trade_hot
            side = self._side
            new_side = (target > 0.0) - (target < 0.0)
            turnover = open_equity * abs(target - held)
            if has_impact:
                volume = self._volume[t]
                participation = turnover / opens[t] / volume if volume > 0 else 1.0
                slippage = self.costs.slippage_fraction(float(participation))
                rate = fee + slippage
            cost = turnover * rate
            if new_side == side:
                # Resizing keeps the trade: the whole cost is its own.
                self._trade_costs += cost
                self._trade_turnover += turnover
                trade = None
            else:
                exit_turnover = abs(held) * open_equity
                exit_cost = exit_turnover * rate
                price = opens[t]
                if side:
                    # `_trade_record(..., is_open=False)` inlined: this runs on every closing trade.
                    pnl = open_equity - exit_cost - self._entry_equity
                    entry_time = ts[self._entry_bar]
                    exit_time = ts[t]
                    trade = {
                        "side": "long" if side > 0 else "short",
                        "direction": side,
                        "entry_time_ms": entry_time,
                        "exit_time_ms": exit_time,
                        "entry_price": self._entry_price,
                        "exit_price": (1.0 - side * slippage) * price,
                        "size": self._trade_size,
                        "bars": t - self._entry_bar,
                        "duration_seconds": (exit_time - entry_time) / 1000.0,
                        "pnl": pnl,
                        "return_fraction": pnl / self._entry_open_equity,
                        "fees": (self._trade_turnover + exit_turnover) * fee,
                        "costs": self._trade_costs + exit_cost,
                        "is_open": False,
                    }
                else:
                    trade = None
                self._entry_bar = t
                self._entry_price = (1.0 + new_side * slippage) * price
                # The trade's PnL is the equity change from after the previous trade's exit cost.
                self._entry_equity = open_equity - exit_cost if new_side != 0 else 0.0
                self._entry_open_equity = open_equity
                self._trade_costs = cost - exit_cost
                self._trade_turnover = turnover - exit_turnover
                self._trade_size = abs(target)
                self._side = new_side
            self._position = held = target
            open_equity -= cost
            new_equity = (held * intra[t] + 1.0) * open_equity
            info = (
                {"equity": new_equity, "position": held}
                if trade is None
                else {"equity": new_equity, "position": held, "trade": trade}
            )
        else:
            new_equity = (held * intra[t] + 1.0) * open_equity
            info = {"equity": new_equity, "position": held}
        terminated = new_equity <= 0.0
        if terminated:
            new_equity = info["equity"] = self._floor_equity
        self._equity = new_equity
        truncated = t == self._end
        # The observation is the next row of a block allocated _BLOCK_ROWS steps at a time: a fresh
        # array every step (rows never overlap, nothing is written into a row after it is returned) for
        # an indexing instead of an allocation and a copy. A row kept alone keeps its block alive.
        row = self._row
        if row == _BLOCK_ROWS:
            self._block = np.empty((_BLOCK_ROWS, size), dtype=np.float32)
            self._block_view = memoryview(self._block.reshape(-1))  # type: ignore[arg-type]
            row = 0
        self._row = row + 1
        view = self._block_view
        at = row * size
        view[at : at + width] = windows[t]
        at += width
        view[at] = held
        if held != 0.0:
            # Same encoding as bot.model.features.position_state (a test checks they agree): the open trade's
            # PnL so far is the equity change since its entry.
            view[at + 1] = 1.0 - self._entry_equity / new_equity
            view[at + 2] = math.log1p(t - self._entry_bar + 1)
            if truncated or terminated:
                info["open_trade"] = self._trade_record(
                    t,
                    new_equity - self._entry_equity,
                    self._trade_turnover,
                    self._trade_costs,
                    self._close[t],
                    True,
                )
        else:
            view[at + 1] = 0.0
            view[at + 2] = 0.0
        return self._block[row], math.log(new_equity / equity) * scale, terminated, truncated, info

    def _trade_record(
        self, t: int, pnl: float, turnover: float, costs: float, exit_price: float, is_open: bool
    ) -> dict[str, Any]:
        # `step` inlines a copy of this for closing trades: change both together.
        side = self._side
        entry_time = self._ts[self._entry_bar]
        exit_time = self._ts[t]
        bars = t - self._entry_bar + (1 if is_open else 0)
        return {
            "side": "long" if side > 0 else "short",
            "direction": side,
            "entry_time_ms": entry_time,
            "exit_time_ms": exit_time,
            "entry_price": self._entry_price,
            "exit_price": exit_price,
            "size": self._trade_size,
            "bars": bars,
            "duration_seconds": (exit_time - entry_time) / 1000.0,
            "pnl": pnl,
            "return_fraction": pnl / self._entry_open_equity,
            "fees": turnover * self._fee,
            "costs": costs,
            "is_open": is_open,
        }

    @property
    def equity(self) -> float:
        """Equity at the last close."""
        return self._equity

    @property
    def position(self) -> float:
        """Position held (signed fraction of equity)."""
        return self._position
