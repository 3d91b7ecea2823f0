"""Live device state: last values, last seen, online, series ring and vehicle tracks."""

from __future__ import annotations

from datetime import UTC, datetime

from broker.contracts import Channel, DeviceEvent, DeviceMessage, DeviceStatus, Kind, Telemetry
from console.live import LiveDevices

T0 = 1_790_000_000.0


def tel(device: str, ts: float, metrics: dict[str, object], kind: Kind = Kind.ELEVATOR,
        received: float | None = None) -> DeviceMessage:
    msg = Telemetry(ts=datetime.fromtimestamp(ts, UTC), metrics=metrics)  # type: ignore[arg-type]
    return DeviceMessage(kind, device, Channel.TELEMETRY, msg, received if received is not None else ts + 0.1)


def status(device: str, ts: float, online: bool, reason: str | None = None) -> DeviceMessage:
    return DeviceMessage(Kind.ELEVATOR, device, Channel.STATUS,
                         DeviceStatus(ts=datetime.fromtimestamp(ts, UTC), online=online, reason=reason), ts)


def test_values_merge_and_last_seen() -> None:
    live = LiveDevices()
    live.apply([tel("e1", T0, {"speed_mps": 1.2, "door": "closed"}), tel("e1", T0 + 1, {"floor": 3})])
    dev = live.devices["e1"]
    assert dev.values == {"speed_mps": 1.2, "door": "closed", "floor": 3}
    assert dev.last_seen == T0 + 1.1
    assert live.take_changed() == {"e1"} and live.take_changed() == set()


def test_late_message_does_not_overwrite_newer_values_but_joins_the_series_in_order() -> None:
    live = LiveDevices()
    live.apply([tel("e1", T0 + 10, {"speed_mps": 2.0}), tel("e1", T0 + 5, {"speed_mps": 1.0})])
    assert live.devices["e1"].values["speed_mps"] == 2.0
    assert [t for t, _ in live.series("e1")] == [T0 + 5, T0 + 10]


def test_series_keeps_numbers_only_and_is_bounded() -> None:
    live = LiveDevices(chart_points=10)
    live.apply([tel("e1", T0 + i, {"speed_mps": float(i), "door": "open", "door_zone": True, "bad": float("nan")})
                for i in range(25)])
    pts = live.series("e1")
    assert len(pts) == 10 and pts[0][0] == T0 + 15
    assert pts[-1][1] == {"speed_mps": 24.0}
    assert [t for t, _ in live.series("e1", since=T0 + 20, until=T0 + 22)] == [T0 + 20, T0 + 21, T0 + 22]
    assert live.series("nobody") == []


def test_vehicle_track_skips_unfixed_and_invalid_positions() -> None:
    live = LiveDevices(track_points=3)
    live.apply([
        tel("v1", T0, {"lat": 30.1, "lon": 120.1}, Kind.VEHICLE),
        tel("v1", T0 + 1, {"lat": 30.2, "lon": 120.2, "gnss_fixed": False}, Kind.VEHICLE),
        tel("v1", T0 + 2, {"lat": 95.0, "lon": 120.2}, Kind.VEHICLE),
        tel("v1", T0 + 3, {"lat": True, "lon": 120.2}, Kind.VEHICLE),
        tel("v1", T0 + 4, {"lat": 30.3, "lon": 120.3}, Kind.VEHICLE),
    ])
    assert live.track("v1") == [(T0, 120.1, 30.1), (T0 + 4, 120.3, 30.3)]
    assert live.devices["v1"].position() == (120.3, 30.3)
    assert live.track("v1", since=T0 + 1) == [(T0 + 4, 120.3, 30.3)]


def test_online_from_status_and_recent_data() -> None:
    live = LiveDevices()
    live.apply([tel("e1", T0, {"speed_mps": 0.0})])
    dev = live.devices["e1"]
    assert dev.online(T0 + 10, 300) and not dev.online(T0 + 400, 300)
    live.apply([status("e1", T0 + 20, False, "lwt")])
    assert not dev.online(T0 + 21, 300) and dev.status_reason == "lwt"
    live.apply([tel("e1", T0 + 30, {"speed_mps": 0.0})])  # data after the offline status: back
    assert dev.online(T0 + 31, 300)
    live.apply([status("e2", T0, True)])
    assert live.devices["e2"].online(T0 + 10_000, 300)  # a retained "online" with no data yet


def test_events_are_kept_and_device_cap_counts_drops() -> None:
    live = LiveDevices(max_devices=1)
    ev = DeviceEvent(ts=datetime.fromtimestamp(T0, UTC), type="trapped_passenger", state="start")
    live.apply([DeviceMessage(Kind.ELEVATOR, "e1", Channel.EVENT, ev, T0), tel("e2", T0, {"x": 1.0})])
    assert live.devices["e1"].last_event["type"] == "trapped_passenger"  # type: ignore[index]
    assert "e2" not in live.devices and live.dropped == 1
