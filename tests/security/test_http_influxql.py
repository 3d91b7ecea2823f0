"""Issue 14 #3: InfluxQL injection through the console's ``/api/devices/{id}/series``.

The attack: the device id from the URL was pasted into an InfluxQL string literal and sent with
``POST /query`` using the storage stage's (writer/admin) credentials, so an operator could close the
literal and append statements: create a database, read other measurements. Against a real InfluxDB 1.6
with authentication on: the attack strings get 400/404, no database appears, no other measurement is
read, and even a query that got through would run as a read-only user (over ``GET /query``).
"""

from __future__ import annotations

import time
import urllib.parse
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from types import SimpleNamespace

import aiohttp
import pytest
from http_helpers import ADMIN, READER, WRITER, AuthInfluxd

from console.history import HistoryReader, reader_for
from storage.config import InfluxV1Config, StorageConfig
from storage.query import QueryError, influxql, quote_ident, quote_literal
from tests.support.console_stack import ConsoleStack, token_of

DB = "vigil"
ATTACKS = [
    # close the literal, run more statements
    "elev-0001' ; CREATE DATABASE \"pwned\"; SELECT * FROM \"secret_audit\" WHERE \"x\" = '",
    "elev-0001'; DROP DATABASE \"vigil\"; --",
    # widen the WHERE clause to every device, or another measurement's rows
    "x' OR \"device\" =~ /.*/ OR \"device\" = '",
    "elev-0001' OR '1'='1",
    "elev-0001\" FROM \"secret_audit",
    "elev-0001\\",
    "elev-0001\n",
    "elev-0001%0A",
    "../../query?q=CREATE+DATABASE+pwned",
    "a" * 65,
    "-leading-dash",
    "é",
]


@pytest.fixture
def influx(tmp_path: Path) -> Iterator[AuthInfluxd]:
    """InfluxDB 1.6 with ``auth-enabled``: an admin, a writer (ALL on vigil) and a reader (READ on vigil)."""
    proc = AuthInfluxd(tmp_path / "influxdb-auth")
    proc.start()
    try:
        proc.setup_users(DB)
        now_ms = int(time.time() * 1000)
        lines = [f"telemetry_elevator,device=elev-0001,site=cuiyuan-3 speed_mps={i / 10} {now_ms - i * 1000}"
                 for i in range(5)]
        lines += [f"telemetry_elevator,device=elev-0002,site=xixi-tower speed_mps=9.{i} {now_ms - i * 1000}"
                  for i in range(3)]
        lines.append(f'secret_audit,who=ops password="hunter2",leak_marker=4242 {now_ms}')
        proc.write(DB, "\n".join(lines))
        yield proc
    finally:
        proc.stop()


@pytest.fixture
async def stack(tmp_path: Path, influx: AuthInfluxd) -> AsyncIterator[ConsoleStack]:
    async with ConsoleStack(tmp_path / "stack") as st:
        assert st.console is not None
        # The history reader a storage stage on this server gives the console. The storage account is the
        # admin (``create_database: true`` needs it), as in the deployment where the injection created a
        # database; the console must read with the read-only user instead.
        st.console.history = reader_for(SimpleNamespace(config=StorageConfig(
            backend="influxdb-v1", influxdb_v1=InfluxV1Config(url=influx.url, database=DB, username=ADMIN[0],
                                                              password=ADMIN[1], read_username=READER[0],
                                                              read_password=READER[1]))))
        assert st.console.history is not None and st.console.history.influx_user == READER[0]
        yield st


async def test_attack_ids_are_refused_and_change_nothing(stack: ConsoleStack, influx: AuthInfluxd) -> None:
    dbs_before = influx.databases()
    headers = {"Authorization": f"Bearer {token_of('op-wang')}"}
    since = time.time() - 3600
    async with aiohttp.ClientSession(headers=headers) as http:
        # the honest request reads the device's own history from InfluxDB
        async with http.get(f"{stack.url}/api/devices/elev-0001/series", params={"since": str(since)}) as resp:
            assert resp.status == 200
            good = await resp.json()
        assert good["source"] == "storage" and len(good["points"]) == 5
        assert all(set(p["values"]) == {"speed_mps"} and p["values"]["speed_mps"] < 1 for p in good["points"])

        for attack in ATTACKS:
            quoted = urllib.parse.quote(attack, safe="")
            async with http.get(f"{stack.url}/api/devices/{quoted}/series", params={"since": str(since)}) as resp:
                text = await resp.text()
                assert resp.status in (400, 404), (attack, resp.status, text)
                assert "hunter2" not in text and "4242" not in text and "9." not in text, attack
            async with http.get(f"{stack.url}/api/devices/{quoted}") as resp:
                assert resp.status in (400, 404), attack
    assert influx.databases() == dbs_before  # no database was created or dropped
    assert "pwned" not in influx.databases() and DB in influx.databases()


def test_reader_refuses_bad_ids_and_quotes_the_rest(influx: AuthInfluxd) -> None:
    reader = HistoryReader("influxdb-v1", influx_url=influx.url, influx_db=DB, influx_user=READER[0],
                           influx_password=READER[1])
    now = time.time()
    assert len(reader.read("elevator", "elev-0001", now - 3600, now + 1)) == 5
    for attack in ATTACKS:
        with pytest.raises(ValueError):
            reader.read("elevator", attack, now - 3600, now + 1)
    with pytest.raises(ValueError):
        reader.read('elevator" ; DROP DATABASE "vigil', "elev-0001", now - 3600, now + 1)
    # Quoting alone keeps a hostile value inside its literal: it matches no device, reads nothing else.
    for attack in ATTACKS[:6]:
        q = (f"SELECT * FROM {quote_ident('telemetry_elevator')} WHERE {quote_ident('device')} = "
             f"{quote_literal(attack.strip())}")
        assert influxql(influx.url, DB, q, username=READER[0], password=READER[1]) == []
    assert "pwned" not in influx.databases()


def test_reads_go_out_as_get_with_a_read_only_user(influx: AuthInfluxd) -> None:
    create = 'CREATE DATABASE "pwned"'
    # InfluxDB 1.6 still runs some changing statements sent with GET, so the read-only user is what holds:
    # the reader cannot change the server over GET or POST.
    with pytest.raises(QueryError):
        influxql(influx.url, DB, create, username=READER[0], password=READER[1])
    with pytest.raises(QueryError):
        influxql(influx.url, DB, create, username=READER[0], password=READER[1], method="POST")
    with pytest.raises(QueryError):
        influxql(influx.url, DB, 'DROP MEASUREMENT "secret_audit"', username=READER[0], password=READER[1],
                 method="POST")
    assert "pwned" not in influx.databases()
    assert influxql(influx.url, DB, 'SELECT count("leak_marker") FROM "secret_audit"', username=ADMIN[0],
                    password=ADMIN[1])[0].values[0][1] == 1
    # Without credentials nothing is readable at all.
    with pytest.raises(QueryError):
        influxql(influx.url, DB, 'SELECT * FROM "telemetry_elevator"')


def test_history_never_reads_with_the_writer_account() -> None:
    writer_only = SimpleNamespace(config=StorageConfig(backend="influxdb-v1", influxdb_v1=InfluxV1Config(
        username=WRITER[0], password=WRITER[1])))
    assert reader_for(writer_only) is None  # memory-only history rather than the writer's rights
    anonymous = reader_for(SimpleNamespace(config=StorageConfig(backend="influxdb-v1")))
    assert anonymous is not None and anonymous.influx_user == ""
    assert "reader-pw" not in repr(InfluxV1Config(read_username=READER[0], read_password=READER[1]))
