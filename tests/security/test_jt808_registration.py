"""JT/T 808 registration hijack (issue 14 #2), attacked over real TCP against the real gateway and Mosquitto.

Before the fix any TCP client that sent a registered phone number in 0x0100 got that terminal's
(deterministic) auth code, whatever terminal id and plate it claimed, and then published
positions and alarms as the vehicle.
"""

from __future__ import annotations

import asyncio
import base64
import subprocess
import sys
from pathlib import Path

from jt808_rig import (
    LEGIT,
    LEGIT_PHONE,
    VICTIM,
    VICTIM_PHONE,
    Terminal,
    legit_terminal,
    start_rig,
    still_served,
    until,
)

from broker.mosquitto import MosquittoProcess
from edge.jt808.limits import AttemptLimits
from edge.jt808.messages import MsgId, RegisterResult, ReplyResult
from edge.jt808.registrations import MemoryRegistrations, SqliteRegistrations, TerminalIdentity
from simulators.jt808_terminal import EMERGENCY

REPO = Path(__file__).resolve().parents[2]
VICTIM_ID = VICTIM_PHONE.lstrip("0")


async def test_a_stranger_cannot_take_over_a_registered_vehicle(mosquitto: MosquittoProcess) -> None:
    async with start_rig(mosquitto) as rig:
        # The real vehicle registers and reports.
        victim = await Terminal.open(rig, VICTIM_PHONE)
        result, code = await victim.register(VICTIM)
        assert result == RegisterResult.OK and len(code) == 24
        assert await victim.authenticate(code) == ReplyResult.OK
        await still_served(rig, victim, 30.001, 0)

        attacker = await Terminal.open(rig, VICTIM_PHONE, source="127.0.0.2")
        # Its phone number with another terminal id and plate: no auth code.
        forged = TerminalIdentity("EVIL", "X-1", "X000001", 1, "沪Z99999")
        result, code = await attacker.register(forged)
        assert result == RegisterResult.TERMINAL_NOT_IN_DATABASE and code == ""
        # Only the plate wrong: "vehicle not in database".
        result, code = await attacker.register(TerminalIdentity(VICTIM.manufacturer, VICTIM.model,
                                                                VICTIM.terminal_id, 2, "沪Z99999"))
        assert result == RegisterResult.VEHICLE_NOT_IN_DATABASE and code == ""
        # A perfect clone of its registration fields: the terminal is registered already.
        result, code = await attacker.register(VICTIM)
        assert result == RegisterResult.TERMINAL_ALREADY_REGISTERED and code == ""
        # Guessing codes: refused, and the connection is dropped after the third failure.
        for guess in ("0" * 24, "1" * 16, code or "x"):
            attacker.send(MsgId.AUTHENTICATE, guess.encode())
        for _ in range(3):
            assert (await attacker.reply()).body[-1] == ReplyResult.FAIL
        assert await attacker.closed_by_gateway()

        # An unauthenticated emergency alarm in the vehicle's name goes nowhere.
        spoof = await Terminal.open(rig, VICTIM_PHONE, source="127.0.0.2")
        spoof.position(31.5, alarm=EMERGENCY, t=60)
        assert (await spoof.reply()).body[-1] == ReplyResult.FAIL

        # The vehicle keeps reporting; what reached the control room is its data only.
        await still_served(rig, victim, 30.002, 120)
        await rig.gateway.flush()
        assert [m.metrics["lat"] for m in rig.inbox.telemetry[VICTIM_ID]] == [30.001, 30.002]
        assert VICTIM_ID not in rig.inbox.events
        counters = rig.gateway.stats()
        assert counters["rejected.identity_mismatch"] == 2 and counters["rejected.already_registered"] == 1
        assert counters["rejected.auth_failed"] == 3 and counters["rejected.not_authenticated"] == 1
        assert counters["registered"] == 1
        await until(lambda: {"identity_mismatch", "already_registered", "auth_failed"} <= set(rig.inbox.dead_reasons()))
        mismatch = next(d for d in rig.inbox.dead if d.detail.startswith("identity_mismatch"))
        assert "terminal_id" in mismatch.detail and "plate" in mismatch.detail and "127.0.0.2" in mismatch.detail
        for t in (victim, attacker, spoof):
            t.close()


async def test_a_plate_registered_to_one_terminal_cannot_be_registered_by_another(
        mosquitto: MosquittoProcess) -> None:
    # Even where unknown terminals may register (commissioning), one vehicle is one terminal.
    async with start_rig(mosquitto, accept_unknown=True) as rig:
        first = await Terminal.open(rig, "013912345678")
        plate = TerminalIdentity("ACME", "T-1", "A000001", 1, "浙B12345")
        result, code = await first.register(plate)
        assert result == RegisterResult.OK and code
        second = await Terminal.open(rig, "013912345679", source="127.0.0.2")
        result, code = await second.register(TerminalIdentity("ACME", "T-1", "A000002", 1, "浙b12345 "))
        assert result == RegisterResult.VEHICLE_ALREADY_REGISTERED and code == ""
        assert rig.gateway.stats()["rejected.already_registered"] == 1
        first.close()
        second.close()


async def test_auth_codes_are_random_stored_hashed_and_survive_a_restart_until_an_admin_reset(
        mosquitto: MosquittoProcess, tmp_path: Path) -> None:
    path = tmp_path / "gateway" / "jt808-registrations.sqlite3"
    async with start_rig(mosquitto, store=SqliteRegistrations(path), name="jt808-sec-a") as rig:
        term = await Terminal.open(rig)
        result, code = await term.register(LEGIT)
        assert result == RegisterResult.OK
        term.close()
    # Another gateway with a fresh store issues an unrelated code to the same terminal.
    async with start_rig(mosquitto, store=MemoryRegistrations(), name="jt808-sec-b") as rig:
        term = await Terminal.open(rig)
        result, other = await term.register(LEGIT)
        assert result == RegisterResult.OK and other != code
        term.close()
    stored = b"".join(p.read_bytes() for p in path.parent.iterdir())  # the database and its WAL
    assert code.encode() not in stored and path.stat().st_size > 0

    # The restarted gateway knows the registration: the code works, a second registration is refused.
    async with start_rig(mosquitto, store=SqliteRegistrations(path), name="jt808-sec-c") as rig:
        term = await Terminal.open(rig)
        assert await term.authenticate(code) == ReplyResult.OK
        again = await Terminal.open(rig, source="127.0.0.2")
        assert await again.register(LEGIT) == (RegisterResult.TERMINAL_ALREADY_REGISTERED, "")
        await still_served(rig, term, 30.1, 0)

        # An operator resets the terminal (while the gateway runs): the old code no longer works
        # and the terminal may register once more, getting a new code.
        reset = subprocess.run([sys.executable, "-m", "vigil.cli", "edge", "jt808", "reset-registration", LEGIT_PHONE,
                                "--registrations", str(path)], cwd=REPO, capture_output=True, text=True, timeout=60)
        assert reset.returncode == 0, reset.stderr
        assert "registration reset" in reset.stdout
        late = await Terminal.open(rig)
        assert await late.authenticate(code) == ReplyResult.FAIL
        result, fresh = await late.register(LEGIT)
        assert result == RegisterResult.OK and fresh not in (code, "")
        assert await late.authenticate(fresh) == ReplyResult.OK
        # The refused old code is dead-lettered without the code itself (operators read dead letters).
        await until(lambda: "auth_failed" in rig.inbox.dead_reasons())
        for letter in rig.inbox.dead:
            raw = base64.b64decode(letter.payload) if letter.payload_encoding == "base64" else letter.payload.encode()
            assert code.encode() not in raw and fresh.encode() not in raw
        for t in (term, again, late):
            t.close()
    listing = subprocess.run([sys.executable, "-m", "vigil.cli", "edge", "jt808", "list-registrations",
                              "--registrations", str(path)], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert listing.returncode == 0 and LEGIT_PHONE.lstrip("0") in listing.stdout and fresh not in listing.stdout


async def test_registration_and_authentication_attempts_are_throttled_per_phone_and_per_address(
        mosquitto: MosquittoProcess) -> None:
    attempts = AttemptLimits(per_phone_burst=4, per_phone_per_s=0.001, per_address_burst=6, per_address_per_s=0.001)
    async with start_rig(mosquitto, attempts=attempts) as rig:
        legit = await legit_terminal(rig)
        # Guessing the victim's code from several addresses, reconnecting after each drop.
        for i in range(4):
            guess = await Terminal.open(rig, VICTIM_PHONE, source=f"127.0.1.{i + 1}")
            assert await guess.authenticate(f"guess-{i}") == ReplyResult.FAIL
            guess.close()
        # The phone's budget is spent: the next attempt gets no answer and the connection is dropped.
        late = await Terminal.open(rig, VICTIM_PHONE, source="127.0.1.9")
        late.send(MsgId.AUTHENTICATE, b"guess-late")
        assert await late.closed_by_gateway()
        # One address naming many phones runs out too.
        for i in range(6):
            probe = await Terminal.open(rig, f"0139000000{i:02d}", source="127.0.2.1")
            result, _ = await probe.register(LEGIT)
            assert result == RegisterResult.TERMINAL_NOT_IN_DATABASE
            probe.close()
        probe = await Terminal.open(rig, "013900000099", source="127.0.2.1")
        probe.send(MsgId.REGISTER, b"\x00" * 37)
        assert await probe.closed_by_gateway()

        counters = rig.gateway.stats()
        assert counters["rejected.rate_limited"] == 2
        await until(lambda: "rate_limited" in rig.inbox.dead_reasons())
        # Meanwhile the fleet is served.
        await still_served(rig, legit, 30.3, 0)
        legit.close()


def test_the_simulator_registers_with_the_fields_the_registry_holds(tmp_path: Path) -> None:
    """`vigil sim jt808 --print-registry` gives a registry the gateway accepts the simulated fleet from."""
    import yaml

    from edge.jt808.registry import RegistryTerminals
    from simulators.jt808_terminal import load_scenario, plan

    scenario = load_scenario(REPO / "simulators/scenarios/jt808_hazmat.yaml")
    printed = subprocess.run([sys.executable, "-m", "vigil.cli", "sim", "jt808",
                              str(REPO / "simulators/scenarios/jt808_hazmat.yaml"), "--print-registry"],
                             cwd=REPO, capture_output=True, text=True, timeout=60)
    assert printed.returncode == 0, printed.stderr
    registry = tmp_path / "registry.yaml"
    registry.write_text(printed.stdout, encoding="utf-8")
    assert yaml.safe_load(printed.stdout)["devices"][0]["jt808"]["plate_colour"] == 2
    terminals = RegistryTerminals(str(registry))
    for t in plan(scenario):
        r = t.registration
        sent = TerminalIdentity(r.manufacturer, r.model, r.terminal_id, r.plate_color, r.plate)
        assert terminals.lookup(t.device_id) and terminals.check(t.device_id, sent) == []
        assert terminals.check(t.device_id, TerminalIdentity("X", r.model, r.terminal_id, 2, r.plate)) == \
            ["manufacturer"]


async def test_simulated_terminals_keep_their_codes_across_simulator_restarts(mosquitto: MosquittoProcess,
                                                                              tmp_path: Path) -> None:
    """The demo restarts its simulator against the same gateway: the terminals must not need a second registration."""
    import json

    codes = tmp_path / "jt808-auth-codes.json"
    async with start_rig(mosquitto, accept_unknown=True) as rig:
        for _ in range(2):
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "vigil.cli", "sim", "jt808", str(REPO / "simulators/scenarios/jt808_hazmat.yaml"),
                "--gateway", f"{rig.host}:{rig.port}", "--time-scale", "4000", "--duration-min", "5",
                "--auth-codes", str(codes), cwd=REPO, stdout=asyncio.subprocess.PIPE)
            out, _ = await asyncio.wait_for(proc.communicate(), 120)
            summary = json.loads(out.decode().strip().splitlines()[-1])
            assert summary["authenticated"] == 5 and summary["registration_refused"] == 0, summary
        assert rig.gateway.stats()["registered"] == 5 and rig.gateway.stats()["authenticated"] == 10
        assert len(json.loads(codes.read_text())) == 5
