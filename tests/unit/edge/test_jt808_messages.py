"""JT/T 808 message bodies: location, batch, register, authenticate and replies."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from edge.jt808.codec import Jt808DecodeError, ProtocolVersion, RejectionReason
from edge.jt808.messages import (
    AuthRequest,
    BatchKind,
    LocationReport,
    RegisterRequest,
    RegisterResult,
    ReplyResult,
    build_auth,
    build_batch_location,
    build_bcd_time,
    build_general_reply,
    build_location,
    build_register,
    build_register_reply,
    dword,
    parse_auth,
    parse_batch_location,
    parse_bcd_time,
    parse_general_reply,
    parse_location,
    parse_register,
    parse_register_reply,
    word,
)

T0 = datetime(2026, 11, 26, 1, 30, 0, tzinfo=UTC)


def report(**kw: object) -> LocationReport:
    base: dict[str, object] = dict(alarm_flags=0, status_flags=0b11, latitude=30.274085, longitude=120.15507,
                                   altitude_m=15, speed_kmh=62.4, heading_deg=271, time=T0, extras={})
    base.update(kw)
    return LocationReport(**base)  # type: ignore[arg-type]


def reason(fn: object, *args: object) -> RejectionReason:
    with pytest.raises(Jt808DecodeError) as info:
        fn(*args)  # type: ignore[operator]
    return info.value.reason


def test_location_body_by_hand() -> None:
    body = bytes.fromhex(
        "00000002"  # alarm: overspeed
        "00000003"  # status: ACC on, fixed
        "01cdeff5"  # lat 30.273525
        "0729a7b2"  # lon 120.170418
        "0032"      # 50 m
        "0370"      # 88.0 km/h
        "005a"      # 90 degrees
        "261126093000"  # 2026-11-26 09:30:00 UTC+8
        "0104000030390202012c"  # mileage 1234.5 km, fuel 30.0 l
    )
    r = parse_location(body)
    assert (r.alarm_flags, r.status_flags, r.altitude_m, r.speed_kmh, r.heading_deg) == (2, 3, 50, 88.0, 90)
    assert r.latitude == pytest.approx(30.273525) and r.longitude == pytest.approx(120.170418)
    assert r.time == T0.replace(hour=1, minute=30)
    assert r.ignition and r.gnss_fixed
    assert r.extra_metrics() == {"mileage_km": 1234.5, "fuel_l": 30.0}


def test_south_and_west_bits_make_coordinates_negative() -> None:
    r = parse_location(build_location(report(latitude=-33.8688, longitude=-70.6693)))
    assert r.status_flags & 0b1100 == 0b1100
    assert r.latitude == pytest.approx(-33.8688) and r.longitude == pytest.approx(-70.6693)


def test_location_round_trip_with_extras() -> None:
    original = report(alarm_flags=(1 << 2) | (1 << 31), extras={0x01: dword(98765), 0x30: b"\x17", 0x31: b"\x0c",
                                                               0xE1: b"vendor"})
    parsed = parse_location(build_location(original))
    assert parsed == original
    assert parsed.extra_metrics() == {"mileage_km": 9876.5, "signal_strength": 23, "gnss_satellites": 12}


def test_extras_with_unexpected_length_are_tolerated_but_not_published() -> None:
    r = parse_location(build_location(report(extras={0x01: b"\x01\x02", 0x02: word(123)})))
    assert r.extra_metrics() == {"fuel_l": 12.3}


def test_heading_is_normalised() -> None:
    assert parse_location(build_location(report(heading_deg=360))).heading_deg == 0


@pytest.mark.parametrize(("body", "why"), [
    (b"", RejectionReason.BAD_BODY),
    (bytes(27), RejectionReason.BAD_BODY),
    (build_location(report())[:-6] + bytes.fromhex("261399000000"), RejectionReason.BAD_TIME),  # month 13
    (build_location(report())[:-6] + bytes.fromhex("2a1126093000"), RejectionReason.BAD_TIME),  # not BCD
    (build_location(report())[:-6] + bytes(6), RejectionReason.BAD_TIME),  # all zeros
    (build_location(report()) + b"\x01", RejectionReason.BAD_TLV),
    (build_location(report()) + b"\x01\x04\x00", RejectionReason.BAD_TLV),
    (bytes(8) + dword(90_000_001) + bytes(16), RejectionReason.BAD_POSITION),
    (bytes(12) + dword(180_000_001) + bytes(12), RejectionReason.BAD_POSITION),
])
def test_location_refusals(body: bytes, why: RejectionReason) -> None:
    assert reason(parse_location, body) is why


def test_bcd_time_is_utc_plus_8() -> None:
    assert parse_bcd_time(bytes.fromhex("261126000500")) == datetime(2026, 11, 25, 16, 5, tzinfo=UTC)
    assert build_bcd_time(datetime(2026, 11, 25, 16, 5, tzinfo=UTC)) == bytes.fromhex("261126000500")


def test_batch_round_trip_and_kind() -> None:
    reports = [report(time=T0.replace(minute=m), speed_kmh=float(m)) for m in range(5)]
    batch = parse_batch_location(build_batch_location(reports, BatchKind.BLIND_AREA))
    assert batch.kind is BatchKind.BLIND_AREA and list(batch.reports) == reports


@pytest.mark.parametrize("mutate", [
    lambda b: b[:2],  # no type byte
    lambda b: word(3) + b[2:],  # says 3, holds 2
    lambda b: b + b"\x00",  # trailing byte
    lambda b: b[:-1],  # last item cut
    lambda b: b[:3] + word(500) + b[5:],  # item length overruns
])
def test_batch_refusals(mutate: object) -> None:
    body = build_batch_location([report(), report()])
    assert reason(parse_batch_location, mutate(body)) is RejectionReason.BAD_BODY  # type: ignore[operator]


def test_batch_with_bad_item_is_refused_for_the_item_reason() -> None:
    bad = build_location(report())[:-6] + bytes(6)
    body = word(1) + b"\x00" + word(len(bad)) + bad
    assert reason(parse_batch_location, body) is RejectionReason.BAD_TIME


@pytest.mark.parametrize("version", list(ProtocolVersion))
def test_register_round_trip(version: ProtocolVersion) -> None:
    req = RegisterRequest(33, 100, "VIGIL", "VG-808", "T000001", 2, "浙A·12345")
    assert parse_register(build_register(req, version), version) == req


def test_register_fixed_fields_are_truncated_and_short_bodies_refused() -> None:
    req = RegisterRequest(33, 100, "TOO-LONG-MAKER", "m", "t", 1, "")
    assert parse_register(build_register(req, ProtocolVersion.V2013), ProtocolVersion.V2013).manufacturer == "TOO-L"
    assert reason(parse_register, bytes(36), ProtocolVersion.V2013) is RejectionReason.BAD_BODY
    assert reason(parse_register, bytes(75), ProtocolVersion.V2019) is RejectionReason.BAD_BODY


@pytest.mark.parametrize("version", list(ProtocolVersion))
def test_auth_round_trip(version: ProtocolVersion) -> None:
    req = AuthRequest("af8579fcbb489aca", "860000000000001", "1.2.3") if version is ProtocolVersion.V2019 \
        else AuthRequest("af8579fcbb489aca")
    assert parse_auth(build_auth(req, version), version) == req


def test_auth_refusals() -> None:
    assert reason(parse_auth, b"", ProtocolVersion.V2013) is RejectionReason.BAD_BODY
    assert reason(parse_auth, b"", ProtocolVersion.V2019) is RejectionReason.BAD_BODY
    assert reason(parse_auth, b"\x05abcde" + bytes(20), ProtocolVersion.V2019) is RejectionReason.BAD_BODY


def test_replies() -> None:
    assert build_general_reply(0x1234, 0x0200, ReplyResult.OK) == bytes.fromhex("1234020000")
    assert parse_general_reply(bytes.fromhex("1234020004")).result == ReplyResult.ALARM_CONFIRMED
    assert parse_register_reply(build_register_reply(7, RegisterResult.OK, "code1")).auth_code == "code1"
    refused = build_register_reply(7, RegisterResult.TERMINAL_NOT_IN_DATABASE, "ignored")
    assert refused == bytes.fromhex("000704")
    assert reason(parse_general_reply, b"\x00") is RejectionReason.BAD_BODY
    assert reason(parse_register_reply, b"\x00") is RejectionReason.BAD_BODY
