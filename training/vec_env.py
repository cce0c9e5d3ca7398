"""Vectorised trading env: N independent `TradingEnv` episodes stepped together by numpy array operations.

Same market data, execution convention, costs, rewards and observations as `training.env.TradingEnv` (a
test steps both with the same actions and compares); there is no Python loop over sub-environments.
Autoreset is gymnasium's NEXT_STEP mode: the step after an episode ends resets that sub-env, ignores its
action and returns its first observation with reward 0 and both flags False.

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
from bot.features import FeatureSpec
from training.env import (
    EnvConfig,
    MarketData,
    action_space_for,
    load_market,
    observation_space_for,
)

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]
BoolArray = npt.NDArray[np.bool_]
ObsArray = npt.NDArray[np.float32]


class TradingVectorEnv(VectorEnv[ObsArray, Any, Any]):
    """Step `num_envs` trading episodes over the same candles in one set of numpy operations."""

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
        self._n_levels = np.array(len(cfg.actions), dtype=np.uint64)
        self._low, self._high = min(cfg.actions), max(cfg.actions)
        self._fee = self.costs.fee_fraction(is_maker=False)
        self._fixed_slippage = self.costs.slippage_fraction(0.0)
        self._has_impact = self.costs.impact_bps != 0.0
        self._scale = cfg.reward_scaling
        self._width = self.feature_spec.window * self.feature_spec.n_features
        self._size = self.feature_spec.observation_size
        self._observation_rows = self.market.observation_rows
        self._all = np.ones(num_envs, dtype=bool)
        self._all.flags.writeable = False
        self._none = np.zeros(num_envs, dtype=bool)
        self._none.flags.writeable = False

        n = num_envs
        self._t = np.zeros(n, dtype=np.int64)
        self._t_f = np.zeros(n)
        """Float twin of _t (mixed int/float operations cost numpy a cast each call)."""
        self._end = np.zeros(n, dtype=np.int64)
        self._equity = np.zeros(n)
        self._held = np.zeros(n)
        self._side = np.zeros(n)
        self._in_trade = np.zeros(n, dtype=bool)
        self._in_trade_f = np.zeros(n)
        """1.0 where a trade is open, else 0.0 (float twin of _in_trade, avoids mixed-dtype casts)."""
        # Per-trade state, one row each, so that starting trades is one masked copy from `_fresh`.
        self._trade_state = np.zeros((7, n))
        self._trade_costs = self._trade_state[0]
        self._trade_turnover = self._trade_state[1]
        self._trade_size = self._trade_state[2]
        """Costs and turnover of the open trade so far, and its |position| at entry."""
        self._entry_price = self._trade_state[3]
        self._entry_equity = self._trade_state[4]
        """Equity at entry after the previous trade's exit cost; 0 when flat (in_trade - entry_equity / equity
        is then the unrealised PnL)."""
        self._entry_base = self._trade_state[5]
        """Entry bar - 1 (so that the bars held at the close of t are t - entry_base)."""
        self._entry_open_equity = self._trade_state[6]
        """Open equity at the entry bar (the denominator of return_fraction)."""
        self._fresh = np.zeros((7, n))
        """Values of a trade starting now (rows 0-1 stay 0; 2-6 are written by each rebalance)."""
        self._open_equity = self._fresh[6]
        """Where each step computes the equity at the open (a trade starting now records it from here)."""
        self._trade_totals = self._trade_state[:2]
        # A rebalance's four legs: rows cost, turnover, exit cost, exit turnover (the exit legs close the
        # previous trade on a flip), so that the trade totals (costs, turnover) update in one operation.
        # Separate 1-D operations per leg measured faster than strided 2-D ones at N=64.
        self._legs = np.zeros((4, n))
        self._entry_legs = self._legs[:2]
        self._exit_legs = self._legs[2:]
        self._steps_left = 0
        self._state_rows = np.zeros((2, n))
        """Unrealised PnL and log1p(bars held) of each sub-env, before they go into the observation."""
        self._state_columns = self._state_rows.T
        """Fewest steps any sub-env has left before truncation (no sub-env truncates while it is > 0)."""
        self._needs_reset = np.zeros(n, dtype=bool)
        self._any_reset = False
        self._np_random, self._np_random_seed = seeding.np_random(None)
        self._is_reset = False
        # 0-d array constants: numpy converts a Python scalar operand on every call, these it does not.
        self._one = np.array(1.0)
        self._zero = np.array(0.0)
        self._one_bar = np.array(1, dtype=np.int64)
        self._fee_k = np.array(self._fee)
        self._slippage_k = np.array(self._fixed_slippage)
        self._rate_k = np.array(self._fee + self._fixed_slippage)
        self._scale_k = np.array(self._scale)
        self._ms_k = np.array(1000, dtype=np.int64)
        """Milliseconds per second, an integer: int64 / int64 divides as doubles with no buffered cast."""
        self._floor_k = np.array(cfg.initial_equity * 1e-12)

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
        self._steps_left = int((self._end - self._t).min())
        self._needs_reset = np.zeros(self.num_envs, dtype=bool)
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
        for state in (self._held, self._side, self._in_trade_f):
            state[envs] = 0.0
        self._trade_state[:, envs] = 0.0
        self._in_trade[envs] = False

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
            # Viewed as unsigned, negative actions become huge: one comparison catches both ends.
            if np.count_nonzero(index.view(np.uint64) >= self._n_levels):
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
        # Hot path: one numpy call per line over all sub-envs, constants as 0-d arrays, no Python scalars
        # (see tests/benchmarks/env_throughput.py). The arithmetic and its order match TradingEnv.step.
        if not self._is_reset:
            raise RuntimeError("step() called before reset()")
        target = self._targets(actions)
        info: dict[str, Any] = {}
        t = self._t
        if self._any_reset:
            resetting = self._needs_reset
            envs = np.flatnonzero(resetting)
            self._reset_envs(envs)
            target[envs] = 0.0
            t += ~resetting
            self._t_f += ~resetting
            info["start_index"] = t.copy()
            info["_start_index"] = resetting.copy()
            steps_left = int((self._end - t).min())
        else:
            t += self._one_bar
            self._t_f += self._one
            steps_left = self._steps_left - 1
        self._steps_left = steps_left
        market = self.market
        one = self._one
        equity = self._equity
        held = self._held
        open_equity = np.multiply(held, market.gap[t], out=self._open_equity)
        open_equity += one
        open_equity *= equity
        if np.count_nonzero(target != held):
            open_equity = self._rebalance(info, t, target, held, open_equity)
            held = target
        new_equity = held * market.intra[t]
        new_equity += one
        new_equity *= open_equity
        terminated = new_equity <= self._zero
        any_terminated = np.count_nonzero(terminated)
        if any_terminated:
            np.copyto(new_equity, self._floor_k, where=terminated)
        reward = new_equity / equity
        np.log(reward, out=reward)
        if self._scale != 1.0:
            reward *= self._scale_k
        self._equity = new_equity
        # Until the sub-env nearest its end reaches it, no sub-env truncates: skip comparing every one.
        truncated = np.zeros(self.num_envs, dtype=bool) if steps_left > 0 else t == self._end
        if any_terminated or (steps_left <= 0 and np.count_nonzero(truncated)):
            done = truncated | terminated
            self._needs_reset = done
            self._any_reset = True
            ending = done & self._in_trade
            if np.count_nonzero(ending):
                info["open_trade"] = self._trade_arrays(
                    t,
                    new_equity - self._entry_equity,
                    self._trade_turnover,
                    self._trade_costs,
                    market.close[t],
                    True,
                )
                info["_open_trade"] = ending
        else:
            self._any_reset = False
        # Gathering observation-wide rows copies the windows once, into the new array (the position state
        # at the end of each row is overwritten below).
        obs = self._observation_rows[t]
        width = self._width
        obs[:, width] = held
        # Same encoding as bot.features.position_state: unrealised PnL / equity, log1p(bars held).
        # Computed in float64 rows, then cast into the float32 columns in one assignment: ufuncs writing
        # into strided float32 columns cast through a buffer and cost twice as much.
        in_trade = self._in_trade_f
        pnl, bars = self._state_rows
        np.divide(self._entry_equity, new_equity, out=pnl)
        np.subtract(in_trade, pnl, out=pnl)
        np.subtract(self._t_f, self._entry_base, out=bars)
        bars *= in_trade
        np.log1p(bars, out=bars)
        obs[:, width + 1 :] = self._state_columns
        info["equity"] = new_equity.copy()
        info["_equity"] = self._all
        info["position"] = held.copy()
        info["_position"] = self._all
        return obs, reward, terminated, truncated, info

    def _rebalance(
        self, info: dict[str, Any], t: IntArray, target: FloatArray, held: FloatArray, open_equity: FloatArray
    ) -> FloatArray:
        """Trade every sub-env from `held` to `target` at bar t's open; return equity after costs."""
        market = self.market
        legs = self._legs
        turnover, exit_turnover = legs[1], legs[3]
        np.subtract(target, held, out=turnover)
        np.abs(turnover, out=turnover)
        side = self._side
        new_side = np.sign(target)
        flip = new_side != side
        np.multiply(held, side, out=exit_turnover)  # |held|
        exit_turnover *= flip
        turnover *= open_equity
        exit_turnover *= open_equity
        opens = market.open[t]
        slippage: FloatArray
        if self._has_impact:
            volume = market.volume[t]
            quantity = turnover / opens
            participation = np.divide(quantity, volume, out=np.ones_like(quantity), where=volume > 0)
            slippage = self.costs.slippage_fraction(participation)
            rate = self._fee_k + slippage
        else:
            slippage = self._slippage_k
            rate = self._rate_k
        cost, exit_cost = legs[0], legs[2]
        np.multiply(turnover, rate, out=cost)
        np.multiply(exit_turnover, rate, out=exit_cost)
        closed = flip & self._in_trade
        if np.count_nonzero(closed):
            pnl = open_equity - exit_cost
            pnl -= self._entry_equity
            exit_price = side * slippage
            np.subtract(self._one, exit_price, out=exit_price)
            exit_price *= opens
            totals = self._trade_totals + self._exit_legs  # costs, turnover
            info["trade"] = self._trade_arrays(t, pnl, totals[1], totals[0], exit_price, False)
            info["_trade"] = closed
        zero = self._zero
        fresh = self._fresh
        np.multiply(new_side, slippage, out=fresh[3])
        fresh[3] += self._one
        fresh[3] *= opens
        in_trade_f = np.abs(new_side)
        np.multiply(target, new_side, out=fresh[2])  # |target|
        np.subtract(open_equity, exit_cost, out=fresh[4])
        fresh[4] *= in_trade_f
        np.subtract(self._t_f, self._one, out=fresh[5])
        # fresh[6] is open_equity itself (see step).
        np.copyto(self._trade_state, fresh, where=flip)
        self._trade_totals += self._entry_legs - self._exit_legs
        self._side = new_side
        self._in_trade = new_side != zero
        self._in_trade_f = in_trade_f
        self._held = target
        open_equity -= cost
        return open_equity

    def _trade_arrays(
        self,
        t: IntArray,
        pnl: FloatArray,
        turnover: FloatArray,
        costs: FloatArray,
        exit_price: FloatArray,
        is_open: bool,
    ) -> dict[str, npt.NDArray[Any]]:
        ts = self.market.ts_ms
        entry_bar = self._entry_base.astype(np.int64)
        entry_bar += self._one_bar
        entry_time = ts[entry_bar]
        exit_time = ts[t]
        bars = t - entry_bar
        if is_open:
            bars += self._one_bar
        duration = exit_time - entry_time
        # Sub-envs that never traded have 0 here: divide them by 1 (their values are masked out anyway).
        denominator = self._entry_open_equity == self._zero
        denominator = denominator + self._entry_open_equity
        return {
            "direction": self._side.astype(np.int64),
            "entry_time_ms": entry_time,
            "exit_time_ms": exit_time,
            "entry_price": self._entry_price.copy(),
            "exit_price": exit_price,
            "size": self._trade_size.copy(),
            "bars": bars,
            "duration_seconds": duration / self._ms_k,
            "pnl": pnl,
            "return_fraction": pnl / denominator,
            "fees": turnover * self._fee_k,
            "costs": costs.copy(),  # never a view of the running totals: callers keep infos
            "is_open": self._all if is_open else self._none,
        }

    def _observations(self) -> ObsArray:
        obs = np.empty((self.num_envs, self._size), dtype=np.float32)
        width = self._width
        obs[:, :width] = self.market.windows[self._t]
        obs[:, width:] = 0.0
        return obs

    @property
    def equity(self) -> FloatArray:
        """Equity of each sub-env at its last close (a copy)."""
        return self._equity.copy()

    def close_extras(self, **kwargs: Any) -> None:
        """Release nothing: the market data is shared and read-only."""
