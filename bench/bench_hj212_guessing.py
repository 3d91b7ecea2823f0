"""HJ 212 password guessing rate on one TCP connection, with the gateway's guards off and on.

Prints figures; asserts nothing. A client sends one wrong-PW frame at a time and waits for the
9011 before the next (a pipelining client gets no more: the gateway stops after
``max_auth_failures``). No broker is involved: refused frames publish nothing.

Run: .venv/bin/python bench/bench_hj212_guessing.py [--guesses 3000]
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from edge.hj212.codec import Hj212Frame, Hj212FrameReader, encode_frame  # noqa: E402
from edge.hj212.gateway import GuardPolicy, Hj212Gateway, SessionPolicy, StaticDevicePasswords  # noqa: E402

MN = "010000A8900016F000169DC0"


async def _nothing(topic: str, payload: bytes, *, retain: bool = False) -> None:
    """Refused guesses publish nothing; dead letters are not wired here."""


async def guess(policy: SessionPolicy, guard: GuardPolicy, guesses: int) -> tuple[int, float]:
    """Answered guesses and the seconds they took, until done or the gateway hangs up."""
    gateway = Hj212Gateway(_nothing, passwords=StaticDevicePasswords({MN: "the-real-one"}), policy=policy,
                           guard=guard)
    _, port = await gateway.start("127.0.0.1", 0)
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    decoder = Hj212FrameReader()
    answered = 0
    started = time.perf_counter()
    for n in range(guesses):
        writer.write(encode_frame(f"QN=20261126080000{n % 1000:03d};ST=31;CN=2011;PW={n:06d};MN={MN};Flag=5;"
                                  "CP=&&DataTime=20261126080000;a21026-Rtd=1&&"))
        await writer.drain()
        chunk = await reader.read(4096)
        if not chunk:
            break
        answered += sum(isinstance(r, Hj212Frame) for r in decoder.feed(chunk))
    elapsed = time.perf_counter() - started
    writer.close()
    await gateway.close()
    return answered, elapsed


async def main(guesses: int) -> None:
    """Run both configurations and print the figures."""
    off = SessionPolicy(max_auth_failures=10**9, max_preauth_rejections=10**9)
    answered, elapsed = await guess(off, GuardPolicy(auth_delay_base_s=0.0), guesses)
    print(f"guards off: {answered} guesses answered in {elapsed:.2f} s = {answered / elapsed:,.0f} guesses/s "
          "on one connection")
    answered, elapsed = await guess(SessionPolicy(), GuardPolicy(), guesses)
    print(f"defaults:   {answered} guesses answered in {elapsed:.2f} s, then the gateway closed the connection "
          "(the MN and the address keep their failure counts for the next one)")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--guesses", type=int, default=3000)
    logging.basicConfig(level=logging.ERROR)
    asyncio.run(main(parser.parse_args().guesses))
