"""Steps of the platform's own wall clock (an NTP step, ``date -s``, a resumed VM), seen against the monotonic clock.

Stages that measure intervals on wall time (absence, deadlines, group timers) call ``check`` where they read
the wall clock and shift their interval anchors by the step it returns, so an interval keeps its length
across the step. Real-world instants (a silence until 18:00, a shift roster) are not shifted.
"""

from __future__ import annotations

import time
from collections.abc import Callable


class WallClockSteps:
    """Reports each step of the wall clock against the monotonic clock larger than ``threshold_s``."""

    def __init__(self, threshold_s: float = 1.0, wall: Callable[[], float] = time.time,
                 monotonic: Callable[[], float] = time.monotonic) -> None:
        self.threshold_s = threshold_s
        self.wall = wall
        self.monotonic = monotonic
        self.steps = 0
        """Steps seen."""
        self.offset_s = 0.0
        """Sum of the steps seen: how far the wall clock moved against the monotonic clock since the first check."""
        self.last_step_s = 0.0
        self._base: float | None = None

    def check(self) -> float:
        """The step (signed seconds) since the previous call, or 0.0 when the clock ran smoothly."""
        base = self.wall() - self.monotonic()
        prev, self._base = self._base, base
        # The base follows a slewing clock (NTP slews at most 0.5 ms/s): only a jump between two calls counts.
        if prev is None or abs(base - prev) <= self.threshold_s:
            return 0.0
        delta = base - prev
        self.steps += 1
        self.offset_s += delta
        self.last_step_s = delta
        return delta

    def frame_shift(self, age_s: float) -> float:
        """The step offset to add to a device-time anchor whose age on the wall clock is ``age_s``, or 0.0.

        Device timestamps do not step with the platform's clock. A live message seen after a step looks
        ``offset_s`` old (or young); then its anchors belong in the stepped frame. A message whose age is
        nearer 0 than the offset (the step corrected a platform clock that was wrong before) keeps its time.
        """
        off = self.offset_s
        return off if off and abs(age_s - off) < abs(age_s) else 0.0
