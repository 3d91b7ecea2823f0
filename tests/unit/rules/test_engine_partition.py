"""A partitioned engine watches the absence of its own registered devices only (the others' partition does)."""

from __future__ import annotations

from broker.contracts import Kind
from broker.ingest import partition_of
from broker.registry import Device, DeviceRegistry
from tests.unit.rules.rules_helpers import BASE, make_engine, one_rule


def test_each_partition_raises_absence_for_its_own_never_heard_devices_only() -> None:
    ids = [f"s{i:03d}" for i in range(40)]
    reg = DeviceRegistry.build([], [Device(id=d, kind=Kind.SENSOR) for d in ids], [])
    firing: list[set[str]] = []
    for index in range(2):
        eng = make_engine(one_rule("{absence: 60s}"), reg)
        eng.owns = lambda device, index=index: partition_of(device, 2) == index
        assert eng.process([], BASE) == []
        eng.tick(BASE + 61)
        firing.append({d for d, _ in eng.firing()})
    assert firing[0] == {d for d in ids if partition_of(d, 2) == 0}
    assert firing[1] == {d for d in ids if partition_of(d, 2) == 1}
    assert firing[0] | firing[1] == set(ids)  # every device watched, by exactly one partition
    assert not firing[0] & firing[1]
