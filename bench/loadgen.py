"""A cheap QoS 1 load generator for the end-to-end benchmark: pre-encoded PUBLISH packets over raw sockets.

The simulated fleet (``simulators.elevator_fleet``) steps elevator physics and goes through the MQTT
client layer for every message; at 20,000 msg/s on a 2-core box that competes with the platform for
the same cores. Here each elevator's telemetry is simulated once
for ``steps`` ticks (real motion, doors, passengers), turned into a payload template with the
timestamp and sequence number left open, and replayed in a loop: sending one message is a bytes
format, a join and a share of one ``sendall`` per connection per time slice. PUBACKs are counted
(MQTT 3.1.1, so each is 4 bytes) and bound what is in flight per connection.

Each device always uses the same connection, so its messages reach the broker in order; every
payload carries a new timestamp (``ts``, 1 µs resolution) and ``seq``, so every message is a distinct
InfluxDB point.

Run on its own: .venv/bin/python bench/loadgen.py mqtt://user:pw@127.0.0.1:1883 --devices 2000 --rate 10
"""

from __future__ import annotations

import argparse
import re
import select
import socket
import struct
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime

from broker.mqtt import BrokerAddress

_TS = re.compile(rb'"ts":"[^"]*"')
_SEQ = re.compile(rb'"seq":[0-9]+')


def device_ids(prefix: str, count: int) -> list[str]:
    """The ids the simulated fleet uses: ``{prefix}{n:05d}``, n from 1 (as ``ElevatorFleet``)."""
    return [f"{prefix}{n:05d}" for n in range(1, count + 1)]


def templates(prefix: str, count: int, steps: int, rate: float, seed: int = 0) -> list[list[bytes]]:
    """Per device, ``steps`` consecutive telemetry payloads of a simulated elevator as ``%`` templates (ts, seq)."""
    from simulators.elevator_fleet import ElevatorFleet

    fleet = ElevatorFleet(count, seed=seed, id_prefix=prefix)
    now = time.time()
    ts = datetime.fromtimestamp(now, UTC)
    out: list[list[bytes]] = [[] for _ in range(count)]
    for _ in range(steps):
        for i in range(count):
            for _topic, payload, event in fleet.messages(i, 1.0 / rate, now, ts):
                if event is None:
                    body = _TS.sub(b'"ts":"%s"', payload.replace(b"%", b"%%"), count=1)
                    out[i].append(_SEQ.sub(b'"seq":%d', body, count=1))
    return out


def _remaining_length(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n % 128, n // 128
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _str(s: str | bytes) -> bytes:
    b = s.encode() if isinstance(s, str) else s
    return struct.pack("!H", len(b)) + b


def connect(address: BrokerAddress, client_id: str, timeout: float = 10.0) -> socket.socket:
    """An MQTT 3.1.1 connection (clean session) as a blocking socket, after a successful CONNACK."""
    sock = socket.create_connection((address.host, address.port), timeout=timeout)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    flags = 0x02
    payload = _str(client_id)
    if address.username is not None:
        flags |= 0x80
        payload += _str(address.username)
        if address.password is not None:
            flags |= 0x40
            payload += _str(address.password)
    body = _str("MQTT") + bytes([4, flags]) + struct.pack("!H", 60) + payload
    sock.sendall(b"\x10" + _remaining_length(len(body)) + body)
    ack = b""
    while len(ack) < 4:
        chunk = sock.recv(4 - len(ack))
        if not chunk:
            raise ConnectionError("broker closed the connection before CONNACK")
        ack += chunk
    if ack[0] != 0x20 or ack[3] != 0:
        raise ConnectionError(f"broker refused the connection: CONNACK {ack.hex()}")
    sock.settimeout(None)
    return sock


@dataclass
class _Conn:
    sock: socket.socket
    sent: int = 0
    acked: int = 0
    tail: bytes = b""
    mid: int = 0

    def read_acks(self, block: float = 0.0) -> None:
        """Count the PUBACKs that have arrived (waiting up to ``block`` s for the first)."""
        if block:
            ready, _, _ = select.select([self.sock], [], [], block)
            if not ready:
                return
        while True:
            try:
                data = self.sock.recv(262144, socket.MSG_DONTWAIT)
            except (BlockingIOError, TimeoutError):
                return
            if not data:
                raise ConnectionError("broker closed the connection")
            buf = self.tail + data
            whole = len(buf) - len(buf) % 4
            if buf[0:whole:4].count(0x40) * 4 != whole:
                raise ConnectionError(f"unexpected packet from the broker: {buf[:16].hex()}")
            self.acked += whole // 4
            self.tail = buf[whole:]


@dataclass
class Result:
    """What one generator run did."""

    published: int
    acked: int
    elapsed_s: float
    max_lag_s: float
    cpu_s: float


def run(url: str, prefix: str, count: int, rate: float, duration: float, *, connections: int = 4,
        window: int = 4000, slices: int = 20, steps: int = 40, flush_timeout: float = 120.0) -> Result:
    """Publish ``count`` devices' telemetry at ``rate`` Hz each for ``duration`` s, QoS 1; wait for every PUBACK."""
    address = BrokerAddress.parse(url)
    tmpl = templates(prefix, count, steps, rate)
    ids = device_ids(prefix, count)
    heads = []
    for dev in ids:
        topic = _str(f"vigil/v1/elevator/{dev}/telemetry")
        heads.append(topic)
    tag = uuid.uuid4().hex[:6]
    conns = [_Conn(connect(address, f"loadgen-{tag}-{c}")) for c in range(max(1, min(connections, count)))]
    nconn = len(conns)
    ticks = max(1, round(duration * rate))
    slices = max(1, min(slices, count))
    bounds = [count * j // slices for j in range(slices + 1)]
    dt = 1.0 / rate
    published = 0
    max_lag = 0.0
    cpu0 = time.process_time()
    started = time.monotonic()
    for k in range(ticks):
        step_index = k % steps
        for j in range(slices):
            due = started + (k + j / slices) * dt
            lag = time.monotonic() - due
            if lag < 0:
                time.sleep(-lag)
            elif lag > max_lag:
                max_lag = lag
            ts = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ").encode()
            seq = k + 1
            parts: list[list[bytes]] = [[] for _ in range(nconn)]
            for i in range(bounds[j], bounds[j + 1]):
                conn = conns[i % nconn]
                conn.mid = conn.mid % 65535 + 1
                payload = tmpl[i][step_index] % (ts, seq)
                head = heads[i]
                parts[i % nconn] += (b"\x32", _remaining_length(len(head) + 2 + len(payload)), head,
                                     struct.pack("!H", conn.mid), payload)
            for c, conn in enumerate(conns):
                blob = b"".join(parts[c])
                if not blob:
                    continue
                sent = len(parts[c]) // 5
                while conn.sent - conn.acked + sent > window:
                    conn.read_acks(block=0.05)
                conn.sock.sendall(blob)
                conn.sent += sent
                published += sent
                conn.read_acks()
    deadline = time.monotonic() + flush_timeout
    for conn in conns:
        while conn.acked < conn.sent and time.monotonic() < deadline:
            conn.read_acks(block=0.1)
    elapsed = time.monotonic() - started
    for conn in conns:
        try:
            conn.sock.sendall(b"\xe0\x00")  # DISCONNECT
        finally:
            conn.sock.close()
    return Result(published, sum(c.acked for c in conns), elapsed, max_lag, time.process_time() - cpu0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("url")
    ap.add_argument("--devices", type=int, default=1000)
    ap.add_argument("--rate", type=float, default=10.0)
    ap.add_argument("--duration", type=float, default=10.0)
    ap.add_argument("--connections", type=int, default=4)
    ap.add_argument("--prefix", default="lg-elev-")
    args = ap.parse_args()
    r = run(args.url, args.prefix, args.devices, args.rate, args.duration, connections=args.connections)
    print(f"published {r.published:,} (acked {r.acked:,}) in {r.elapsed_s:.1f} s = {r.published / r.elapsed_s:,.0f} "
          f"msg/s; max lag {r.max_lag_s * 1000:.0f} ms; generator CPU {r.cpu_s:.1f} s "
          f"({r.cpu_s / r.elapsed_s * 100:.0f}% of a core, {r.cpu_s / max(r.published, 1) * 1e6:.1f} µs/msg)")


if __name__ == "__main__":
    main()
