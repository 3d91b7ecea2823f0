"""HJ 212 logger simulator model: deterministic, valid frames, the injected faults visible."""

from __future__ import annotations

from pathlib import Path

import pytest

from edge.hj212.codec import Hj212Frame, Hj212FrameReader, Hj212Packet, parse_packet
from edge.hj212.gateway import packet_to_telemetry
from edge.hj212.reassembly import SplitPacketAssembler
from simulators.hj212_logger import LoggerModel, Scenario, load_scenario

SCENARIOS = Path(__file__).resolve().parents[3] / "simulators" / "scenarios"


@pytest.fixture(scope="module")
def faults() -> Scenario:
    return load_scenario(SCENARIOS / "hj212_faults.yaml")


def packets(scenario: Scenario, index: int) -> list[tuple[float, Hj212Packet]]:
    """Decode a logger's frames as the gateway would (split packets reassembled)."""
    reader, assembler, out = Hj212FrameReader(), SplitPacketAssembler(), []
    for timed in LoggerModel(scenario, index).frames():
        for result in reader.feed(timed.data):
            assert isinstance(result, Hj212Frame), result
            packet = parse_packet(result.segment)
            if packet.is_split:
                whole, dropped = assembler.add(packet, timed.at_s)
                assert not dropped
                if whole is None:
                    continue
                packet = whole
            out.append((timed.at_s, packet))
    return out


def test_every_scenario_file_loads() -> None:
    files = sorted(SCENARIOS.glob("hj212_*.yaml"))
    assert len(files) >= 3
    for path in files:
        assert load_scenario(path).devices >= 1


def test_frames_are_deterministic_for_a_seed(faults: Scenario) -> None:
    first = [f.data for f in LoggerModel(faults, 5).frames()]
    assert first == [f.data for f in LoggerModel(faults, 5).frames()]
    other = load_scenario(SCENARIOS / "hj212_faults.yaml", seed=8)
    assert first != [f.data for f in LoggerModel(other, 5).frames()]


def test_normal_logger_sends_realtime_minute_and_hourly_data(faults: Scenario) -> None:
    sent = packets(faults, 0)
    by_cn = {cn: sum(1 for _, p in sent if p.cn == cn) for cn in ("2011", "2051", "2061")}
    assert by_cn == {"2011": 120, "2051": 12, "2061": 2}
    for _, packet in sent:
        [message] = packet_to_telemetry(packet).messages
        assert set(message.quality or {}) == {"a21026", "a21002", "a34013", "a19001", "a00000"}
        assert all(flag == "N" for flag in (message.quality or {}).values())
    hourly = [p for _, p in sent if p.cn == "2061"]
    metrics = packet_to_telemetry(hourly[0]).messages[0].metrics
    assert 15 < float(metrics["a21026.Avg"]) < 30 and float(metrics["a21026.ZsAvg"]) > float(metrics["a21026.Avg"])
    assert float(metrics["a21026.Cou"]) > 0 and float(metrics["a00000.Cou"]) > 100_000


def test_exceedance_flag_flatline_gap_faults(faults: Scenario) -> None:
    def hourly(index: int, code: str) -> list[str]:
        return [p.get(code) or "" for _, p in packets(faults, index) if p.cn == "2061"]

    first, second = hourly(1, "a21026-Avg")
    assert float(first) > 2.5 * float(second)  # exceedance only in the first hour
    assert hourly(2, "a21002-Flag") == ["C", "N"]
    flat = [p.get("a34013-Rtd") for _, p in packets(faults, 3) if p.cn == "2011"]
    assert len(set(flat[11:])) == 1 and len(set(flat[:10])) > 1
    gap = [t for t, p in packets(faults, 4) if p.cn == "2011"]
    assert len(gap) == 90 and not any(1800 <= t < 3600 for t in gap)


def test_corrupted_frames_are_caught_by_the_decoder(faults: Scenario) -> None:
    frames = list(LoggerModel(faults, 5).frames())
    corrupted = [f for f in frames if f.corrupted]
    assert 0 < len(corrupted) < len(frames) / 2
    for timed in corrupted:
        # A split packet is several frames; the changed byte spoils exactly one of them.
        results = Hj212FrameReader().feed(timed.data)
        assert sum(not isinstance(r, Hj212Frame) for r in results) == 1, results


def test_2005_scenario_uses_version_0_frames(faults: Scenario) -> None:
    legacy = load_scenario(SCENARIOS / "hj212_faults.yaml", version=2005, split_max_cp=0)
    _, packet = packets(legacy, 0)[0]
    assert packet.version == 0 and packet.qn is None
