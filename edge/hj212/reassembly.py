"""Reassembly of HJ 212 split packets (Flag bit D: PNUM/PNO): pure, clock injected."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

from edge.hj212.codec import FLAG_SPLIT, Hj212Error, Hj212Packet, Hj212Reject, Hj212Rejection


@dataclass
class _Sequence:
    first_seen: float
    parts: dict[int, Hj212Packet]
    data_time: str | None


def _data_time(packet: Hj212Packet) -> str | None:
    first = packet.cp[0] if packet.cp else ()
    return first[0][1] if first and first[0][0] == "DataTime" else None


class SplitPacketAssembler:
    """Reassembles split packets (Flag bit D) per (MN, ST, CN, PNUM); pure, clock injected.

    Parts may arrive in any order; a repeated PNO replaces the earlier part (a resend). A new
    PNO 1 with another QN while a sequence is open means the old one was abandoned.
    """

    def __init__(self, timeout_s: float = 120.0, max_open: int = 32, max_parts: int = 256) -> None:
        self._timeout = timeout_s
        self._max_open = max_open
        self._max_parts = max_parts
        self._open: dict[tuple[str, str, str, int], _Sequence] = {}

    @property
    def open_sequences(self) -> int:
        """Sequences waiting for parts."""
        return len(self._open)

    def add(self, packet: Hj212Packet, now: float) -> tuple[Hj212Packet | None, list[Hj212Rejection]]:
        """Add one part; return the whole packet once complete, and any abandoned sequences.

        Raises:
            Hj212Error: PNUM above the configured limit.
        """
        assert packet.pnum is not None and packet.pno is not None
        if packet.pnum > self._max_parts:
            raise Hj212Error(Hj212Reject.BAD_FIELD, f"PNUM {packet.pnum} exceeds the limit of {self._max_parts}")
        dropped: list[Hj212Rejection] = []
        key = (packet.mn, packet.st, packet.cn, packet.pnum)
        seq = self._open.get(key)
        data_time = _data_time(packet)
        if seq is not None:
            if packet.pno == 1 and 1 in seq.parts and seq.parts[1].qn != packet.qn:
                dropped.append(self._abandon(key, "restarted with a new PNO 1"))
                seq = None
            elif data_time is not None and seq.data_time is not None and data_time != seq.data_time:
                # Parts repeat the DataTime (Table C.49); another DataTime is another sequence.
                dropped.append(self._abandon(key, f"a part with DataTime {data_time[:14]} arrived"))
                seq = None
        if seq is None:
            if len(self._open) >= self._max_open:
                oldest = min(self._open, key=lambda k: self._open[k].first_seen)
                dropped.append(self._abandon(oldest, "evicted: too many open sequences"))
            seq = self._open[key] = _Sequence(now, {}, data_time)
        elif seq.data_time is None:
            seq.data_time = data_time
        seq.parts[packet.pno] = packet
        if len(seq.parts) < packet.pnum:
            return None, dropped
        del self._open[key]
        return _merge([seq.parts[n] for n in range(1, packet.pnum + 1)]), dropped

    def expire(self, now: float) -> list[Hj212Rejection]:
        """Abandon sequences older than the timeout."""
        old = [k for k, s in self._open.items() if now - s.first_seen > self._timeout]
        return [self._abandon(k, f"incomplete after {self._timeout:g} s") for k in old]

    def abandon_all(self, why: str) -> list[Hj212Rejection]:
        """Abandon every open sequence (the connection ended)."""
        return [self._abandon(k, why) for k in list(self._open)]

    def _abandon(self, key: tuple[str, str, str, int], why: str) -> Hj212Rejection:
        seq = self._open.pop(key)
        first = seq.parts[min(seq.parts)]
        have = ",".join(str(n) for n in sorted(seq.parts))
        return Hj212Rejection(Hj212Reject.SPLIT_INCOMPLETE,
                              f"CN {key[2]} split in {key[3]} parts, got PNO {have}: {why}",
                              mn=first.mn, qn=first.qn, cn=first.cn)


def _merge(parts: Sequence[Hj212Packet]) -> Hj212Packet:
    first = parts[0]
    items = list(first.cp)
    head = first.cp[0] if first.cp and first.cp[0] and first.cp[0][0][0] == "DataTime" else None
    for part in parts[1:]:
        rest = part.cp
        if head is not None and rest and rest[0] == head:
            rest = rest[1:]  # the repeated DataTime of a continuation part
        items.extend(rest)
    return replace(first, flag=first.flag & ~FLAG_SPLIT, pnum=None, pno=None, cp=tuple(items))
