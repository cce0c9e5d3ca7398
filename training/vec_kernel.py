"""The vector env's fused step (numba): the arithmetic of one step of N trading envs in one compiled loop.

`training.vec_env.TradingVectorEnv` owns the state arrays and calls `_step_kernel` once per step; this module
holds only the kernel, its helpers and the layout constants of the arrays they share. The arithmetic is done
element by element in the order of the former numpy implementation, so results are bit-identical to it.
"""

from __future__ import annotations

import numba
import numpy as np
import numpy.typing as npt

from adapters.costs import slippage_formula

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]
BoolArray = npt.NDArray[np.bool_]
ObsArray = npt.NDArray[np.float32]

# Rows of the float state matrix. Rows 0-6 describe the open trade (zeroed together on reset).
_TRADE_COSTS, _TRADE_TURNOVER, _TRADE_SIZE, _ENTRY_PRICE, _ENTRY_EQUITY, _ENTRY_BASE, _ENTRY_OPEN_EQUITY = range(7)
_T_FLOAT, _EQUITY, _HELD, _SIDE, _IN_TRADE = range(7, 12)
_COST, _TURNOVER, _EXIT_COST, _EXIT_TURNOVER, _SLIPPAGE, _OPEN_EQUITY, _NEW_SIDE, _BARS = range(12, 20)
_STATE_ROWS = 20
# Rows of the market matrix, and of the constants vector.
_GAP, _INTRA, _OPEN, _CLOSE, _VOLUME = range(5)
_FEE, _FIXED_SLIPPAGE, _RATE, _SLIPPAGE_BPS, _IMPACT_BPS, _FLOOR, _LOW, _HIGH = range(8)
# Kernel modes (targets) and result bits.
_TARGETS_READY, _MAP_INDEX, _CHECK_BOUNDS = range(3)
_BAD_ACTION, _CLOSED, _ENDING, _DONE = -1, 1, 2, 4
# The trade scratch matrices hold, for closed trades (index 0) and trades open at an episode's end (1),
# rows of ints (direction, entry_time_ms, exit_time_ms, bars) and of floats (entry_price, exit_price,
# size, duration_seconds, pnl, return_fraction, fees, costs): see _write_trade and _trade_arrays.
_TRADE_INTS, _TRADE_FLOATS = 4, 8


# The cost model's own slippage formula (adapters/costs.py), compiled into the kernel: one definition.
_slippage = numba.njit(cache=True, error_model="numpy", inline="always")(slippage_formula)


@numba.njit(cache=True, error_model="numpy", inline="always")
def _sign(x: float) -> float:
    # np.sign: +0.0 for either zero, NaN stays NaN.
    if x > 0.0:
        return 1.0
    if x < 0.0:
        return -1.0
    if x == 0.0:
        return 0.0
    return x


@numba.njit(cache=True, error_model="numpy", inline="always")
def _write_trade(
    i: int,
    t: int,
    pnl: float,
    turnover: float,
    costs: float,
    exit_price: float,
    is_open: bool,
    state: FloatArray,
    ts_ms: IntArray,
    fee: float,
    floats: FloatArray,
    ints: IntArray,
) -> None:
    entry_bar = np.int64(state[_ENTRY_BASE, i]) + 1
    entry_time = ts_ms[entry_bar]
    exit_time = ts_ms[t]
    bars = t - entry_bar
    if is_open:
        bars += 1
    entry_open_equity = state[_ENTRY_OPEN_EQUITY, i]
    # Sub-envs that never traded have 0 here: divide them by 1 (their values are masked out anyway).
    denominator = (1.0 if entry_open_equity == 0.0 else 0.0) + entry_open_equity
    ints[0, i] = np.int64(state[_SIDE, i])
    ints[1, i] = entry_time
    ints[2, i] = exit_time
    ints[3, i] = bars
    floats[0, i] = state[_ENTRY_PRICE, i]
    floats[1, i] = exit_price
    floats[2, i] = state[_TRADE_SIZE, i]
    floats[3, i] = (exit_time - entry_time) / np.int64(1000)
    floats[4, i] = pnl
    floats[5, i] = pnl / denominator
    floats[6, i] = turnover * fee
    floats[7, i] = costs


@numba.njit(cache=True, error_model="numpy")
def _step_kernel(
    mode: int,
    advance: bool,
    has_impact: bool,
    target: FloatArray,
    index: IntArray,
    levels: FloatArray,
    constants: FloatArray,
    steps: IntArray,
    state: FloatArray,
    market: FloatArray,
    ts_ms: IntArray,
    rows: ObsArray,
    obs: ObsArray,
    ratio: FloatArray,
    equity_out: FloatArray,
    position_out: FloatArray,
    terminated: BoolArray,
    truncated: BoolArray,
    masks: BoolArray,
    trade_floats: FloatArray,
    trade_ints: IntArray,
) -> int:
    """Step every sub-env; return a bit set of _CLOSED, _ENDING, _DONE, or _BAD_ACTION before any change."""
    n = target.shape[0]
    if mode == _MAP_INDEX:
        n_levels = levels.shape[0]
        for i in range(n):
            if index[i] < 0 or index[i] >= n_levels:
                return _BAD_ACTION
        for i in range(n):
            target[i] = levels[index[i]]
    elif mode == _CHECK_BOUNDS:
        low, high = constants[_LOW], constants[_HIGH]
        for i in range(n):
            if not (target[i] >= low and target[i] <= high):
                return _BAD_ACTION
    t = steps[0]
    end = steps[1]
    if advance:
        for i in range(n):
            t[i] += 1
            state[_T_FLOAT, i] += 1.0
    gap, intra, opens, closes, volume = market[_GAP], market[_INTRA], market[_OPEN], market[_CLOSE], market[_VOLUME]
    held, side, in_trade = state[_HELD], state[_SIDE], state[_IN_TRADE]
    open_equity = state[_OPEN_EQUITY]
    is_rebalancing = False
    for i in range(n):
        open_equity[i] = (held[i] * gap[t[i]] + 1.0) * state[_EQUITY, i]
        if target[i] != held[i]:
            is_rebalancing = True
    result = 0
    if is_rebalancing:
        # Trade every sub-env from `held` to `target` at bar t's open (sub-envs already there trade nothing).
        fee = constants[_FEE]
        cost, turnover = state[_COST], state[_TURNOVER]
        exit_cost, exit_turnover = state[_EXIT_COST], state[_EXIT_TURNOVER]
        slippage, new_side = state[_SLIPPAGE], state[_NEW_SIDE]
        closed = masks[1]
        for i in range(n):
            new_side[i] = _sign(target[i])
            is_flip = new_side[i] != side[i]
            turnover[i] = abs(target[i] - held[i]) * open_equity[i]
            # held * side is |held|; exit legs close the previous trade on a flip.
            exit_turnover[i] = held[i] * side[i] * (1.0 if is_flip else 0.0) * open_equity[i]
            if has_impact:
                # CostModel.slippage_fraction: participation clipped to [0, 1], then the shared formula.
                bar_volume = volume[t[i]]
                participation = turnover[i] / opens[t[i]] / bar_volume if bar_volume > 0 else 1.0
                if participation < 0.0:
                    participation = 0.0
                elif participation > 1.0:
                    participation = 1.0
                slippage[i] = _slippage(constants[_SLIPPAGE_BPS], constants[_IMPACT_BPS], participation)
                rate = fee + slippage[i]
            else:
                slippage[i] = constants[_FIXED_SLIPPAGE]
                rate = constants[_RATE]
            cost[i] = turnover[i] * rate
            exit_cost[i] = exit_turnover[i] * rate
            closed[i] = is_flip and in_trade[i] != 0.0
            if closed[i]:
                result |= _CLOSED
        if result & _CLOSED:
            for i in range(n):
                pnl = open_equity[i] - exit_cost[i] - state[_ENTRY_EQUITY, i]
                exit_price = (1.0 - side[i] * slippage[i]) * opens[t[i]]
                _write_trade(
                    i,
                    t[i],
                    pnl,
                    state[_TRADE_TURNOVER, i] + exit_turnover[i],
                    state[_TRADE_COSTS, i] + exit_cost[i],
                    exit_price,
                    False,
                    state,
                    ts_ms,
                    fee,
                    trade_floats[0],
                    trade_ints[0],
                )
        for i in range(n):
            new_in_trade = abs(new_side[i])
            if new_side[i] != side[i]:
                state[_TRADE_COSTS, i] = 0.0
                state[_TRADE_TURNOVER, i] = 0.0
                state[_TRADE_SIZE, i] = target[i] * new_side[i]  # |target|
                state[_ENTRY_PRICE, i] = (new_side[i] * slippage[i] + 1.0) * opens[t[i]]
                state[_ENTRY_EQUITY, i] = (open_equity[i] - exit_cost[i]) * new_in_trade
                state[_ENTRY_BASE, i] = state[_T_FLOAT, i] - 1.0
                state[_ENTRY_OPEN_EQUITY, i] = open_equity[i]
            state[_TRADE_COSTS, i] += cost[i] - exit_cost[i]
            state[_TRADE_TURNOVER, i] += turnover[i] - exit_turnover[i]
            side[i] = new_side[i]
            in_trade[i] = new_in_trade
            held[i] = target[i]
            open_equity[i] -= cost[i]
    floor = constants[_FLOOR]
    is_done = False
    for i in range(n):
        new_equity = (held[i] * intra[t[i]] + 1.0) * open_equity[i]
        terminated[i] = new_equity <= 0.0
        if terminated[i]:
            new_equity = floor
        ratio[i] = new_equity / state[_EQUITY, i]
        state[_EQUITY, i] = new_equity
        equity_out[i] = new_equity
        position_out[i] = held[i]
        truncated[i] = t[i] == end[i]
        if terminated[i] or truncated[i]:
            is_done = True
    if is_done:
        result |= _DONE
        needs_reset, ending = masks[0], masks[2]
        for i in range(n):
            needs_reset[i] = terminated[i] or truncated[i]
            ending[i] = needs_reset[i] and in_trade[i] != 0.0
            if ending[i]:
                result |= _ENDING
        if result & _ENDING:
            for i in range(n):
                _write_trade(
                    i,
                    t[i],
                    state[_EQUITY, i] - state[_ENTRY_EQUITY, i],
                    state[_TRADE_TURNOVER, i],
                    state[_TRADE_COSTS, i],
                    closes[t[i]],
                    True,
                    state,
                    ts_ms,
                    constants[_FEE],
                    trade_floats[1],
                    trade_ints[1],
                )
    # Same encoding as bot.model.features.position_state: unrealised PnL / equity, log1p(bars held) (the log1p
    # is left to numpy, in the caller).
    width = rows.shape[1] - 3
    bars = state[_BARS]
    for i in range(n):
        obs[i, :] = rows[t[i]]
        obs[i, width] = np.float32(held[i])
        obs[i, width + 1] = np.float32(in_trade[i] - state[_ENTRY_EQUITY, i] / state[_EQUITY, i])
        bars[i] = (state[_T_FLOAT, i] - state[_ENTRY_BASE, i]) * in_trade[i]
    return result
