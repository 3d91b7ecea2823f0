"""Console configuration validation and the audit / snapshot journal."""

from __future__ import annotations

from pathlib import Path

import msgspec
import pytest

from console.config import ConsoleConfig
from console.journal import ConsoleJournal


def test_defaults_work_for_the_demo() -> None:
    c = ConsoleConfig()
    assert (c.host, c.port, c.locale, c.timezone, c.gcj02_basemap) == ("127.0.0.1", 8080, "zh", "Asia/Shanghai", False)


def test_config_from_yaml_mapping() -> None:
    c = msgspec.convert({"listen": "0.0.0.0:9000", "gcj02_basemap": True, "map": {
        "bounds": [120.0, 30.1, 120.4, 30.4],
        "geofences": [{"name": "化工园区禁入区", "coordinates": [[120.2, 30.2], [120.3, 30.2], [120.3, 30.3]]}],
        "routes": [{"name": "G60 危化品线路", "kind": "road", "coordinates": [[120.1, 30.2], [120.3, 30.3]]}]}},
        ConsoleConfig)
    assert c.port == 9000 and c.map.geofences[0].coordinates[0] == (120.2, 30.2)


@pytest.mark.parametrize("raw,fragment", [
    ({"listen": "8080"}, "host:port"), ({"listen": "x:99999"}, "host:port"), ({"lsten": "a:1"}, "lsten"),
    ({"locale": "fr"}, "locale"), ({"session_ttl_s": 0}, "session_ttl_s"),
    ({"map": {"areas": [{"name": "x", "coordinates": [[1]]}]}}, "coordinates"),
])
def test_bad_config_is_refused_with_the_key(raw: dict[str, object], fragment: str) -> None:
    with pytest.raises(msgspec.ValidationError, match=fragment):
        msgspec.convert(raw, ConsoleConfig)


def test_audit_log_and_snapshots(tmp_path: Path) -> None:
    j = ConsoleJournal(tmp_path / "c.sqlite3")
    j.audit(1.0, "op", "operator", "POST /api/alerts/{id}/{action}", "/api/alerts/a1/ack", 200, {"note": "到场"}, "::1")
    j.audit(2.0, "op", "operator", "POST /api/duty/overrides", "/api/duty/overrides", 403, {}, "::1")
    j.audit(3.0, "lead", "supervisor", "DELETE /api/silences/{id}", "/api/silences/s1", 200, {}, "::1")
    log = j.audit_log()
    assert [e["seq"] for e in log] == [3, 2, 1] and log[2]["detail"] == {"note": "到场"}
    assert [e["outcome"] for e in j.audit_log(user="op")] == [403, 200]
    assert [e["seq"] for e in j.audit_log(since=2.0, limit=1)] == [3]
    assert j.put_snapshot("a1", 5.0, "e1", {"device_values": {"speed_mps": 1.2}})
    assert not j.put_snapshot("a1", 6.0, "e1", {"device_values": {"speed_mps": 9.9}})  # the first one wins
    assert j.snapshot("a1") == {"ts": 5.0, "device_id": "e1", "device_values": {"speed_mps": 1.2}}
    assert j.snapshot("zz") is None
    j.close()
    again = ConsoleJournal(tmp_path / "c.sqlite3")
    assert len(again.audit_log()) == 3
    again.close()
