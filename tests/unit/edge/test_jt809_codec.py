"""JT/T 809 framing, CRC, cipher and message bodies: worked examples and round trips."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from edge.jt809.codec import (
    HEADER_LENGTH,
    Jt809DecodeError,
    Jt809Keys,
    Jt809StreamSplitter,
    RejectionReason,
    StreamNoise,
    crc16,
    crypt,
    decode_frame,
    encode_frame,
    escape,
    unescape,
)
from edge.jt809.geo import gcj02_to_wgs84, wgs84_to_gcj02
from edge.jt809.messages import (
    CHINA,
    DataType,
    GnssData,
    LoginRequest,
    LoginResult,
    MsgId,
    VehicleRegistration,
    WarnInfo,
    build_envelope,
    build_gnss,
    build_history,
    build_login,
    build_login_reply,
    build_logout,
    build_vehicle_registration,
    build_verify_code,
    build_warn,
    build_warn_todo,
    parse_envelope,
    parse_gnss,
    parse_history,
    parse_login,
    parse_login_reply,
    parse_logout,
    parse_vehicle_registration,
    parse_verify_code,
    parse_warn,
    parse_warn_todo,
)

# A 0x1001 login produced by another JT/T 809 implementation (access code 20180920, serial 133,
# ENCRYPT_KEY 9999 with ENCRYPT_FLAG 0): checks header layout, MSG_LENGTH and the CRC variant.
FOREIGN_LOGIN = bytes.fromhex(
    "5B000000480000008510010133EFB8010000000000270F0133EFB832303138303932303132372E302E302E31"
    "000000000000000000000000000000000000000000000003296A915D")
KEYS = Jt809Keys(10_000_000, 20_000_000, 30_000_000)


def test_crc_is_ccitt_false() -> None:
    # CRC-16/CCITT-FALSE catalogue check value; X.25 (reflected, xorout) would give 0x906E.
    assert crc16(b"123456789") == 0x29B1
    assert crc16(b"") == 0xFFFF
    # Worked by hand: one zero byte from 0xFFFF: 0xFFFF ^ 0x0000<<8, eight shifts with poly 0x1021.
    crc = 0xFFFF
    for _ in range(8):
        crc = ((crc << 1) ^ 0x1021) & 0xFFFF if crc & 0x8000 else (crc << 1) & 0xFFFF
    assert crc16(b"\x00") == crc == 0xE1F0


def _bitwise_crc(data: bytes) -> int:
    crc = 0xFFFF
    for byte in data:
        crc ^= byte << 8
        for _ in range(8):
            crc = ((crc << 1) ^ 0x1021) & 0xFFFF if crc & 0x8000 else (crc << 1) & 0xFFFF
    return crc


@pytest.mark.parametrize("data", [b"\x5b", bytes(range(256)), b"JT/T 809" * 50, FOREIGN_LOGIN[1:-3]])
def test_crc_matches_a_bitwise_computation(data: bytes) -> None:
    assert crc16(data) == _bitwise_crc(data)


def test_foreign_frame_decodes_and_reencodes_byte_for_byte() -> None:
    frame = decode_frame(FOREIGN_LOGIN[1:-1])
    h = frame.header
    assert (h.length, h.serial, h.msg_id, h.access_code, h.version, h.encrypted, h.key) == (
        72, 133, MsgId.UP_CONNECT_REQ, 20180920, (1, 0, 0), False, 9999)
    login = parse_login(frame.body)
    assert login == LoginRequest(20180920, "20180920", "127.0.0.1", 809)
    assert encode_frame(MsgId.UP_CONNECT_REQ, 133, 20180920, build_login(login), key=9999) == FOREIGN_LOGIN


@pytest.mark.parametrize(("raw", "escaped"), [
    (b"\x5b", b"\x5a\x01"), (b"\x5a", b"\x5a\x02"), (b"\x5d", b"\x5e\x01"), (b"\x5e", b"\x5e\x02"),
    (b"\x01\x5b\x5d\x5a\x5e\x02", b"\x01\x5a\x01\x5e\x01\x5a\x02\x5e\x02\x02"), (b"abc", b"abc"),
])
def test_escaping_both_ways(raw: bytes, escaped: bytes) -> None:
    assert escape(raw) == escaped
    assert unescape(escaped) == raw


@pytest.mark.parametrize("bad", [b"\x5a", b"\x5a\x03", b"\x5e\x00", b"ab\x5e"])
def test_bad_escapes_are_refused(bad: bytes) -> None:
    with pytest.raises(Jt809DecodeError) as err:
        unescape(bad)
    assert err.value.reason is RejectionReason.BAD_ESCAPE


def test_frame_with_every_special_byte_round_trips() -> None:
    body = bytes(range(256)) * 2
    wire = encode_frame(0x1200, 0x5B5D5A5E, 0x5A5B5D5E, body)
    assert wire[0] == 0x5B and wire[-1] == 0x5D and b"\x5b" not in wire[1:-1] and b"\x5d" not in wire[1:-1]
    frame = decode_frame(wire[1:-1])
    assert frame.body == body and frame.header.serial == 0x5B5D5A5E and frame.header.access_code == 0x5A5B5D5E
    assert frame.header.length == len(body) + 26


def test_cipher_key_stream_by_hand_and_round_trip() -> None:
    keys = Jt809Keys(m1=7, ia1=3, ic1=1 << 20)
    # key 5: k1 = 3 * (5 % 7) + 2^20 -> stream byte (k1 >> 20) & 0xFF = 1; k2 = 3 * (k1 % 7) + 2^20 ...
    k1 = 3 * 5 + (1 << 20)
    k2 = 3 * (k1 % 7) + (1 << 20)
    assert crypt(b"\x00\x00", 5, keys) == bytes(((k1 >> 20) & 0xFF, (k2 >> 20) & 0xFF))
    data = bytes(range(200))
    assert crypt(crypt(data, 123456, KEYS), 123456, KEYS) == data
    assert crypt(data, 123456, KEYS) != data
    # 32-bit wrap-around and the zero key / zero M1 rules.
    assert crypt(data, 0, KEYS) == crypt(data, 1, KEYS)
    assert crypt(data, 9, Jt809Keys(0, 5, 7)) == crypt(data, 9, Jt809Keys(1, 5, 7))
    big = Jt809Keys(0xFFFFFFFF, 0xFFFFFFFF, 0xFFFFFFFF)
    assert crypt(crypt(data, 0xFFFFFFFF, big), 0xFFFFFFFF, big) == data


def test_encrypted_frame_round_trip() -> None:
    body = build_login(LoginRequest(1, "secret", "10.0.0.1", 9000))
    wire = encode_frame(MsgId.UP_CONNECT_REQ, 1, 42, body, keys=KEYS, key=777)
    frame = decode_frame(wire[1:-1])
    assert frame.header.encrypted and frame.header.key == 777 and frame.body != body
    assert crypt(frame.body, 777, KEYS) == body


def test_frame_refusals() -> None:
    good = encode_frame(MsgId.UP_LINKTEST_REQ, 1, 42, b"")[1:-1]
    with pytest.raises(Jt809DecodeError) as err:
        decode_frame(good[:10])
    assert err.value.reason is RejectionReason.TOO_SHORT
    corrupt = bytearray(unescape(good))
    corrupt[10] ^= 0x01
    with pytest.raises(Jt809DecodeError) as err:
        decode_frame(escape(bytes(corrupt)))
    assert err.value.reason is RejectionReason.BAD_CHECKSUM and err.value.header is not None
    huge = bytearray(unescape(good))
    huge[0:4] = (0x7FFFFFFF).to_bytes(4, "big")
    with pytest.raises(Jt809DecodeError) as err:
        decode_frame(escape(bytes(huge)))
    assert err.value.reason is RejectionReason.LENGTH_MISMATCH
    big = encode_frame(0x1200, 1, 42, bytes(5000))[1:-1]
    with pytest.raises(Jt809DecodeError) as err:
        decode_frame(big, max_frame=1024)
    assert err.value.reason is RejectionReason.FRAME_TOO_LONG


def test_splitter_at_every_read_size() -> None:
    frames = [encode_frame(0x1200, i, 42, bytes([0x5B, 0x5D, i]) * 10) for i in range(5)]
    stream = b"junk" + b"".join(frames) + b"\x5d\x5d"
    for size in range(1, 40):
        splitter = Jt809StreamSplitter()
        got: list[bytes | StreamNoise] = []
        for i in range(0, len(stream), size):
            got.extend(splitter.feed(stream[i:i + size]))
        contents = [g for g in got if isinstance(g, bytes)]
        assert [decode_frame(c).header.serial for c in contents] == list(range(5)), size
        noise = [g for g in got if isinstance(g, StreamNoise)]
        assert sum(n.size for n in noise) == 6 and all(n.reason is RejectionReason.GARBAGE for n in noise)
        assert splitter.buffered == 0


def test_splitter_is_bounded_and_resynchronises() -> None:
    splitter = Jt809StreamSplitter(max_frame=100)
    out = splitter.feed(b"\x5b" + b"a" * 150)
    assert splitter.buffered <= 200 and not out
    out = splitter.feed(b"a" * 100)
    assert [n.reason for n in out if isinstance(n, StreamNoise)] == [RejectionReason.FRAME_TOO_LONG]
    assert splitter.buffered == 0
    good = encode_frame(MsgId.UP_LINKTEST_REQ, 9, 1, b"")
    out = splitter.feed(b"a" * 10_000 + b"\x5d" + good)
    contents = [o for o in out if isinstance(o, bytes)]
    assert len(contents) == 1 and decode_frame(contents[0]).header.serial == 9
    # A new head flag inside an unfinished frame: the unfinished one is garbage, the new one counts.
    out = Jt809StreamSplitter().feed(b"\x5bpartial" + good)
    assert [type(o) for o in out] == [StreamNoise, bytes]


# ---------------------------------------------------------------------------- bodies

WHEN = datetime(2026, 12, 3, 8, 30, 15, tzinfo=CHINA)


def test_gnss_by_hand() -> None:
    raw = bytes.fromhex("00" "13" "07" "07DC" "0F0F0F" "07EF4D80" "01701840" "0032" "0033" "00000096" "002D"
                        "002D" "00000003" "00000101")
    g = parse_gnss(raw)
    assert g.time == datetime(2012, 7, 19, 7, 15, 15, tzinfo=UTC)  # 15:15:15 UTC+8
    assert (g.lon_e6, g.lat_e6, g.speed_kmh, g.recorder_speed_kmh, g.mileage_km) == (133123456, 24123456, 50, 51, 150)
    assert (g.heading_deg, g.altitude_m, g.state, g.alarm, g.coordinates_encrypted) == (45, 45, 3, 257, False)
    assert build_gnss(g) == raw


def test_gnss_refusals() -> None:
    g = GnssData(False, WHEN, 120_000_000, 30_000_000, 60, 60, 1000, 90, 10, 3, 0)
    raw = bytearray(build_gnss(g))
    with pytest.raises(Jt809DecodeError) as err:
        parse_gnss(bytes(raw[:-1]))
    assert err.value.reason is RejectionReason.BAD_BODY
    bad_day = bytearray(raw)
    bad_day[1] = 31
    bad_day[2] = 2
    with pytest.raises(Jt809DecodeError) as err:
        parse_gnss(bytes(bad_day))
    assert err.value.reason is RejectionReason.BAD_TIME
    bad_lon = bytearray(raw)
    bad_lon[8:12] = (200_000_000).to_bytes(4, "big")
    with pytest.raises(Jt809DecodeError) as err:
        parse_gnss(bytes(bad_lon))
    assert err.value.reason is RejectionReason.BAD_POSITION


def test_history_and_envelope_round_trip() -> None:
    items = [GnssData(False, WHEN.replace(second=s), 120_000_000 + s, 30_000_000, 60, 60, 1000, 90, 10, 3, 0)
             for s in range(5)]
    body = build_envelope("浙A12345", 2, DataType.UP_EXG_MSG_HISTORY_LOCATION, build_history(items))
    env = parse_envelope(body)
    assert (env.plate, env.colour, env.data_type) == ("浙A12345", 2, DataType.UP_EXG_MSG_HISTORY_LOCATION)
    assert parse_history(env.data) == [parse_gnss(build_gnss(i)) for i in items]
    with pytest.raises(ValueError):
        build_history(items + items[:1])
    for bad in (b"", b"\x00", b"\x06" + bytes(6 * 36), b"\x02" + bytes(36)):
        with pytest.raises(Jt809DecodeError):
            parse_history(bad)
    with pytest.raises(Jt809DecodeError) as err:
        parse_envelope(body[:-1])
    assert err.value.reason is RejectionReason.BAD_BODY


def test_link_messages_round_trip() -> None:
    req = LoginRequest(7, "pw", "192.168.1.9", 9809)
    assert parse_login(build_login(req)) == req
    assert parse_login_reply(build_login_reply(LoginResult.BAD_PASSWORD, 0xDEADBEEF)) == (4, 0xDEADBEEF)
    assert parse_logout(build_logout(7, "pw")) == (7, "pw")
    assert parse_verify_code(build_verify_code(0x01020304)) == 0x01020304
    for parser in (parse_login, parse_login_reply, parse_logout, parse_verify_code):
        with pytest.raises(Jt809DecodeError):
            parser(b"\x00")


def test_vehicle_registration_both_model_widths() -> None:
    r = VehicleRegistration("P0000000001", "M0001", "SIM-809-MODEL", "T000001", "013800138000")
    data = build_vehicle_registration(r)
    assert len(data) == 61 and parse_vehicle_registration(data) == r
    short = data[:22] + b"MODEL8\x00\x00" + data[42:]
    assert len(short) == 49 and parse_vehicle_registration(short).terminal_model == "MODEL8"
    with pytest.raises(Jt809DecodeError):
        parse_vehicle_registration(data[:50])


def test_warn_messages() -> None:
    w = WarnInfo(1, 0x0003, datetime(2026, 12, 3, 0, 0, tzinfo=UTC), 77, "紧急按钮")
    assert parse_warn(build_warn(w)) == w
    # WARN_TIME is UTC seconds: 2018-09-26 00:00 UTC+8 is 0x5BAA5B80.
    raw = bytes.fromhex("01" "0012" "000000005BAA5B80" "00000D10" "0000000A") + b"gfdf454553"
    parsed = parse_warn(raw)
    assert parsed.time == datetime(2018, 9, 25, 16, 0, tzinfo=UTC) and parsed.info_id == 3344
    assert parsed.content == "gfdf454553" and parsed.warn_type == 18
    with pytest.raises(Jt809DecodeError):
        parse_warn(raw[:-1])
    with pytest.raises(Jt809DecodeError) as err:
        parse_warn(raw[:3] + (2**63).to_bytes(8, "big") + raw[11:])
    assert err.value.reason is RejectionReason.BAD_TIME
    assert parse_warn_todo(build_warn_todo(77, 1)) == (77, 1)


def test_gcj02_inverse() -> None:
    for lat, lon in ((30.2741, 120.1551), (39.9087, 116.3975), (22.5431, 114.0579)):
        glat, glon = wgs84_to_gcj02(lat, lon)
        assert abs(glat - lat) + abs(glon - lon) > 1e-3  # the offset is hundreds of metres
        back = gcj02_to_wgs84(glat, glon)
        assert abs(back[0] - lat) < 2e-6 and abs(back[1] - lon) < 2e-6
    assert gcj02_to_wgs84(48.85, 2.35) == (48.85, 2.35)  # outside China: unchanged


def test_header_length_constant() -> None:
    assert HEADER_LENGTH == 22
