"""One shadow model: a policy deciding on the live candles for a virtual book that never sends an order.

A shadow sees every candle the live policy trades on (after the live decision), computes its own features with
the shared pipeline (`IncrementalFeatures` of its own card's spec: a shadow may observe other features than the
live model), and decides with the same `DecisionCore` and risk limits (`bot.risk.RiskManager`, in memory) as the
live engine. Its orders go to its own `adapters.paper.book.PaperBook`: the paper venue's fill model (fills from
the next candle's open, fees and slippage of the cost model, the volume cap and its partial fills). Its round trips
are counted by the ledger's own position accounting (`bot.ledger.positions.advance_position`).

The virtual book starts flat with the bot's equity at the shadow's first traded candle, so that returns compare.
Everything here is synchronous and does no I/O: `bot.shadow.pool` runs it off the order path and writes its rows.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

import structlog

from adapters.costs import CostModel
from adapters.errors import AdapterError
from adapters.paper.book import PaperBook
from adapters.paper.config import PaperConfig
from adapters.types import Candle, ClientOrderId, Market, Order, OrderRequest, split_symbol, timeframe_seconds
from bot.engine.decision import DecisionCore, TradingSettings
from bot.ledger.positions import advance_position, empty_position_state
from bot.ledger.shadows import ModelMark, ShadowOrder, ShadowRecords, ShadowTrade, targets_agree
from bot.model.features import IncrementalFeatures
from bot.model.policy import OnnxPolicy
from bot.risk import RiskConfig, RiskManager

log = structlog.get_logger()

ZERO = Decimal(0)
SHADOW_HISTORY_LIMIT = 200
"""Finished virtual orders and fills a shadow's book keeps in memory (the ledger keeps them all)."""


@dataclass
class ShadowStep:
    """What one candle did to a shadow: the ledger rows, and the figures its events carry."""

    records: ShadowRecords = field(default_factory=ShadowRecords)
    equity: Decimal | None = None
    """Book equity at the close (None before the book opened)."""
    cash: Decimal = ZERO
    positions_value: Decimal = ZERO


class ShadowModel:
    """One shadow model's features, decision cores, risk manager and virtual book (see the module docstring)."""

    def __init__(
        self,
        name: str,
        policy: OnnxPolicy,
        *,
        markets: Mapping[str, Market],
        costs: CostModel,
        settings: TradingSettings,
        risk: RiskConfig,
        account: str,
    ) -> None:
        """Shadow `policy` as `name` on `markets` with the live bot's `settings`, `risk` limits and `costs`."""
        self.name = name
        self.policy = policy
        self.account = account
        self.costs = costs
        self.markets = dict(markets)
        self._live_settings = settings
        self._risk_config = risk
        # Client order ids carry the shadow's name: a virtual id never looks like one of the bot's.
        self.settings = replace(settings, bot_id=f"sh{name}")
        self.risk = RiskManager(risk, bot_id=settings.bot_id, shadow=name)
        self.features = {symbol: IncrementalFeatures(policy.feature_spec) for symbol in markets}
        self.cores = {
            symbol: DecisionCore(symbol, market, policy, self.risk, costs, self.settings)
            for symbol, market in self.markets.items()
        }
        self.book: PaperBook | None = None
        self._prices: dict[str, Decimal] = {}
        self._positions: dict[str, dict[str, Any]] = {symbol: empty_position_state() for symbol in markets}
        self._open: dict[ClientOrderId, Order] = {}
        self._timeframe = timedelta(seconds=timeframe_seconds(settings.timeframe))
        self.trades = 0
        """Round trips closed."""
        self.realized_pnl = ZERO
        """Their profit after fees."""
        self.decisions = 0
        self.agreed = 0
        """Decisions whose target equalled the live policy's."""
        self.missed = 0
        """Traded candles this shadow never saw (the pool's queue was full): its features skipped them."""
        self.refused_orders = 0
        """Orders the virtual book refused (funds, minimums): counted, logged when the reason changes."""
        self._last_refusal: str | None = None
        self._records = ShadowRecords()
        """The rows of the step being run."""

    def like(self, name: str, policy: OnnxPolicy, features: Mapping[str, IncrementalFeatures]) -> ShadowModel:
        """Return a new shadow `name` of `policy` on this one's markets, costs, settings and risk limits, starting
        from `features` (already warm on the same candles: a demoted live model's)."""
        shadow = ShadowModel(
            name,
            policy,
            markets=self.markets,
            costs=self.costs,
            settings=self._live_settings,
            risk=self._risk_config,
            account=self.account,
        )
        shadow.features = dict(features)
        return shadow

    @property
    def agreement(self) -> float | None:
        """Share of the decisions (both models warm) where the target equalled the live policy's."""
        return self.agreed / self.decisions if self.decisions else None

    def warm(self, symbol: str, candles: Sequence[Candle]) -> None:
        """Feed the warm-up history the live engine started from (no decisions)."""
        features = self.features[symbol]
        for candle in candles:
            features.update_candle(candle)

    def _open_book(self, equity: Decimal) -> PaperBook:
        config = PaperConfig(
            initial_balances={self.account: equity},
            markets=tuple(self.markets.values()),
            costs=self.costs,
            allow_short=self.settings.allow_short,
            name=f"shadow:{self.name}",
            history_limit=SHADOW_HISTORY_LIMIT,
        )
        return PaperBook(config)

    def step(
        self,
        candle: Candle,
        *,
        now: datetime,
        session: datetime,
        live_equity: Decimal,
        live_target: float | None,
    ) -> ShadowStep:
        """Handle one candle the live engine traded on: fill the virtual orders it reaches, then decide."""
        symbol = candle.symbol
        result = ShadowStep()
        records = self._records = result.records
        if self.book is None:
            if live_equity <= 0:
                self.features[symbol].update_candle(candle)
                return result
            self.book = self._open_book(live_equity)
        book = self.book
        fills = book.on_candle(candle)
        base, quote = split_symbol(symbol)
        for fill in fills:
            closed = advance_position(
                self._positions[symbol], fill, base, quote, self.policy.sha256, self.policy.card.run_id
            )
            if closed is not None:
                self.trades += 1
                self.realized_pnl += closed.realized_pnl
                self.risk.on_trade_closed(symbol, closed.realized_pnl, closed.closed_at)
                records.trades.append(ShadowTrade(self.name, closed))
        for cid, before in list(self._open.items()):
            if before.symbol != symbol:
                continue
            after = book.get_order(symbol, cid)
            if after.status is not before.status or after.filled != before.filled:
                records.orders.append(ShadowOrder(self.name, after, self.policy.sha256))
            if after.status.is_final:
                del self._open[cid]
            else:
                self._open[cid] = after
        self._prices[symbol] = Decimal(repr(candle.close))
        window = self.features[symbol].update_candle(candle)
        equity = book.equity(self._prices, self.account)
        close_time = candle.open_time + self._timeframe
        target: float | None = None
        if window is not None:
            target = self._decide(symbol, candle, window, now, close_time, equity)  # an order changes no value yet
            if target is not None and live_target is not None:
                self.decisions += 1
                if targets_agree(target, live_target):
                    self.agreed += 1
        cash = book.balances().get(self.account)
        result.equity = equity
        result.cash = ZERO if cash is None else cash.total
        result.positions_value = equity - result.cash
        records.marks.append(
            ModelMark(close_time, session, self.name, "shadow", symbol, self.policy.sha256, target, equity)
        )
        return result

    def _decide(
        self, symbol: str, candle: Candle, window: Any, now: datetime, close_time: datetime, equity: Decimal
    ) -> float:
        book = self.book
        assert book is not None
        core = self.cores[symbol]
        _, quote = split_symbol(symbol)
        position = book.position(symbol)
        balance = book.balances().get(quote)
        free_quote = ZERO if balance is None else balance.free
        total_notional = sum((abs(book.position(s)) * p for s, p in self._prices.items() if s in self.markets), ZERO)
        self.risk.update_equity(equity, now)
        pending = any(o.symbol == symbol for o in self._open.values())
        price = Decimal(repr(candle.close))
        if not pending and position != 0:
            # The stop-loss exit the live engine would send at this candle, on the virtual book.
            entry = self._positions[symbol]["average_entry_price"]
            stop = core.stop_exit(
                now=now,
                close_time=close_time,
                price=price,
                position=position,
                entry=entry,
                total_notional=total_notional,
            )
            pending = stop is not None and self._send(stop)
        decision = core.decide(
            now=now,
            close_time=close_time,
            price=candle.close,
            window=window,
            position=position,
            free_quote=free_quote,
            equity=equity,
            total_notional=total_notional,
            has_pending=pending,
        )
        if decision.request is not None:
            self._send(decision.request)
        return decision.target

    def _send(self, request: OrderRequest) -> bool:
        """Place `request` on the virtual book; a refusal is counted (and logged when its reason changes)."""
        assert self.book is not None
        try:
            order = self.book.submit_order(request)
        except AdapterError as e:
            self.refused_orders += 1
            reason = type(e).__name__
            if reason != self._last_refusal:
                self._last_refusal = reason
                log.info("shadow_order_refused", model=self.name, symbol=request.symbol, error=str(e))
            return False
        self._last_refusal = None
        self._open[order.client_order_id] = order
        self._records.orders.append(ShadowOrder(self.name, order, self.policy.sha256))
        return True
