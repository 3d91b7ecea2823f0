"""The platform process shortens the GIL switch interval so a woken sender thread is not held for 5 ms."""

from __future__ import annotations

import sys

from vigil.runtime import GIL_SWITCH_INTERVAL_S, shorten_gil_switch_interval


def test_the_switch_interval_is_set_and_shorter_than_pythons_default() -> None:
    before = sys.getswitchinterval()
    try:
        shorten_gil_switch_interval()
        assert abs(sys.getswitchinterval() - GIL_SWITCH_INTERVAL_S) < 1e-9
        assert GIL_SWITCH_INTERVAL_S < 0.005
        shorten_gil_switch_interval(0.002)
        assert abs(sys.getswitchinterval() - 0.002) < 1e-9
    finally:
        sys.setswitchinterval(before)
