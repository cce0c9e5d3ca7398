"""The local exchange server's re-stamped candles, repeated for soaks longer than the bundled file."""

from __future__ import annotations

import numpy as np

from tests.support.binance_server import load_candles, retimed_candles


def test_a_longer_replay_repeats_the_candles_going_on_from_the_last_close() -> None:
    raw = load_candles("BTC/USDT-1h")
    n = len(raw.open_ms)
    replay = retimed_candles("BTC/USDT-1h", 1_000_000, 1000, 3)
    assert len(replay.open_ms) == 3 * n
    assert set(np.diff(replay.open_ms).tolist()) == {1000}  # one candle a second, no gap at a seam
    for seam in (n, 2 * n):
        # The next pass opens where the last one closed: no jump for the candle guard to refuse.
        assert replay.ohlcv[seam, 0] == replay.ohlcv[seam - 1, 3]
    # Each pass is the bundled file scaled: the same returns and the same volumes.
    second = replay.ohlcv[n : 2 * n]
    np.testing.assert_allclose(second[:, :4] / second[0, 0], raw.ohlcv[:, :4] / raw.ohlcv[0, 0], rtol=1e-12)
    np.testing.assert_array_equal(second[:, 4], raw.ohlcv[:, 4])
    np.testing.assert_array_equal(retimed_candles("BTC/USDT-1h", 1_000_000, 1000).ohlcv, raw.ohlcv)
