"""Line protocol conversion: escaping, stable field types, timestamps, determinism, parse round trip."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st

from broker.contracts import (
    Alert,
    AlertStatus,
    DeadLetter,
    DeviceEvent,
    DeviceStatus,
    Kind,
    RejectReason,
    Severity,
    Telemetry,
)
from storage.lineproto import (
    LineEncoder,
    LineSyntaxError,
    SkipReason,
    epoch_ms,
    escape_key,
    escape_measurement,
    parse_line,
    quote_string,
    tag_section,
)

TS = datetime(2026, 11, 26, 5, 49, 2, 123456, tzinfo=UTC)
TS_NS = "1795672142123000000"


@pytest.mark.parametrize(("raw", "escaped"), [
    ("plain", "plain"),
    ("with space", "with\\ space"),
    ("a,b", "a\\,b"),
    ("k=v", "k\\=v"),
    ("all , = ", "all\\ \\,\\ \\=\\ "),
    ("line\nbreak", "line\\ break"),
    ("tab\there", "tab\\ here"),
    ("电梯-3号", "电梯-3号"),
    ("ends\\", "ends/"),
    ("mid\\dle", "mid/dle"),
    ("a\\,b", "a/\\,b"),
])
def test_escape_key(raw: str, escaped: str) -> None:
    assert escape_key(raw) == escaped


@pytest.mark.parametrize(("raw", "escaped"), [
    ("telemetry_elevator", "telemetry_elevator"),
    ("a b", "a\\ b"),
    ("a,b", "a\\,b"),
    ("a=b", "a=b"),  # equals signs need no escape in measurement names
    ("a\\b", "a/b"),
])
def test_escape_measurement(raw: str, escaped: str) -> None:
    assert escape_measurement(raw) == escaped


@pytest.mark.parametrize(("raw", "quoted"), [
    ("open", '"open"'),
    ('say "hi"', '"say \\"hi\\""'),
    ("back\\slash", '"back\\\\slash"'),
    ("two\nlines", '"two\\nlines"'),
    ("", '""'),
    ("被困 乘客", '"被困 乘客"'),
])
def test_quote_string(raw: str, quoted: str) -> None:
    assert quote_string(raw) == quoted


def test_tag_section_sorts_and_omits_empty_values() -> None:
    assert tag_section("m", {"site": "s 1", "device": "d1", "kind": "", "zone": None}) == "m,device=d1,site=s\\ 1"


def test_epoch_ms_truncates_exactly() -> None:
    assert epoch_ms(TS) == 1795672142123
    assert epoch_ms(datetime(1970, 1, 1, 0, 0, 0, 999, tzinfo=UTC)) == 0


def tel(metrics: dict[str, float | int | bool | str], **kw: object) -> Telemetry:
    return Telemetry(ts=TS, metrics=metrics, **kw)  # type: ignore[arg-type]


@pytest.mark.parametrize(("metrics", "fields"), [
    ({"speed_mps": 1.5}, "speed_mps=1.5"),
    ({"speed_mps": 0}, "speed_mps=0.0"),              # an integer literal stays a float field
    ({"speed_mps": 2}, "speed_mps=2.0"),
    ({"floor": 3}, "floor=3i"),                       # catalogue integer metric
    ({"floor": 3.0}, "floor=3i"),                     # integral float for an int metric
    ({"occupancy": 0, "alarm_flags": 4096}, "occupancy=0i,alarm_flags=4096i"),
    ({"door_zone": True, "safety_circuit_ok": False}, "door_zone=true,safety_circuit_ok=false"),
    ({"door": "open"}, 'door="open"'),
    ({"a21026.ZsAvg": 12.25}, "a21026.ZsAvg=12.25"),
    ({"lat": 1e-05}, "lat=1e-05"),
    ({"mileage_km": 123456789012}, "mileage_km=123456789012.0"),
])
def test_telemetry_field_types(metrics: dict[str, float | int | bool | str], fields: str) -> None:
    line = LineEncoder().telemetry(Kind.ELEVATOR, "e1", "s1", tel(metrics))
    assert line == f"telemetry_elevator,device=e1,kind=elevator,site=s1 {fields} {TS_NS}"


@pytest.mark.parametrize(("metrics", "reason"), [
    ({"speed_mps": float("nan"), "x": 1.0}, SkipReason.NON_FINITE),
    ({"speed_mps": float("inf"), "x": 1.0}, SkipReason.NON_FINITE),
    ({"floor": 2.5, "x": 1.0}, SkipReason.NOT_INTEGRAL),
    ({"floor": 2**64, "x": 1.0}, SkipReason.INT_RANGE),
    ({"speed_mps": 10**400, "x": 1.0}, SkipReason.INT_RANGE),
])
def test_unstorable_values_are_skipped_and_counted(metrics: dict[str, float | int], reason: str) -> None:
    enc = LineEncoder()
    line = enc.telemetry(Kind.ELEVATOR, "e1", None, tel(metrics))
    assert line == f"telemetry_elevator,device=e1,kind=elevator x=1.0 {TS_NS}"
    assert enc.skipped == {reason: 1}


def test_telemetry_without_storable_field_gives_no_point() -> None:
    enc = LineEncoder()
    assert enc.telemetry(Kind.SENSOR, "x1", None, tel({"v": float("nan")})) is None
    assert enc.skipped[SkipReason.NO_FIELDS] == 1


def test_telemetry_quality_flags_and_seq() -> None:
    line = LineEncoder().telemetry(Kind.EMISSION, "stack-1", "plant", tel(
        {"a21026.Rtd": 30.5, "cn": 2011}, quality={"a21026": "N"}, seq=42))
    assert line == (f'telemetry_emission,device=stack-1,kind=emission,site=plant '
                    f'a21026.Rtd=30.5,cn=2011i,a21026.Flag="N",seq=42i {TS_NS}')


def test_long_strings_are_cut_and_counted() -> None:
    enc = LineEncoder()
    line = enc.telemetry(Kind.SENSOR, "x1", None, tel({"note": "a" * 20_000}))
    assert line is not None and len(line) < 17_000
    assert enc.skipped[SkipReason.TRUNCATED] == 1


def test_same_message_gives_the_same_line() -> None:
    msg = tel({"speed_mps": 1.0, "floor": 2, "door": "open"})
    a = LineEncoder().telemetry(Kind.ELEVATOR, "e1", "s1", msg)
    enc = LineEncoder()
    enc.telemetry(Kind.ELEVATOR, "e2", "s1", msg)
    assert enc.telemetry(Kind.ELEVATOR, "e1", "s1", msg) == a


def test_event_line() -> None:
    ev = DeviceEvent(ts=TS, type="trapped_passenger", state="start", event_id="ev-1", severity=Severity.CRITICAL,
                     measure=95.0, message='门 "3"', data={"floor": 3})
    line = LineEncoder().event(Kind.ELEVATOR, "e1", "tower-a", ev)
    assert line == ('events,device=e1,kind=elevator,severity=critical,site=tower-a,state=start,type=trapped_passenger '
                    'count=1i,event_id="ev-1",measure=95.0,message="门 \\"3\\"",data="{\\"floor\\":3}" '
                    f"{TS_NS}")


def test_status_line_uses_own_ts_or_receive_time() -> None:
    enc = LineEncoder()
    own = enc.status(Kind.CAMERA, "cam1", None, DeviceStatus(ts=TS, online=False, reason="lwt"), 5.0)
    assert own == f'status,device=cam1,kind=camera online=false,reason="lwt" {TS_NS}'
    recv = enc.status(Kind.CAMERA, "cam1", None, DeviceStatus(online=True), 1795672142.5)
    assert recv == "status,device=cam1,kind=camera online=true 1795672142500000000"
    assert enc.status(Kind.CAMERA, "cam1", None, DeviceStatus(online=True), 0.0) is None
    assert enc.skipped[SkipReason.NO_TIME] == 1


def test_alert_line() -> None:
    started = datetime(2026, 11, 26, 5, 48, 2, 123000, tzinfo=UTC)
    al = Alert(id="a-1", fingerprint="fp", rule="trapped", severity=Severity.CRITICAL,
               status=AlertStatus.ACKNOWLEDGED, kind=Kind.ELEVATOR, device_id="e1", site="tower-a",
               summary="困人", starts_at=started, updated_at=TS, acknowledged_by="duty-1", values={"floor": 3})
    line = LineEncoder().alert(al)
    assert line == ('alerts,device=e1,kind=elevator,rule=trapped,severity=critical,site=tower-a,status=acknowledged '
                    'id="a-1",fingerprint="fp",summary="困人",age_s=60.000456,starts_at="2026-11-26T05:48:02.123Z",'
                    f'acknowledged_by="duty-1",values="{{\\"floor\\":3}}" {TS_NS}')


def test_dead_letter_line_keeps_microseconds() -> None:
    dl = DeadLetter(ts=TS, stage="ingest", reason=RejectReason.SCHEMA, detail="bad", topic="vigil/v1/x", size=3,
                    payload="a\nb", payload_encoding="utf-8", truncated=False)
    line = LineEncoder().dead_letter(dl)
    assert line == ('dead_letters,reason=schema,stage=ingest topic="vigil/v1/x",detail="bad",size=3i,'
                    'payload="a\\nb",payload_encoding="utf-8",truncated=false 1795672142123456000')
    assert "\n" not in line


@pytest.mark.parametrize("line", [
    "",
    "m",
    "m,t field=1 1",
    "m f=1",
    'm f="open 1',
    "m f=abc 1",
    "m f=1 notatime",
])
def test_parse_rejects_malformed_lines(line: str) -> None:
    with pytest.raises(LineSyntaxError):
        parse_line(line)


def test_parse_reads_what_the_encoder_writes() -> None:
    line = LineEncoder().telemetry(Kind.ELEVATOR, "e1", "s 1,x", tel(
        {"speed_mps": 1.5, "floor": 3, "door": 'say "hi"', "door_zone": True}))
    assert line is not None
    p = parse_line(line)
    assert p.measurement == "telemetry_elevator"
    assert p.tags == {"device": "e1", "kind": "elevator", "site": "s 1,x"}
    assert p.fields == {"speed_mps": 1.5, "floor": 3, "door": 'say "hi"', "door_zone": True}
    assert isinstance(p.fields["floor"], int) and not isinstance(p.fields["floor"], bool)
    assert p.ts == int(TS_NS)


texts = st.text(st.characters(blacklist_categories=("Cs",)), max_size=40)


@given(site=texts, value=texts)
def test_escaping_round_trips(site: str, value: str) -> None:
    line = LineEncoder().telemetry(Kind.SENSOR, "d1", site, tel({"note": value, "v": 1.0}))
    assert line is not None
    assert "\n" not in line
    p = parse_line(line)
    expected_site = escape_key(site).replace("\\,", ",").replace("\\=", "=").replace("\\ ", " ")
    assert p.tags.get("site", "") == expected_site
    # Line breaks are stored spelled out (as InfluxDB would read them back); everything else exactly.
    assert p.fields["note"] == value.replace("\n", "\\n").replace("\r", "\\r")
