"""A backtest's flat-position targets, computed ahead in batches: one policy call per bar only while in a position.

An observation is the bar's raw feature window followed by the position state (`bot.model.features.position_state`).
While the bot is flat that state is exactly (0, 0, 0), and over a precomputed history
(`bot.model.features.PrecomputedFeatures`, a backtest) every bar's window is known before the bar is replayed. So
the target the policy asks for at a flat bar can be computed before the bar, for many bars in one onnxruntime call
(~0.5 µs a bar for the benchmark's MLP instead of ~9 µs for a call of one row). The decision core asks
`FlatTargets.target` instead of the policy when its tracker is flat; in a position it calls the policy as before.

Nothing looks ahead: a bar's window holds bars <= t only, and the result for bar t is read only at bar t. The
batched outputs must be the policy's own: the first batch is checked bit for bit against one-row calls on up to
`CHECK_ROWS` of its bars, and if any differs `FlatTargets` turns itself off (one log line) and every decision calls
the policy per bar.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
import structlog

from bot.model.features import PrecomputedFeatures
from bot.model.policy import OnnxPolicy

log = structlog.get_logger()

CHUNK_BARS = 512
"""Bars per batch (0.3 MB of observations for the benchmark's 163-wide MLP); at 2,048 the backtest's peak RSS grew
from 249 to 254 MB, past its 250 MB target (onnxruntime keeps its arena at the largest batch)."""
CHECK_ROWS = 64
"""Rows of the first batch compared with one-row calls."""


class FlatTargets:
    """The policy's target at each bar of `features` for a flat position, computed `chunk` bars ahead at a time."""

    def __init__(self, policy: OnnxPolicy, features: PrecomputedFeatures, chunk: int = CHUNK_BARS) -> None:
        """Serve `policy`'s flat targets over the bars `features` hands out."""
        if chunk < 1:
            raise ValueError(f"chunk must be >= 1, was {chunk}")
        if policy.feature_spec.window != features.spec.window or policy.feature_spec.names != features.spec.names:
            raise ValueError("the policy's feature spec is not the precomputed features' spec")
        self.policy = policy
        self.features = features
        self.chunk = chunk
        self.enabled = True
        """False once a batch differed from one-row calls: `target` then answers None (call the policy)."""
        self.served = 0
        """Decisions answered from a batch."""
        self._start = 0
        self._targets: list[float] = []
        self._checked = False

    def target(self) -> float | None:
        """Return the policy's target for a flat position at the features' current bar, or None where it has none
        (turned off, or the bar has no full window)."""
        offset = self.features.bar - self._start
        targets = self._targets
        if not 0 <= offset < len(targets):
            if not self.enabled or not self._compute(self.features.bar):
                return None
            offset, targets = 0, self._targets
        self.served += 1
        return targets[offset]

    def _compute(self, bar: int) -> bool:
        """Compute the targets of bars [bar, bar + chunk); False (and turned off) where batched outputs differ."""
        spec = self.policy.feature_spec
        if bar < spec.window - 1:
            return False  # no full window yet (`windows` would start later than `bar`)
        windows, ready = self.features.windows(bar, bar + self.chunk)
        if not len(ready) or not ready[0]:
            return False
        width = spec.window * spec.n_features
        batch = np.zeros((len(windows), spec.observation_size), dtype=np.float32)
        batch[:, :width] = windows.reshape(len(windows), width)  # the state columns stay 0: flat
        targets = self.policy.target_positions(batch)
        if not self._checked:
            self._checked = True
            if not self._agrees(batch, targets, ready):
                self.enabled = False
                self._targets = []
                return False
        self._start = bar
        self._targets = targets.tolist()
        return True

    def _agrees(
        self, batch: npt.NDArray[np.float32], targets: npt.NDArray[np.float64], ready: npt.NDArray[np.bool_]
    ) -> bool:
        """Whether one-row calls give the batch's targets, bit for bit, on its first `CHECK_ROWS` ready bars."""
        rows = np.flatnonzero(ready)[:CHECK_ROWS]
        single = np.array([self.policy.target_position(batch[i]) for i in rows], dtype=np.float64)
        if np.array_equal(single.view(np.uint64), targets[rows].view(np.uint64)):
            return True
        log.info(
            "flat_targets_off",
            reason="the policy's batched outputs differ from its one-row outputs; deciding bar by bar",
            path=str(self.policy.onnx_path),
        )
        return False
