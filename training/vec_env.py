"""Vectorised trading env: N independent `TradingEnv` episodes stepped together by one compiled kernel.

Same market data, execution convention, costs, rewards and observations as `training.env.TradingEnv` (a
test steps both with the same actions and compares). A step is one call of `_step_kernel` (numba), which
loops over the sub-envs doing the arithmetic of the former numpy implementation element by element, in
the same order, so the results are bit-identical to it; the logarithms stay numpy calls (numpy's SIMD
`log`/`log1p` and libm's may differ in the last bit). Autoreset is gymnasium's NEXT_STEP mode: the step
after an episode ends resets that sub-env, ignores its action and returns its first observation with
reward 0 and both flags False. The kernel compiles on the first step of a process (about 3 s) unless numba's
cache beside `training.vec_kernel` (``cache=True``, in ``__pycache__``) has it; loading that takes about 0.3 s.

`info` (gymnasium's vector layout: an array over sub-envs plus a boolean ``_key`` mask) holds ``equity`` and
``position`` every step. ``trade`` is a dict of arrays, present when any trade closed on this step, with mask
``_trade``; ``open_trade`` likewise on a step where episodes end holding a position (``is_open`` True). Trade
keys are those of `TradingEnv` except ``side`` (use ``direction``); values where the mask is False are
meaningless. On reset steps ``start_index`` and ``end_index`` are reported with mask ``_start_index``.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt
import pandas as pd
from gymnasium.utils import seeding
from gymnasium.vector import AutoresetMode, VectorEnv
from gymnasium.vector.utils import batch_space

from adapters.costs import CostModel
from bot.model.features import FeatureSpec
from training.env import (
    REWARD_UNIT,
    EnvConfig,
    MarketData,
    action_space_for,
    load_market,
    observation_space_for,
)
from training.vec_kernel import (
    _BAD_ACTION,
    _BARS,
    _CHECK_BOUNDS,
    _CLOSED,
    _DONE,
    _ENDING,
    _EQUITY,
    _HELD,
    _IN_TRADE,
    _MAP_INDEX,
    _STATE_ROWS,
    _T_FLOAT,
    _TARGETS_READY,
    _TRADE_FLOATS,
    _TRADE_INTS,
    BoolArray,
    FloatArray,
    IntArray,
    ObsArray,
    _step_kernel,
)


class TradingVectorEnv(VectorEnv[ObsArray, Any, Any]):
    """Step `num_envs` trading episodes over the same candles in one compiled loop."""

    metadata: dict[str, Any] = {"autoreset_mode": AutoresetMode.NEXT_STEP}  # noqa: RUF012 — gymnasium API

    def __init__(
        self,
        num_envs: int = 64,
        frame: pd.DataFrame | None = None,
        config: EnvConfig | None = None,
        spec: FeatureSpec | None = None,
        costs: CostModel | None = None,
        market: MarketData | None = None,
        render_mode: str | None = None,
    ) -> None:
        """Build `num_envs` sub-envs over `frame` (default: bundled BTC/USDT 1h); see `TradingEnv`."""
        if isinstance(num_envs, bool) or not isinstance(num_envs, int) or num_envs < 1:
            raise ValueError(f"num_envs must be an integer >= 1, was {num_envs!r}")
        if render_mode is not None:
            raise ValueError(f"render_mode {render_mode!r} is not supported (no rendering)")
        self.config = config or EnvConfig()
        self.costs = costs or CostModel()
        self.market = market or load_market(frame, spec, self.config)
        self.feature_spec = self.market.spec
        self.num_envs = num_envs
        self.single_action_space = action_space_for(self.config)
        self.single_observation_space = observation_space_for(self.feature_spec)
        self.action_space = batch_space(self.single_action_space, num_envs)
        self.observation_space = batch_space(self.single_observation_space, num_envs)
        self.render_mode = None

        cfg, market = self.config, self.market
        self._discrete = not cfg.continuous
        self._levels = np.asarray(cfg.actions, dtype=np.float64)
        self._low, self._high = min(cfg.actions), max(cfg.actions)
        self._fee = self.costs.fee_fraction(is_maker=False)
        fixed_slippage = self.costs.slippage_fraction(0.0)
        self._has_impact = self.costs.impact_bps != 0.0
        self._constants = np.array(
            [
                self._fee,
                fixed_slippage,
                self._fee + fixed_slippage,
                self.costs.slippage_bps,
                self.costs.impact_bps,
                cfg.initial_equity * 1e-12,
                self._low,
                self._high,
            ]
        )
        self._mode = _MAP_INDEX if self._discrete else _CHECK_BOUNDS
        self._scale = REWARD_UNIT * cfg.reward_scaling
        self._scale_k = np.array(self._scale)
        """0-d array: numpy converts a Python scalar operand on every call, this it does not."""
        self._width = self.feature_spec.window * self.feature_spec.n_features
        self._size = self.feature_spec.observation_size
        if self._size != self._width + 3:
            raise ValueError(f"observation size {self._size} is not window features + 3 position values")
        self._observation_rows = self.market.observation_rows
        self._market_rows = np.stack([market.gap, market.intra, market.open, market.close, market.volume])
        self._ts_ms = np.ascontiguousarray(market.ts_ms, dtype=np.int64)
        self._all = np.ones(num_envs, dtype=bool)
        self._all.flags.writeable = False
        self._none = np.zeros(num_envs, dtype=bool)
        self._none.flags.writeable = False

        n = num_envs
        self._steps = np.zeros((2, n), dtype=np.int64)
        self._t, self._end = self._steps
        self._state = np.zeros((_STATE_ROWS, n))
        """Float state and scratch of each sub-env, one row per quantity (the `_*` row constants)."""
        self._trade_state = self._state[:7]
        self._t_f: FloatArray = self._state[_T_FLOAT]
        """Float twin of _t."""
        self._equity: FloatArray = self._state[_EQUITY]
        self._held: FloatArray = self._state[_HELD]
        self._bars: FloatArray = self._state[_BARS]
        self._masks = np.zeros((3, n), dtype=bool)
        """Rows: needs reset, trade closed this step, episode ends in a trade."""
        self._needs_reset: BoolArray = self._masks[0]
        self._trade_floats = np.zeros((2, _TRADE_FLOATS, n))
        self._trade_ints = np.zeros((2, _TRADE_INTS, n), dtype=np.int64)
        self._target = np.zeros(n)
        self._no_index = np.zeros(n, dtype=np.int64)
        self._any_reset = False
        self._np_random, self._np_random_seed = seeding.np_random(None)
        self._is_reset = False
        self._warm_kernel()

    def _warm_kernel(self) -> None:
        """Load (or compile) the step kernel now, at construction, rather than inside the first step.

        Calls it once on scratch copies of the state (all sub-envs at bar 0, flat, nothing to trade), with
        arguments of exactly the types `step` passes, so the specialisation it loads is the one used.
        """
        n = self.num_envs
        _step_kernel(
            _TARGETS_READY,
            False,
            self._has_impact,
            np.zeros(n),
            self._no_index.copy(),
            self._levels,
            self._constants,
            np.zeros_like(self._steps),
            np.ones_like(self._state),
            self._market_rows,
            self._ts_ms,
            self._observation_rows,
            np.empty((n, self._size), dtype=np.float32),
            np.empty(n),
            np.empty(n),
            np.empty(n),
            np.empty(n, dtype=bool),
            np.empty(n, dtype=bool),
            np.zeros_like(self._masks),
            np.zeros_like(self._trade_floats),
            np.zeros_like(self._trade_ints),
        )

    # ------------------------------------------------------------------ reset

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[ObsArray, dict[str, Any]]:
        """Reset every sub-env; options: ``start_index`` (int or array of bars to start at)."""
        if seed is not None:
            self._np_random, self._np_random_seed = seeding.np_random(seed)
        starts = None
        if options and "start_index" in options:
            starts = np.broadcast_to(np.asarray(options["start_index"], dtype=np.int64), (self.num_envs,))
        self._reset_envs(np.arange(self.num_envs), starts)
        self._needs_reset[:] = False
        self._any_reset = False
        self._is_reset = True
        info = {
            "equity": self._equity.copy(),
            "_equity": self._all,
            "position": self._held.copy(),
            "_position": self._all,
            "start_index": self._t.copy(),
            "_start_index": self._all,
        }
        return self._observations(), info

    def _reset_envs(self, envs: IntArray, starts: IntArray | None = None) -> None:
        market, cfg = self.market, self.config
        first, last = market.first_index, market.last_index
        length = cfg.episode_length
        if starts is not None:
            room = last - (length or 1)
            bad = (starts < first) | (starts > room)
            if bad.any():
                raise ValueError(f"reset option start_index must be in [{first}, {room}], was {starts[bad][0]}")
            chosen = starts[envs]
        elif cfg.random_start and length is not None:
            chosen = self.np_random.integers(first, last - length + 1, size=len(envs))
        else:
            chosen = np.full(len(envs), first, dtype=np.int64)
        self._t[envs] = chosen
        self._t_f[envs] = chosen
        self._end[envs] = last if length is None else chosen + length
        self._equity[envs] = cfg.initial_equity
        self._state[_HELD : _IN_TRADE + 1, envs] = 0.0
        self._trade_state[:, envs] = 0.0

    # ------------------------------------------------------------------ step

    def _targets(self, actions: Any) -> FloatArray:
        a = np.asarray(actions)
        n = self.num_envs
        if self._discrete:
            if a.shape != (n,) or a.dtype.kind not in "iu":
                raise ValueError(
                    f"actions must be an integer array of shape ({n},), was {a.dtype} {a.shape}; "
                    f"action space {self.action_space}"
                )
            index = a.astype(np.int64, copy=False)
            if np.count_nonzero((index < 0) | (index >= len(self._levels))):
                bad = a[(a < 0) | (a >= len(self._levels))]
                raise ValueError(
                    f"actions {bad.tolist()} are outside the action space Discrete({len(self._levels)}): use "
                    f"integers in 0..{len(self._levels) - 1}"
                )
            targets: FloatArray = self._levels[index]
            return targets
        if a.shape not in ((n,), (n, 1)) or a.dtype.kind not in "fiu":
            raise ValueError(f"actions must be a float array of shape ({n}, 1), was {a.dtype} {a.shape}")
        target = a.reshape(n).astype(np.float64)
        if not (target.min() >= self._low and target.max() <= self._high):
            bad = target[~((target >= self._low) & (target <= self._high))]
            raise ValueError(
                f"actions {bad.tolist()} are outside the action space [{self._low}, {self._high}] (target positions)"
            )
        return target

    def step(self, actions: Any) -> tuple[ObsArray, FloatArray, BoolArray, BoolArray, dict[str, Any]]:
        """Step every sub-env with its action (autoresetting those whose episode ended last step)."""
        # Hot path: shape checks here, everything else in _step_kernel (see tests/benchmarks/env_throughput.py).
        if not self._is_reset:
            raise RuntimeError("step() called before reset()")
        n = self.num_envs
        info: dict[str, Any] = {}
        index = self._no_index
        if self._any_reset:
            # Rare (once an episode): validate in Python, then reset, drawing starts from the env's generator.
            target = self._targets(actions)
            resetting = self._needs_reset
            envs = np.flatnonzero(resetting)
            self._reset_envs(envs)
            target[envs] = 0.0
            self._t += ~resetting
            self._t_f += ~resetting
            info["start_index"] = self._t.copy()
            info["_start_index"] = resetting.copy()
            mode, advance = _TARGETS_READY, False
        else:
            a = np.asarray(actions)
            mode, advance = self._mode, True
            if self._discrete:
                if a.shape != (n,) or a.dtype.kind not in "iu":
                    self._targets(a)  # raises
                index = a.astype(np.int64, order="C", copy=False)
                target = self._target
            else:
                if a.shape not in ((n,), (n, 1)) or a.dtype.kind not in "fiu":
                    self._targets(a)  # raises
                target = a.reshape(n).astype(np.float64)
        obs = np.empty((n, self._size), dtype=np.float32)
        reward = np.empty(n)
        equity = np.empty(n)
        position = np.empty(n)
        terminated = np.empty(n, dtype=bool)
        truncated = np.empty(n, dtype=bool)
        result = _step_kernel(
            mode,
            advance,
            self._has_impact,
            target,
            index,
            self._levels,
            self._constants,
            self._steps,
            self._state,
            self._market_rows,
            self._ts_ms,
            self._observation_rows,
            obs,
            reward,
            equity,
            position,
            terminated,
            truncated,
            self._masks,
            self._trade_floats,
            self._trade_ints,
        )
        if result == _BAD_ACTION:
            self._targets(actions)  # raises the error naming the actions
            raise AssertionError("unreachable: the step kernel and _targets disagree on the action space")
        if result & _CLOSED:
            info["trade"] = self._trade_arrays(0, is_open=False)
            info["_trade"] = self._masks[1].copy()
        self._any_reset = bool(result & _DONE)
        if result & _ENDING:
            info["open_trade"] = self._trade_arrays(1, is_open=True)
            info["_open_trade"] = self._masks[2].copy()
        np.log(reward, out=reward)
        reward *= self._scale_k
        bars = self._bars
        np.log1p(bars, out=bars)
        obs[:, self._width + 2] = bars
        info["equity"] = equity
        info["_equity"] = self._all
        info["position"] = position
        info["_position"] = self._all
        return obs, reward, terminated, truncated, info

    def _trade_arrays(self, which: int, *, is_open: bool) -> dict[str, npt.NDArray[Any]]:
        # Copies, never views of the scratch the kernel rewrites: callers keep infos.
        floats = self._trade_floats[which].copy()
        ints = self._trade_ints[which].copy()
        direction, entry_time, exit_time, bars = ints
        entry_price, exit_price, size, duration, pnl, return_fraction, fees, costs = floats
        return {
            "direction": direction,
            "entry_time_ms": entry_time,
            "exit_time_ms": exit_time,
            "entry_price": entry_price,
            "exit_price": exit_price,
            "size": size,
            "bars": bars,
            "duration_seconds": duration,
            "pnl": pnl,
            "return_fraction": return_fraction,
            "fees": fees,
            "costs": costs,
            "is_open": self._all if is_open else self._none,
        }

    def _observations(self) -> ObsArray:
        obs = np.empty((self.num_envs, self._size), dtype=np.float32)
        width = self._width
        obs[:, :width] = self.market.windows[self._t]
        obs[:, width:] = 0.0
        return obs

    @property
    def windows(self) -> ObsArray:
        """Row t: the normalised feature window that ends at bar t (`MarketData.windows`, a read-only view)."""
        return self.market.windows

    def window_rows(self) -> IntArray:
        """The row of `windows` each sub-env's current observation starts with (its bar; a copy).

        ``obs[:, :windows.shape[1]]`` of the last `reset` or `step` is ``windows[window_rows()]``, reset steps
        included; a sub-env's next step reads the row after, unless its episode ends."""
        return self._t.copy()

    @property
    def equity(self) -> FloatArray:
        """Equity of each sub-env at its last close (a copy)."""
        return self._equity.copy()

    def close_extras(self, **kwargs: Any) -> None:
        """Release nothing: the market data is shared and read-only."""
