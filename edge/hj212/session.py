"""One HJ 212 logger connection as a pure state machine: bytes in -> publications, replies, rejections."""

from __future__ import annotations

import hmac
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import tzinfo
from typing import Final, Protocol

from broker.contracts import Channel, Kind, device_topic, encode
from edge.hj212.codec import (
    MAX_DATA_LENGTH,
    Hj212Error,
    Hj212Frame,
    Hj212FrameReader,
    Hj212Packet,
    Hj212Reject,
    Hj212Rejection,
    QnRtn,
    data_reply,
    notify_reply,
    parse_packet,
    request_reply,
)
from edge.hj212.downlink import DownlinkTracker
from edge.hj212.mapping import CHINA_TZ, packet_to_telemetry
from edge.hj212.reassembly import SplitPacketAssembler
from edge.runtime.counters import GatewayCounters
from edge.runtime.output import Publication

DATA_COMMANDS: Final = frozenset({"2011", "2021", "2031", "2041", "2051", "2061"})
"""Uploads published as telemetry: real-time, equipment status, daily, run time, minute, hourly."""
NOTIFY_COMMANDS: Final = frozenset({"1013"})
"""Notify commands from a logger; answered with 9013."""
REPLY_COMMANDS: Final = frozenset({"9011", "9012", "9013", "9014"})
"""Interaction replies from a logger; counted (9011/9012 also matched to downlink commands), never answered."""
OTHER_UPLOADS: Final = frozenset({"1011", "1061", "1063", "2081", "3015", "3017", "3018", "3019", "3020"})
"""Valid uploads that carry no telemetry (parameters, restart time, sample info): acknowledged only."""
RESENT_METRIC: Final = "hj212.resent"


class DevicePasswords(Protocol):
    """Where the gateway checks a logger's MN and PW (``broker.registry`` supplies one)."""

    def lookup(self, mn: str) -> str | None:
        """The device's HJ 212 password, or None if the MN is not a registered device."""


class StaticDevicePasswords:
    """A fixed MN -> PW table (tests, commissioning)."""

    def __init__(self, passwords: dict[str, str], sites: dict[str, str] | None = None) -> None:
        self._passwords = dict(passwords)
        self._sites = dict(sites or {})

    def lookup(self, mn: str) -> str | None:
        """The password of ``mn`` or None."""
        return self._passwords.get(mn)

    def site(self, mn: str) -> str | None:
        """The site of ``mn`` or None."""
        return self._sites.get(mn)


@dataclass(slots=True)
class Hj212Counters(GatewayCounters):
    """The runtime's gateway counters plus HJ 212's (packets, commands by CN, auth throttling, downlink)."""

    packets: int = 0
    fields_dropped: int = 0
    auth_failures: int = 0
    auth_delayed: int = 0
    frames_ignored: int = 0
    """Frames still buffered when a connection was closed for abuse."""
    downlink_sent: int = 0
    commands: Counter[str] = field(default_factory=Counter)


@dataclass(frozen=True, slots=True)
class SessionPolicy:
    """What a session accepts."""

    accept_unknown_devices: bool = False
    max_data_length: int = MAX_DATA_LENGTH
    split_timeout_s: float = 120.0
    tz: tzinfo = CHINA_TZ
    max_auth_failures: int = 3
    """Refused MN/PW checks before the connection is closed (password guessing)."""
    max_preauth_rejections: int = 32
    """Refused frames before the connection's first authenticated packet, then it is closed."""


@dataclass
class SessionOutput:
    """What a chunk of received bytes produced, in the order to act on it."""

    publications: list[Publication] = field(default_factory=list)
    replies: list[bytes] = field(default_factory=list)
    rejections: list[Hj212Rejection] = field(default_factory=list)
    auth_failures: list[str] = field(default_factory=list)
    """MNs of refused MN/PW checks in this chunk (the adapter delays the replies)."""


class Hj212Session:
    """One logger connection: frames, auth, split reassembly, telemetry and replies. No I/O."""

    def __init__(self, policy: SessionPolicy, counters: Hj212Counters, passwords: DevicePasswords | None = None,
                 sites: Callable[[str], str | None] | None = None, downlink: DownlinkTracker | None = None) -> None:
        self._policy = policy
        self._counters = counters
        self._passwords = passwords
        self._sites = sites
        self._downlink = downlink
        self._reader = Hj212FrameReader(policy.max_data_length)
        self._assembler = SplitPacketAssembler(policy.split_timeout_s)
        self._verified: dict[str, str] = {}
        self._auth_failures = 0
        self._preauth_rejections = 0
        self.devices: set[str] = set()
        """MNs that sent an accepted packet on this connection."""
        self.closing: str | None = None
        """Why the connection must be closed (abuse), once it must."""
        self.completed = 0
        """Frames (good or refused) the reader has cut from this connection's bytes."""

    @property
    def authenticated(self) -> bool:
        """An MN/PW check succeeded on this connection."""
        return bool(self._verified)

    @property
    def buffered(self) -> int:
        """Bytes of a frame still arriving."""
        return self._reader.buffered

    def receive(self, data: bytes, now: float) -> SessionOutput:
        """Process received bytes; ``now`` is a monotonic clock reading (split timeouts)."""
        out = SessionOutput()
        if self.closing is not None:
            return out
        self._counters.bytes_in += len(data)
        results = self._reader.feed(data)
        self.completed += len(results)
        for index, result in enumerate(results):
            if isinstance(result, Hj212Rejection):
                self._reject(out, result)
            else:
                self._frame(out, result, now)
            if self.closing is not None:
                # Pipelined guesses must not all be tried: the rest of the chunk is ignored.
                self._counters.frames_ignored += len(results) - index - 1
                break
        for dropped in self._assembler.expire(now):
            self._reject(out, dropped)
        return out

    def expire(self, now: float) -> SessionOutput:
        """Abandon split sequences that timed out (call periodically on idle connections)."""
        out = SessionOutput()
        for dropped in self._assembler.expire(now):
            self._reject(out, dropped)
        return out

    def close(self) -> SessionOutput:
        """The connection ended: split sequences still open are refused, bytes left over noted."""
        out = SessionOutput()
        for dropped in self._assembler.abandon_all("connection closed"):
            self._reject(out, dropped)
        if self._reader.buffered:
            self._reject(out, Hj212Rejection(Hj212Reject.BAD_LENGTH,
                                             f"connection closed inside a frame ({self._reader.buffered} bytes)"))
        return out

    def _reject(self, out: SessionOutput, rejection: Hj212Rejection) -> None:
        self._counters.rejected[rejection.reason.value] += 1
        out.rejections.append(rejection)
        if not self._verified and self.closing is None:
            self._preauth_rejections += 1
            if self._preauth_rejections >= self._policy.max_preauth_rejections:
                self.closing = "preauth_rejections"

    def _frame(self, out: SessionOutput, frame: Hj212Frame, now: float) -> None:
        self._counters.frames += 1
        try:
            packet = parse_packet(frame.segment)
        except Hj212Error as exc:
            self._reject(out, Hj212Rejection(exc.reason, exc.detail, frame.raw))
            return
        refusal = self._authenticate(packet)
        if refusal is not None:
            self._counters.auth_failures += 1
            self._auth_failures += 1
            out.auth_failures.append(packet.mn)
            self._reject(out, Hj212Rejection(refusal, f"MN {packet.mn}: {refusal.value}", frame.raw,
                                             packet.mn, packet.qn, packet.cn))
            if packet.ack_requested:
                # One answer for unknown MN and wrong PW, so a guesser cannot learn which MNs exist.
                out.replies.append(request_reply(packet, QnRtn.PW_ERROR))
            if self._auth_failures >= self._policy.max_auth_failures:
                self.closing = "auth_failures"
            return
        self._counters.commands[packet.cn] += 1
        cn = packet.cn
        if cn in REPLY_COMMANDS or cn in NOTIFY_COMMANDS:
            self._accepted(packet, now)
            if cn in NOTIFY_COMMANDS:
                out.replies.append(notify_reply(packet))
            return
        if cn not in DATA_COMMANDS and cn not in OTHER_UPLOADS:
            self._reject(out, Hj212Rejection(Hj212Reject.UNKNOWN_COMMAND, f"CN {cn} is not an upload this gateway "
                                             "accepts", frame.raw, packet.mn, packet.qn, cn))
            if packet.ack_requested:
                out.replies.append(request_reply(packet, QnRtn.CN_ERROR))
            return
        if cn in DATA_COMMANDS:
            whole: Hj212Packet | None = packet
            if packet.is_split:
                try:
                    whole, abandoned = self._assembler.add(packet, now)
                except Hj212Error as exc:
                    self._reject(out, Hj212Rejection(exc.reason, exc.detail, frame.raw, packet.mn, packet.qn, cn))
                    return
                for dropped in abandoned:
                    self._reject(out, dropped)
            if whole is not None and not self._publish(out, whole, frame.raw, now):
                return
            self._accepted(packet, now, observe=False)
        else:
            self._accepted(packet, now)
        if packet.ack_requested:
            # The data reply follows the publications of this chunk (the adapter publishes first).
            out.replies.append(data_reply(packet))

    def _accepted(self, packet: Hj212Packet, now: float, observe: bool = True) -> None:
        self._counters.packets += 1
        self.devices.add(packet.mn)
        if self._downlink is not None:
            self._downlink.connected(packet.mn, packet)
            if observe:
                self._downlink.on_packet(packet, now)

    def _publish(self, out: SessionOutput, packet: Hj212Packet, raw: bytes, now: float) -> bool:
        site = self._sites(packet.mn) if self._sites is not None else None
        try:
            mapping = packet_to_telemetry(packet, self._policy.tz, site)
        except Hj212Error as exc:
            self._reject(out, Hj212Rejection(exc.reason, exc.detail, raw, packet.mn, packet.qn, packet.cn))
            return False
        self._counters.fields_dropped += mapping.dropped_fields
        resent = self._downlink.on_packet(packet, now) if self._downlink is not None else False
        topic = device_topic(Kind.EMISSION, packet.mn, Channel.TELEMETRY)
        for message in mapping.messages:
            if resent:
                message.metrics[RESENT_METRIC] = True
            out.publications.append(Publication(topic, encode(message)))
        return True

    def _authenticate(self, packet: Hj212Packet) -> Hj212Reject | None:
        if self._verified.get(packet.mn) == packet.pw:
            return None
        expected = self._passwords.lookup(packet.mn) if self._passwords is not None else None
        if expected is None:
            if not self._policy.accept_unknown_devices:
                return Hj212Reject.UNKNOWN_DEVICE
        elif not hmac.compare_digest(expected.encode(), packet.pw.encode()):
            return Hj212Reject.BAD_PASSWORD
        self._verified[packet.mn] = packet.pw
        return None
