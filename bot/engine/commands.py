"""The engine's control plane: the `bot.commands.CommandHandler` commands, a small object the engine owns.

It reaches the engine only through `CommandTarget`, the narrow protocol below (no subclassing of the engine).

``pause`` (no new orders from the policy; the features and position state keep advancing), ``resume`` (lifts a
pause and a persisted risk halt), ``flatten`` (market orders back to flat, outside the policy), ``status`` and
``reload_model`` (a new ONNX + card with the same feature spec, swapped between candles; the old policy stays on
any failure) and ``promote`` (a shadow model becomes the live policy). Commands take the symbols' locks that candles
take, so a command never lands in the middle of a decision.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable, Mapping
from datetime import datetime
from pathlib import Path
from typing import Any, Literal, Protocol

import structlog

from bot.engine.decision import TradingSettings
from bot.engine.state import EngineStats, SymbolState
from bot.events import AlertEvent, ModelPromotedEvent
from bot.model.features import FeatureSource, IncrementalFeatures
from bot.model.policy import OnnxPolicy
from bot.orders.manager import OrderManager
from bot.risk import RiskManager, RiskState
from bot.shadow.model import ShadowModel
from bot.shadow.pool import ShadowPool
from bot.sinks.bus import EventBus

log = structlog.get_logger()


class CommandTarget(Protocol):
    """What the commands need of the engine."""

    symbols: list[str]
    policy: OnnxPolicy
    risk: RiskManager
    settings: TradingSettings
    bus: EventBus
    clock: Callable[[], datetime]
    stats: EngineStats
    paused: bool
    accepting: bool
    state: str
    mode: str
    shadows: ShadowPool | None
    promote_position: Literal["keep", "flatten"]
    orders: OrderManager

    @property
    def symbol_states(self) -> Mapping[str, SymbolState]:
        """The traded symbols' states (their locks are the candles' locks)."""
        ...

    @property
    def uptime_s(self) -> float:
        """Seconds since the engine was built."""
        ...

    def status_line(self) -> str:
        """The one-line status."""
        ...

    def emit_status(self, state: str) -> None:
        """Publish a status event."""
        ...

    def reanchor_candle_guards(self) -> list[str]:
        """Let the next valid candle be each guard's reference; return the symbols that were refusing."""
        ...

    async def flatten_symbol(self, state: SymbolState, *, reason: str = ...) -> dict[str, Any]:
        """Cancel the symbol's orders and close the bot's position (lock held by the caller)."""
        ...

    def install_policy(self, policy: OnnxPolicy, features: Mapping[str, FeatureSource] | None = None) -> None:
        """Trade with `policy` from the next candle, with `features` when its spec differs (locks held)."""
        ...


class EngineCommands:
    """Answer the control plane's commands (see the module docstring) for `engine`."""

    def __init__(self, engine: CommandTarget) -> None:
        """Act on `engine`."""
        self.engine = engine

    @contextlib.asynccontextmanager
    async def _every_symbol(self) -> AsyncIterator[None]:
        # Candle handling holds one symbol's lock at a time, so taking them all in a fixed order cannot deadlock.
        async with contextlib.AsyncExitStack() as stack:
            for state in self.engine.symbol_states.values():
                await stack.enter_async_context(state.lock)
            yield

    async def pause(self) -> Mapping[str, Any]:
        """Stop the policy from placing new orders until `resume`; open orders and fills are still followed."""
        async with self._every_symbol():  # a candle being decided finishes first
            was_paused, self.engine.paused = self.engine.paused, True
        if not was_paused:
            log.warning("engine_paused")
            self.engine.emit_status(self.engine.state)
        return {"state": "paused", "was_paused": was_paused, "status": self.engine.status_line()}

    async def resume(self) -> Mapping[str, Any]:
        """Lift a pause and return a halted or reducing risk manager to active (also the persisted halt)."""
        async with self._every_symbol():
            was_paused, self.engine.paused = self.engine.paused, False
            previous_risk = self.engine.risk.state
            if previous_risk is not RiskState.ACTIVE:
                # One small ledger write, inline like the risk manager's own state changes on each candle.
                self.engine.risk.resume(self.engine.clock())
            # A move the guard kept refusing was looked at: the next valid candle is the new reference.
            reanchored = self.engine.reanchor_candle_guards()
        log.info(
            "engine_resumed",
            was_paused=was_paused,
            previous_risk_state=previous_risk.value,
            candle_guard_reanchored=reanchored,
        )
        self.engine.emit_status(self.engine.state)
        return {
            "state": self.engine.state,
            "was_paused": was_paused,
            "previous_risk_state": previous_risk.value,
            "risk_state": self.engine.risk.state.value,
            "candle_guard_reanchored": reanchored,
            "status": self.engine.status_line(),
        }

    async def flatten(self, symbol: str | None) -> Mapping[str, Any]:
        """Cancel the open orders of `symbol` (every symbol when None) and close its position with a market order.

        Operator orders bypass the policy and the risk limits (they only reduce exposure). The policy may open a
        position again at the next candle: pause first to stay flat.
        """
        symbols = list(self.engine.symbols) if symbol is None else [symbol]
        unknown = [s for s in symbols if s not in self.engine.symbol_states]
        if unknown:
            raise ValueError(
                f"flatten: {unknown[0]!r} is not traded by this bot (it trades {', '.join(self.engine.symbols)})"
            )
        if not self.engine.accepting:
            raise RuntimeError("flatten: the engine is stopping")
        results: dict[str, Any] = {}
        for name in symbols:
            state = self.engine.symbol_states[name]
            async with state.lock:
                results[name] = await self.engine.flatten_symbol(state)
        message = "; ".join(f"{s}: {r['order'] or r['reason']}" for s, r in results.items())
        self.engine.bus.publish(
            AlertEvent(
                ts=self.engine.clock(),
                bot_id=self.engine.settings.bot_id,
                level="warning",
                code="flatten",
                message=message,
            )
        )
        return {"symbols": results, "status": self.engine.status_line()}

    async def status(self) -> Mapping[str, Any]:
        """Return the status line and the engine's state as JSON-ready data (and republish the status event)."""
        self.engine.emit_status(self.engine.state)
        symbols = {
            name: {
                "target": state.core.last_target,
                "last_close": state.last_close,
                "last_candle_close": None if state.last_candle_close is None else state.last_candle_close.isoformat(),
                "pending_orders": sorted(state.pending),
            }
            for name, state in self.engine.symbol_states.items()
        }
        return {
            "status": self.engine.status_line(),
            "state": self.engine.state,
            "paused": self.engine.paused,
            "mode": self.engine.mode,
            "risk_state": self.engine.risk.state.value,
            "risk_reason": self.engine.risk.reason,
            "candles": self.engine.stats.candles,
            "decisions": self.engine.stats.decisions,
            "orders_submitted": self.engine.stats.orders_submitted,
            "orders_withheld": self.engine.stats.orders_withheld,
            "uptime_s": round(self.engine.uptime_s, 3),
            "model": {
                "path": str(self.engine.policy.onnx_path),
                "sha256": self.engine.policy.sha256,
                "run_id": self.engine.policy.card.run_id,
            },
            "symbols": symbols,
            "shadows": {} if self.engine.shadows is None else shadow_status(self.engine.shadows),
        }

    async def reload_model(self, path: str | None) -> Mapping[str, Any]:
        """Load the ONNX model at `path` (the current one when None) with its card and trade with it from the next
        candle; refuse a card it cannot verify or a different feature spec, keeping the old policy."""
        target = Path(path) if path is not None else self.engine.policy.onnx_path
        # Reading and hashing the files and building the onnxruntime session block: keep them off the loop.
        policy = await asyncio.to_thread(OnnxPolicy.load, target)
        check_compatible(self.engine.policy, policy)
        async with self._every_symbol():
            previous = self.engine.policy
            self.engine.install_policy(policy)
        log.warning("policy_reloaded", path=str(target), sha256=policy.sha256, previous_sha256=previous.sha256)
        self.engine.bus.publish(
            AlertEvent(
                ts=self.engine.clock(),
                bot_id=self.engine.settings.bot_id,
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

    async def promote(self, model: str) -> Mapping[str, Any]:
        """Make the running shadow `model` the live policy from the next candle (see `bot.shadow`).

        Its card is verified again (the file on disk must still be the one shadowed since start); then, with every
        symbol's lock held, the shadows catch up with the last candle, the live position is flattened first when
        ``bot.promote_position`` is ``flatten`` (else kept for the new policy), and the shadow's policy (with its
        own features, warmed on the same candles) replaces the live one. The replaced model goes on as a shadow
        (named by its file stem, ``-previous`` added when taken), so promoting it again is the way back. Recorded in
        the ledger's event journal and published as a ``model_promoted`` event. Any refusal leaves the live policy
        as it was."""
        engine = self.engine
        pool = engine.shadows
        if pool is None:
            raise ValueError("promote: this bot runs no shadow models (bot.shadow_models is empty)")
        shadow = pool.get(model)
        if not engine.accepting:
            raise RuntimeError("promote: the engine is stopping")
        if shadow.missed:
            raise ValueError(
                f"promote refused: shadow {model} missed {shadow.missed} candles (bot.shadow_queue_size was full), so "
                "its features are not the live ones; restart the bot to shadow it afresh"
            )
        path = shadow.policy.onnx_path
        fresh = await asyncio.to_thread(OnnxPolicy.load, path)
        if fresh.sha256 != shadow.policy.sha256:
            raise ValueError(
                f"promote refused: {path} changed since the shadow started (sha256 {fresh.sha256[:12]}, shadowed "
                f"{shadow.policy.sha256[:12]}); restart the bot to shadow the new file"
            )
        flattened: dict[str, Any] = {}
        async with self._every_symbol():
            await pool.join()  # the shadow's features have seen every candle the live ones have
            if engine.promote_position == "flatten":
                for name, state in engine.symbol_states.items():
                    flattened[name] = await engine.flatten_symbol(state, reason=f"promote {model}")
            pool.remove(model)
            previous = engine.policy
            try:
                check_compatible(previous, shadow.policy)
                same_features = True
            except ValueError:
                same_features = False
            # The replaced model shadows on from the live features it decided with (prepared before the swap).
            demotion = self._demotion(pool, shadow, previous, engine.symbol_states, copy_features=same_features)
            engine.install_policy(shadow.policy, None if same_features else shadow.features)
            demoted = None
            if demotion is not None:
                pool.add(demotion)
                demoted = demotion.name
        position: Literal["kept", "flattened"] = "flattened" if engine.promote_position == "flatten" else "kept"
        event = ModelPromotedEvent(
            ts=engine.clock(),
            bot_id=engine.settings.bot_id,
            model=model,
            path=str(path),
            sha256=shadow.policy.sha256,
            previous_sha256=previous.sha256,
            position=position,
        )
        await engine.orders.db(engine.orders.ledger.record_event, event)
        log.warning(
            "model_promoted", model=model, path=str(path), sha256=shadow.policy.sha256, previous_sha256=previous.sha256
        )
        engine.bus.publish(event)
        return {
            "model": model,
            "path": str(path),
            "sha256": shadow.policy.sha256,
            "previous_sha256": previous.sha256,
            "run_id": shadow.policy.card.run_id,
            "position": position,
            "flatten": flattened,
            "features": "kept" if same_features else "the shadow's",
            "demoted": demoted,
            "shadows": pool.names,
        }

    @staticmethod
    def _demotion(
        pool: ShadowPool,
        promoted: ShadowModel,
        previous: OnnxPolicy,
        states: Mapping[str, SymbolState],
        *,
        copy_features: bool,
    ) -> ShadowModel | None:
        """The replaced live model as a shadow (the way back: `promote` it again), named by its file stem.

        Its features are the live ones it decided with, copied when the live policy keeps using them."""
        warm: dict[str, IncrementalFeatures] = {}
        for symbol, state in states.items():
            features = state.features
            if not isinstance(features, IncrementalFeatures):
                return None  # precomputed features (a backtest's) cannot go on by themselves
            warm[symbol] = features.copy() if copy_features else features
        return promoted.like(pool.free_name(previous.onnx_path.stem), previous, warm)


def shadow_status(pool: ShadowPool) -> dict[str, Any]:
    """Each running shadow's figures, and the ones dropped at run time with their error."""
    running = {}
    for name in pool.names:
        shadow = pool.get(name)
        running[name] = {
            "path": str(shadow.policy.onnx_path),
            "sha256": shadow.policy.sha256,
            "trades": shadow.trades,
            "realized_pnl": str(shadow.realized_pnl),
            "agreement": shadow.agreement,
            "missed_candles": shadow.missed,
        }
    return {"running": running, "dropped": dict(pool.failed), "candles_dropped": pool.dropped}


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
