"""The engine's control plane: the `bot.commands.CommandHandler` commands on top of `EngineBase`.

``pause`` (no new orders from the policy; the features and position state keep advancing), ``resume`` (lifts a
pause and a persisted risk halt), ``flatten`` (market orders back to flat, outside the policy), ``status`` and
``reload_model`` (a new ONNX + card with the same feature spec, swapped between candles; the old policy stays on
any failure). Commands take the symbols' locks that candles take, so a command never lands in the middle of a
decision.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Mapping
from decimal import Decimal
from pathlib import Path
from typing import Any

from adapters.types import OrderRequest, OrderType, Side
from bot.engine_state import EngineBase, SymbolState
from bot.events import AlertEvent
from bot.ledger_types import split_symbol
from bot.order_sizing import new_client_order_id
from bot.policy import OnnxPolicy
from bot.risk import RiskState

ZERO = Decimal(0)


class EngineCommands(EngineBase):
    """Answer the control plane's commands (see the module docstring)."""

    @contextlib.asynccontextmanager
    async def _every_symbol(self) -> AsyncIterator[None]:
        # Candle handling holds one symbol's lock at a time, so taking them all in a fixed order cannot deadlock.
        async with contextlib.AsyncExitStack() as stack:
            for state in self._states.values():
                await stack.enter_async_context(state.lock)
            yield

    async def pause(self) -> Mapping[str, Any]:
        """Stop the policy from placing new orders until `resume`; open orders and fills are still followed."""
        async with self._every_symbol():  # a candle being decided finishes first
            was_paused, self.paused = self.paused, True
        if not was_paused:
            self._log.warning("engine_paused")
            self._emit_status(self.state)
        return {"state": "paused", "was_paused": was_paused, "status": self.status_line()}

    async def resume(self) -> Mapping[str, Any]:
        """Lift a pause and return a halted or reducing risk manager to active (also the persisted halt)."""
        async with self._every_symbol():
            was_paused, self.paused = self.paused, False
            previous_risk = self.risk.state
            if previous_risk is not RiskState.ACTIVE:
                # One small ledger write, inline like the risk manager's own state changes on each candle.
                self.risk.resume(self.clock())
        self._log.info("engine_resumed", was_paused=was_paused, previous_risk_state=previous_risk.value)
        self._emit_status(self.state)
        return {
            "state": self.state,
            "was_paused": was_paused,
            "previous_risk_state": previous_risk.value,
            "risk_state": self.risk.state.value,
            "status": self.status_line(),
        }

    async def flatten(self, symbol: str | None) -> Mapping[str, Any]:
        """Cancel the open orders of `symbol` (every symbol when None) and close its position with a market order.

        Operator orders bypass the policy and the risk limits (they only reduce exposure). The policy may open a
        position again at the next candle: pause first to stay flat.
        """
        symbols = list(self.symbols) if symbol is None else [symbol]
        unknown = [s for s in symbols if s not in self._states]
        if unknown:
            raise ValueError(f"flatten: {unknown[0]!r} is not traded by this bot (it trades {', '.join(self.symbols)})")
        if not self.accepting:
            raise RuntimeError("flatten: the engine is stopping")
        results: dict[str, Any] = {}
        for name in symbols:
            state = self._states[name]
            async with state.lock:
                results[name] = await self._flatten_symbol(state)
        message = "; ".join(f"{s}: {r['order'] or r['reason']}" for s, r in results.items())
        self.bus.publish(
            AlertEvent(ts=self.clock(), bot_id=self.settings.bot_id, level="warning", code="flatten", message=message)
        )
        return {"symbols": results, "status": self.status_line()}

    async def _flatten_symbol(self, state: SymbolState) -> dict[str, Any]:
        symbol = state.core.symbol
        cancelled = []
        for cid in sorted(state.pending):
            order = await self.orders.cancel(cid, reason="flatten command")
            if order.status.is_final:
                state.pending.discard(cid)
                cancelled.append(cid)
        balances = await self.venue.fetch_balances()
        base = split_symbol(symbol)[0]
        position = balances[base].total if base in balances else ZERO
        market = state.core.market
        amount = market.round_amount(abs(position))
        result: dict[str, Any] = {"position": str(position), "cancelled": cancelled, "order": None, "reason": None}
        price = Decimal(repr(state.last_close)) if state.last_close is not None else None
        if amount <= 0:
            result["reason"] = "flat"
        elif amount < market.min_amount or (price is not None and amount * price < market.min_notional):
            result["reason"] = "below_minimum"
        else:
            side = Side.SELL if position > 0 else Side.BUY
            cid = new_client_order_id(self.settings.bot_id, symbol, now=self.clock())
            request = OrderRequest(cid, symbol, side, OrderType.MARKET, amount)
            self._log.warning("position_flattening", symbol=symbol, side=side.value, amount=str(amount))
            order = await self.orders.submit(request, model_sha=self.policy.sha256)
            self.stats.orders_submitted += 1
            if not order.status.is_final:
                state.pending.add(order.client_order_id)
            result.update(order=order.client_order_id, side=side.value, amount=str(amount), status=order.status.value)
        return result

    async def status(self) -> Mapping[str, Any]:
        """Return the status line and the engine's state as JSON-ready data (and republish the status event)."""
        self._emit_status(self.state)
        symbols = {
            name: {
                "target": state.core.last_target,
                "last_close": state.last_close,
                "last_candle_close": None if state.last_candle_close is None else state.last_candle_close.isoformat(),
                "pending_orders": sorted(state.pending),
            }
            for name, state in self._states.items()
        }
        return {
            "status": self.status_line(),
            "state": self.state,
            "paused": self.paused,
            "mode": self.mode,
            "risk_state": self.risk.state.value,
            "risk_reason": self.risk.reason,
            "candles": self.stats.candles,
            "decisions": self.stats.decisions,
            "orders_submitted": self.stats.orders_submitted,
            "orders_withheld": self.stats.orders_withheld,
            "uptime_s": round(time.monotonic() - self._started, 3),
            "model": {
                "path": str(self.policy.onnx_path),
                "sha256": self.policy.sha256,
                "run_id": self.policy.card.run_id,
            },
            "symbols": symbols,
        }

    async def reload_model(self, path: str | None) -> Mapping[str, Any]:
        """Load the ONNX model at `path` (the current one when None) with its card and trade with it from the next
        candle; refuse a card it cannot verify or a different feature spec, keeping the old policy."""
        target = Path(path) if path is not None else self.policy.onnx_path
        # Reading and hashing the files and building the onnxruntime session block: keep them off the loop.
        policy = await asyncio.to_thread(OnnxPolicy.load, target)
        check_compatible(self.policy, policy)
        async with self._every_symbol():
            previous, self.policy = self.policy, policy
            for state in self._states.values():
                state.core.policy = policy
        self._log.warning("policy_reloaded", path=str(target), sha256=policy.sha256, previous_sha256=previous.sha256)
        self.bus.publish(
            AlertEvent(
                ts=self.clock(),
                bot_id=self.settings.bot_id,
                level="info",
                code="model_reloaded",
                message=f"model {previous.sha256[:12]} -> {policy.sha256[:12]} from {target}",
            )
        )
        return {
            "path": str(target),
            "sha256": policy.sha256,
            "previous_sha256": previous.sha256,
            "run_id": policy.card.run_id,
        }


def check_compatible(current: OnnxPolicy, new: OnnxPolicy) -> None:
    """Raise ValueError unless `new` observes exactly what `current` does (the live features cannot change)."""
    old_spec, new_spec = current.feature_spec, new.feature_spec
    for name in ("version", "names", "window", "params"):
        old_value, new_value = getattr(old_spec, name), getattr(new_spec, name)
        if (dict(old_value) if name == "params" else old_value) != (dict(new_value) if name == "params" else new_value):
            raise ValueError(
                f"reload-model refused: feature spec {name} differs ({new_value!r} in {new.onnx_path}, "
                f"{old_value!r} live); the running features cannot change, restart the bot with that model"
            )
    if current.observation_shape != new.observation_shape:
        raise ValueError(
            f"reload-model refused: observation shape {new.observation_shape} differs from the live "
            f"{current.observation_shape}"
        )
