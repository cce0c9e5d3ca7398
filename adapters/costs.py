"""The one trading-cost model: fees and slippage charged by the paper venue and by the training env.

Slippage is a fixed part plus a market-impact part that grows with the order's share of the bar's
volume: ``slippage_bps = fixed_bps + impact_bps * participation`` where ``participation`` is
``quantity / bar_volume`` (capped at 1). Buys fill above the reference price, sells below it.
The float functions accept numpy arrays so the vectorised env uses exactly this arithmetic.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal
from typing import Any, TypeVar

import numpy as np
import numpy.typing as npt

FILL_MODEL_VERSION = "costs-v1"

FloatOrArray = TypeVar("FloatOrArray", float, npt.NDArray[np.float64])


def slippage_formula(slippage_bps: Any, impact_bps: Any, participation: Any) -> Any:
    """The one slippage formula, as a fraction of price: (fixed bps + impact bps × participation) / 10,000.

    `participation` is the order's share of the candle's volume, already clipped to [0, 1]. Plain arithmetic
    that works on floats and numpy arrays alike, so that training's compiled vector env runs this very function
    (numba) rather than a copy of it.
    """
    return (slippage_bps + impact_bps * participation) * 1e-4


@dataclass(frozen=True)
class CostModel:
    """Fees and slippage in basis points; `max_participation` caps a fill's share of a candle's volume."""

    taker_fee_bps: float = 10.0
    """Fee on market orders (taker), in bps of notional."""
    maker_fee_bps: float = 10.0
    """Fee on resting limit orders that fill (maker), in bps of notional."""
    slippage_bps: float = 2.0
    """Fixed slippage applied to every market order, in bps of the reference price."""
    impact_bps: float = 0.0
    """Extra slippage per unit of volume participation (quantity / candle volume), in bps."""
    max_participation: float = 1.0
    """Largest share of one candle's volume a single order may fill in that candle (0 < x <= 1)."""

    def __post_init__(self) -> None:
        for name in ("taker_fee_bps", "maker_fee_bps", "slippage_bps", "impact_bps"):
            value = getattr(self, name)
            if not np.isfinite(value) or value < 0:
                raise ValueError(f"costs.{name} must be a finite number >= 0, was {value}")
        if not 0 < self.max_participation <= 1:
            raise ValueError(f"costs.max_participation must be in (0, 1], was {self.max_participation}")

    def slippage_fraction(self, participation: FloatOrArray) -> FloatOrArray:
        """Slippage as a fraction of price for a given volume participation (0..1)."""
        result: npt.NDArray[np.float64] = slippage_formula(
            self.slippage_bps, self.impact_bps, np.clip(participation, 0.0, 1.0)
        )
        if isinstance(participation, float | int):
            return float(result)
        return result

    def fee_fraction(self, *, is_maker: bool) -> float:
        """Fee as a fraction of notional."""
        return (self.maker_fee_bps if is_maker else self.taker_fee_bps) * 1e-4

    def fill_price(self, reference_price: Decimal, side_sign: int, quantity: Decimal, volume: Decimal) -> Decimal:
        """Price a market order fills at: the reference moved against us by slippage."""
        participation = float(quantity / volume) if volume > 0 else 1.0
        slip = Decimal(repr(self.slippage_fraction(participation)))
        return reference_price * (Decimal(1) + Decimal(side_sign) * slip)

    def fee(self, notional: Decimal, *, is_maker: bool) -> Decimal:
        """Fee charged on a fill of the given notional, in the quote currency."""
        return notional * Decimal(repr(self.fee_fraction(is_maker=is_maker)))

    def fillable_quantity(self, quantity: Decimal, volume: Decimal) -> Decimal:
        """How much of `quantity` can fill against one candle of `volume` under the participation cap."""
        cap = volume * Decimal(repr(self.max_participation))
        return min(quantity, cap)

    def rebalance_cost_fraction(self, turnover: FloatOrArray, participation: FloatOrArray) -> FloatOrArray:
        """Cost of trading `turnover` (|Δ position| as a fraction of equity) with taker fee plus slippage."""
        per_unit = self.fee_fraction(is_maker=False) + self.slippage_fraction(participation)
        return turnover * per_unit
