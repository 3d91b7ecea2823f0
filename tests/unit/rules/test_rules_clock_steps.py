"""Steps of the platform's wall clock: absence and pending timers keep their length (``RuleEngine.shift_wall``)."""

from __future__ import annotations

import msgspec

from broker.clocksteps import WallClockSteps
from tests.unit.rules.rules_helpers import BASE, feed, make_engine, one_rule, summary, tel

FWD = 7200.0
BACK = -7800.0


def test_forward_step_raises_no_absence_for_a_device_heard_just_before() -> None:
    eng = make_engine(one_rule("{absence: 20s}"))
    assert feed(eng, tel("s1", 0, v=1)) == []
    # Without the shift, the first tick after +2 h sees the device silent for 2 h.
    unshifted = make_engine(one_rule("{absence: 20s}"))
    feed(unshifted, tel("s1", 0, v=1))
    assert summary(unshifted.tick(BASE + FWD + 1)) == [(FWD + 1, "firing", "r")]
    eng.shift_wall(FWD)
    assert eng.tick(BASE + FWD + 1) == []
    assert eng.tick(BASE + FWD + 19) == []
    # Still silent 20 s after it was last heard (in the stepped frame): absent, as without a step.
    assert summary(eng.tick(BASE + FWD + 20)) == [(20.0, "firing", "r")]


def test_backward_step_keeps_absence_watching() -> None:
    eng = make_engine(one_rule("{absence: 20s}"))
    feed(eng, tel("s1", 0, v=1))
    eng.shift_wall(BACK)
    # Before the fix, last-heard stayed 2 h 10 min ahead of the clock: nothing for the length of the step.
    assert eng.tick(BASE + BACK + 19) == []
    assert summary(eng.tick(BASE + BACK + 20)) == [(20.0, "firing", "r")]


def test_a_message_stamped_before_a_backward_step_does_not_pull_last_heard_ahead() -> None:
    eng = make_engine(one_rule("{absence: 20s}"))
    feed(eng, tel("s1", 0, v=1))
    eng.shift_wall(BACK)
    late_stamped = msgspec.structs.replace(tel("s1", 1, v=1), received_at=BASE + 1)  # received in the old frame, handled after
    assert eng.process([late_stamped], BASE + BACK + 1) == []
    assert eng.devices["s1"].last_rx == BASE + BACK + 1
    assert summary(eng.tick(BASE + BACK + 21)) == [(21.0, "firing", "r")]


def test_absence_of_one_metric_is_shifted_too() -> None:
    eng = make_engine(one_rule("{absence: {after: 30s, metric: temp}}"))
    feed(eng, tel("s1", 0, temp=20.0))
    eng.shift_wall(FWD)
    assert eng.tick(BASE + FWD + 29) == []
    assert [s for _, s, _ in summary(eng.tick(BASE + FWD + 30))] == ["firing"]


def test_pending_for_timer_keeps_its_length_across_steps() -> None:
    for delta in (FWD, BACK):
        eng = make_engine(one_rule('"v > 5"', "    for: 60s"))
        assert feed(eng, tel("s1", 0, v=9)) == []
        eng.shift_wall(delta)
        # The tick estimates device time from the wall time since last heard: 59 s, not 2 h (or -2 h).
        assert eng.tick(BASE + delta + 59) == [], delta
        assert summary(eng.tick(BASE + delta + 60)) == [(60.0, "firing", "r")], delta


def test_never_heard_registered_devices_count_from_the_shifted_start() -> None:
    eng = make_engine(one_rule("{absence: 20s}"))
    eng.tick(BASE)
    assert eng.watch_start == BASE
    eng.shift_wall(FWD)
    assert eng.watch_start == BASE + FWD


class Clocks:
    """A wall clock that can step and a monotonic clock that cannot."""

    def __init__(self) -> None:
        self.wall = BASE
        self.mono = 100.0

    def advance(self, s: float) -> None:
        self.wall += s
        self.mono += s


def test_step_detector_reports_steps_not_slew_nor_time_passing() -> None:
    c = Clocks()
    steps = WallClockSteps(threshold_s=1.0, wall=lambda: c.wall, monotonic=lambda: c.mono)
    assert steps.check() == 0.0  # the first reading sets the base
    c.advance(3600)
    assert steps.check() == 0.0
    for _ in range(10):  # an NTP slew: 0.5 s of drift per reading, never a step
        c.wall += 0.5
        assert steps.check() == 0.0
    c.wall += FWD
    assert steps.check() == FWD
    assert steps.check() == 0.0  # reported once
    c.wall += BACK
    assert steps.check() == BACK
    assert steps.steps == 2 and steps.offset_s == FWD + BACK and steps.last_step_s == BACK


def test_frame_shift_applies_the_offset_only_to_data_that_looks_stepped() -> None:
    c = Clocks()
    steps = WallClockSteps(wall=lambda: c.wall, monotonic=lambda: c.mono)
    steps.check()
    assert steps.frame_shift(7200.0) == 0.0  # no step seen: a 2 h old message is a backlog
    c.wall += FWD
    steps.check()
    assert steps.frame_shift(FWD + 0.2) == FWD  # live data after the step
    assert steps.frame_shift(0.3) == 0.0  # data in step with the new clock: the step corrected it


def test_a_step_between_pieces_of_a_sliced_tick_is_followed() -> None:
    eng = make_engine(one_rule("{absence: 20s}"))
    for i in range(6):
        feed(eng, tel(f"s{i}", 0, v=1))
    pieces = eng.tick_slices(BASE + 5, every=2)
    got = summary(next(pieces))
    eng.shift_wall(BACK)  # handled between pieces (the service yields to the event loop there)
    for part in pieces:
        got += summary(part)
    assert got == []  # the rest of the tick runs at BASE + 5 + BACK, not 7,800 s after the devices were heard
