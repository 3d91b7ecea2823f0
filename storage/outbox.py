"""A durable on-disk outbox: append-only segment files and a committed position.

The MQTT handler appends one frame per batch of lines and returns; the message is acknowledged
only after that, so a line the handler accepted is in the file before the broker forgets it.
The drainer reads frames from the committed position, writes them to the backend, then moves
the committed position on. A crash between the write and the commit replays that batch, which
is harmless because the same lines make the same points (see ``lineproto``).

On disk (one folder):
- ``{n:010d}.seg``  frames: ``<magic u16><length u32><crc32 u32><lines u32>`` + payload (lines
  joined by ``\\n``). A torn or corrupt tail (power loss) is found by the CRC and cut at open.
- ``committed``     ``{segment} {offset}``: where the next unsent frame starts (replaced atomically).

Durability (``fsync``): ``batch`` fdatasyncs after every append (survives power loss; ~0.15 ms
per handler call here), ``interval`` leaves it to ``sync()`` called every ``fsync_interval_s``
(survives a process crash at once, power loss up to the interval), ``off`` never syncs.

Disk full: a write the disk refuses (or a short write) is cut off again (``ftruncate`` to the
last whole frame, so no torn frame is left in the middle of a segment) and raised as
``OutboxError``; the caller must not acknowledge what it could not append. ``min_free_bytes``
keeps the last bytes of the disk for the rest of the platform (alerting's database, the rules
journal): an append that would leave less free is refused the same way.

Bound: at most ``max_bytes`` of segments. When full, ``drop_oldest`` deletes the oldest segment
(the oldest unsent points) and ``drop_newest`` refuses the new frame; both count the lines
lost in ``counters["dropped"]`` and log a warning. Nothing is dropped silently.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import struct
import time
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final, Literal

from storage.errors import StorageError

log = logging.getLogger(__name__)

FsyncPolicy = Literal["batch", "interval", "off"]
OverflowPolicy = Literal["drop_oldest", "drop_newest"]

MAGIC: Final = 0x5642
_HEADER: Final = struct.Struct("<HIII")
HEADER_SIZE: Final = _HEADER.size
MAX_FRAME: Final = 256 * 1024 * 1024
_WARN_EVERY_S: Final = 5.0


class OutboxError(StorageError):
    """The outbox folder cannot be used (permissions, disk)."""


@dataclass(frozen=True, order=True, slots=True)
class Position:
    """A place in the outbox: segment number and byte offset inside it."""

    segment: int
    offset: int


@dataclass(slots=True)
class OutboxBatch:
    """Frames read from the outbox and the position just after them."""

    frames: list[bytes]
    lines: int
    end: Position
    starts: list[tuple[Position, int]] = field(default_factory=list)
    """Where each frame starts and how many lines it holds."""

    def body(self) -> bytes:
        """All lines, newline-separated (a write request body before compression)."""
        return b"\n".join(self.frames)

    def split_lines(self) -> list[bytes]:
        """Each line on its own (to isolate a bad one)."""
        out: list[bytes] = []
        for frame in self.frames:
            out.extend(frame.split(b"\n"))
        return out


@dataclass(slots=True)
class _Segment:
    number: int
    path: Path
    size: int = 0
    lines: int = 0


@dataclass(slots=True)
class _Scan:
    size: int
    lines: int
    boundaries: dict[int, int] = field(default_factory=dict)
    """Frame start offset -> lines before it."""


def encode_frame(payload: bytes, lines: int) -> bytes:
    """One frame: header and payload."""
    return _HEADER.pack(MAGIC, len(payload), zlib.crc32(payload), lines) + payload


class Outbox:
    """Append-only, size-bounded, crash-safe queue of line-protocol lines on disk."""

    def __init__(self, directory: Path, *, max_bytes: int = 1 << 30, segment_bytes: int = 16 << 20,
                 fsync: FsyncPolicy = "batch", overflow: OverflowPolicy = "drop_oldest",
                 min_free_bytes: int = 0) -> None:
        if segment_bytes <= 0 or max_bytes < 2 * segment_bytes:
            raise ValueError("outbox max_bytes must be at least twice segment_bytes")
        self.directory = directory
        self.max_bytes = max_bytes
        self.segment_bytes = segment_bytes
        self.fsync = fsync
        self.overflow = overflow
        self.min_free_bytes = min_free_bytes
        self.counters: dict[str, int] = {
            "appended": 0, "committed": 0, "dropped": 0, "overflows": 0, "torn_bytes": 0, "corrupt_bytes": 0,
            "fsyncs": 0, "write_errors": 0, "committed_write_errors": 0,
        }
        self.last_error: str | None = None
        self._free_checked = 0.0
        self._free = -1
        self._segments: list[_Segment] = []
        self._fd: int | None = None
        self._committed = Position(0, 0)
        self._committed_lines_in_head = 0
        self._pending_lines = 0
        self._total_bytes = 0
        self._reader: tuple[int, int] | None = None  # (segment number, fd)
        self._last_warning = 0.0
        self._dirty = False

    # ------------------------------------------------------------------ open / close

    def open(self) -> None:
        """Scan the folder, cut torn tails, restore the committed position.

        Raises:
            OutboxError: the folder cannot be created or read.
        """
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            paths = sorted(self.directory.glob("*.seg"))
        except OSError as exc:
            raise OutboxError(f"outbox {self.directory}: {exc}") from exc
        committed = self._read_committed()
        for path in paths:
            try:
                number = int(path.stem)
            except ValueError:
                continue
            if number < committed.segment:
                path.unlink(missing_ok=True)  # fully sent before the last stop
                continue
            scan = self._scan(path)
            seg = _Segment(number, path, scan.size, scan.lines)
            if number == committed.segment and committed.offset:
                if committed.offset in scan.boundaries:
                    self._committed_lines_in_head = scan.boundaries[committed.offset]
                elif committed.offset == scan.size:
                    self._committed_lines_in_head = scan.lines
                else:
                    log.warning("outbox %s: committed offset %d is not a frame start; resending segment %d",
                                self.directory, committed.offset, number)
                    committed = Position(number, 0)
            self._segments.append(seg)
        if not self._segments or self._segments[0].number != committed.segment:
            committed = Position(self._segments[0].number if self._segments else committed.segment, 0)
            self._committed_lines_in_head = 0
        self._committed = committed
        self._total_bytes = sum(s.size for s in self._segments)
        self._pending_lines = sum(s.lines for s in self._segments) - self._committed_lines_in_head
        next_number = self._segments[-1].number + 1 if self._segments else committed.segment + 1
        self._start_segment(next_number)
        if self._pending_lines:
            log.info("outbox %s: %d lines pending from before", self.directory, self._pending_lines)

    def flush(self) -> None:
        """Sync the active segment (unless ``fsync`` is off) and record the committed position; stays open."""
        if self._fd is not None and self.fsync != "off":
            os.fdatasync(self._fd)
            self._dirty = False
        self._write_committed()

    def close(self) -> None:
        """Sync and close the files (the outbox can be opened again later)."""
        if self._fd is not None:
            if self.fsync != "off":
                os.fdatasync(self._fd)
            os.close(self._fd)
            self._fd = None
        self._close_reader()
        self._write_committed()

    # ------------------------------------------------------------------ appending

    @property
    def pending_lines(self) -> int:
        """Lines appended but not yet committed."""
        return self._pending_lines

    @property
    def pending_bytes(self) -> int:
        """Bytes of segments on disk (including the sent part of the oldest one)."""
        return self._total_bytes

    def append(self, lines: list[str]) -> bool:
        """Append lines as one frame (one write call); False when the overflow policy refused them.

        Raises:
            OutboxError: the disk refused the write (full, read-only).
        """
        if not lines:
            return True
        payload = "\n".join(lines).encode("utf-8")
        return self.append_payload(payload, len(lines))

    def append_payload(self, payload: bytes, lines: int) -> bool:
        """Append an already-joined payload of ``lines`` lines (see ``append``)."""
        frame = encode_frame(payload, lines)
        if len(frame) > MAX_FRAME:
            raise OutboxError(f"frame of {len(frame)} bytes exceeds {MAX_FRAME}")
        try:
            if self._total_bytes + len(frame) > self.max_bytes and not self._make_room(len(frame), lines):
                return False
            self._check_free(len(frame))
            if self._fd is None:  # a rotation failed half-way (disk full): open the next segment now
                self._start_segment(self._segments[-1].number + 1)
            head = self._segments[-1]
            if head.size and head.size + len(frame) > self.segment_bytes:
                self._rotate()
                head = self._segments[-1]
            assert self._fd is not None
            try:
                written = os.write(self._fd, frame)
                if written != len(frame):
                    raise OSError(errno.ENOSPC, f"short write ({written} of {len(frame)} bytes)")
                if self.fsync == "batch":
                    os.fdatasync(self._fd)
                    self.counters["fsyncs"] += 1
                else:
                    self._dirty = True
            except OSError:
                # Cut what part of the frame reached the file: a torn frame mid-segment would
                # hide every later frame from the reader.
                with contextlib.suppress(OSError):
                    os.ftruncate(self._fd, head.size)
                raise
        except OSError as exc:
            self.counters["write_errors"] += 1
            self.last_error = str(exc)
            self._free_checked = 0.0
            raise OutboxError(f"outbox {self.directory}: {exc}") from exc
        self.last_error = None
        head.size += len(frame)
        head.lines += lines
        self._total_bytes += len(frame)
        self._pending_lines += lines
        self.counters["appended"] += lines
        return True

    def free_bytes(self) -> int:
        """Free space of the outbox's file system now (bytes available to this process)."""
        st = os.statvfs(self.directory)
        return st.f_bavail * st.f_frsize

    def _check_free(self, need: int) -> None:
        if self.min_free_bytes <= 0:
            return
        now = time.monotonic()
        # statvfs costs a few µs: look often only when space is getting short.
        if self._free < 0 or self._free - need < 4 * self.min_free_bytes or now - self._free_checked >= 0.5:
            self._free = self.free_bytes()
            self._free_checked = now
        else:
            self._free -= need
        if self._free - need < self.min_free_bytes:
            raise OSError(errno.ENOSPC, f"disk nearly full: {self._free} bytes free, "
                                        f"{self.min_free_bytes} kept for the rest of the platform")

    def sync_handle(self) -> int | None:
        """A duplicate of the active segment's descriptor to fdatasync in a thread (caller closes it)."""
        if self._fd is None or not self._dirty:
            return None
        self._dirty = False
        self.counters["fsyncs"] += 1
        return os.dup(self._fd)

    def sync(self) -> None:
        """fdatasync the active segment now (in the calling thread)."""
        fd = self.sync_handle()
        if fd is not None:
            try:
                os.fdatasync(fd)
            finally:
                os.close(fd)

    def _make_room(self, frame_len: int, lines: int) -> bool:
        self.counters["overflows"] += 1
        if self.overflow == "drop_newest":
            self.counters["dropped"] += lines
            self._warn(f"outbox full ({self._total_bytes} bytes): refused {lines} new lines "
                       f"(dropped so far: {self.counters['dropped']})")
            return False
        if len(self._segments) == 1:
            self._rotate()
        dropped = 0
        while self._total_bytes + frame_len > self.max_bytes and len(self._segments) > 1:
            seg = self._segments.pop(0)
            lost = seg.lines - self._committed_lines_in_head
            dropped += lost
            self._pending_lines -= lost
            self._total_bytes -= seg.size
            self._committed_lines_in_head = 0
            if self._reader is not None and self._reader[0] == seg.number:
                self._close_reader()
            seg.path.unlink(missing_ok=True)
            self._committed = Position(self._segments[0].number, 0)
        self._write_committed()
        self.counters["dropped"] += dropped
        self._warn(f"outbox full: dropped the oldest {dropped} unsent lines "
                   f"(dropped so far: {self.counters['dropped']})")
        return True

    def _warn(self, text: str) -> None:
        now = time.monotonic()
        if now - self._last_warning >= _WARN_EVERY_S:
            self._last_warning = now
            log.warning("outbox %s: %s", self.directory, text)

    def _start_segment(self, number: int) -> None:
        path = self.directory / f"{number:010d}.seg"
        self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        self._segments.append(_Segment(number, path, os.fstat(self._fd).st_size, 0))
        if self.fsync != "off":
            self._sync_directory()

    def _rotate(self) -> None:
        assert self._fd is not None
        if self.fsync != "off":
            os.fdatasync(self._fd)
        os.close(self._fd)
        self._fd = None
        self._dirty = False
        self._start_segment(self._segments[-1].number + 1)

    def _sync_directory(self) -> None:
        with contextlib.suppress(OSError):
            dfd = os.open(self.directory, os.O_RDONLY)
            try:
                os.fsync(dfd)
            finally:
                os.close(dfd)

    # ------------------------------------------------------------------ draining

    def peek(self, max_lines: int, max_bytes: int = 64 << 20) -> OutboxBatch | None:
        """The next frames from the committed position (at least one frame), or None when empty."""
        frames: list[bytes] = []
        starts: list[tuple[Position, int]] = []
        lines = 0
        size = 0
        pos = self._committed
        for idx, seg in enumerate(self._segments):
            if seg.number < pos.segment:
                continue
            offset = pos.offset if seg.number == pos.segment else 0
            while offset < seg.size and lines < max_lines and size < max_bytes:
                frame = self._read_frame(seg, offset)
                if frame is None:
                    offset = seg.size  # corrupt rest of segment: skipped, counted, logged
                    break
                payload, count = frame
                frames.append(payload)
                starts.append((Position(seg.number, offset), count))
                lines += count
                size += len(payload)
                offset += HEADER_SIZE + len(payload)
            pos = Position(seg.number, offset)
            if lines >= max_lines or size >= max_bytes:
                break
            if offset >= seg.size and idx + 1 < len(self._segments):
                pos = Position(self._segments[idx + 1].number, 0)
        if not frames:
            if pos != self._committed:
                self._advance(pos, 0)  # only corrupt bytes were skipped
            return None
        return OutboxBatch(frames, lines, pos, starts)

    def commit(self, batch: OutboxBatch) -> None:
        """Mark a batch as written; finished segments are deleted."""
        if batch.end <= self._committed:
            return  # overtaken by an overflow drop while in flight
        # An overflow drop while the batch was in flight may have removed its first frames.
        lines = sum(count for start, count in batch.starts if start >= self._committed)
        self._advance(batch.end, lines)
        self.counters["committed"] += lines

    def _advance(self, pos: Position, lines: int) -> None:
        while self._segments and self._segments[0].number < pos.segment:
            seg = self._segments.pop(0)
            lines_here = seg.lines - self._committed_lines_in_head
            self._committed_lines_in_head = 0
            lines -= lines_here
            self._pending_lines -= lines_here
            self._total_bytes -= seg.size
            if self._reader is not None and self._reader[0] == seg.number:
                self._close_reader()
            seg.path.unlink(missing_ok=True)
        self._committed_lines_in_head += lines
        self._pending_lines -= lines
        self._committed = pos
        self._write_committed()

    def _read_frame(self, seg: _Segment, offset: int) -> tuple[bytes, int] | None:
        if self._reader is None or self._reader[0] != seg.number:
            self._close_reader()
            self._reader = (seg.number, os.open(seg.path, os.O_RDONLY))
        fd = self._reader[1]
        header = os.pread(fd, HEADER_SIZE, offset)
        ok = len(header) == HEADER_SIZE
        if ok:
            magic, length, crc, count = _HEADER.unpack(header)
            payload = os.pread(fd, length, offset + HEADER_SIZE) if magic == MAGIC and length <= MAX_FRAME else b""
            ok = magic == MAGIC and len(payload) == length and zlib.crc32(payload) == crc
        if not ok:
            self.counters["corrupt_bytes"] += seg.size - offset
            log.error("outbox %s: corrupt frame in segment %d at offset %d; skipping its last %d bytes",
                      self.directory, seg.number, offset, seg.size - offset)
            return None
        return payload, count

    def _close_reader(self) -> None:
        if self._reader is not None:
            os.close(self._reader[1])
            self._reader = None

    # ------------------------------------------------------------------ files

    def _scan(self, path: Path) -> _Scan:
        """Walk a segment's frames; cut the file at the first torn or corrupt frame."""
        scan = _Scan(0, 0)
        with open(path, "rb") as fh:
            data = fh.read()
        offset = 0
        while offset + HEADER_SIZE <= len(data):
            magic, length, crc, count = _HEADER.unpack_from(data, offset)
            end = offset + HEADER_SIZE + length
            if magic != MAGIC or end > len(data) or zlib.crc32(data[offset + HEADER_SIZE:end]) != crc:
                break
            scan.boundaries[offset] = scan.lines
            scan.lines += count
            offset = end
        scan.size = offset
        if offset < len(data):
            self.counters["torn_bytes"] += len(data) - offset
            log.warning("outbox %s: cutting %d bytes of a torn or corrupt tail", path, len(data) - offset)
            with open(path, "r+b") as fh:
                fh.truncate(offset)
        return scan

    def _read_committed(self) -> Position:
        path = self.directory / "committed"
        try:
            seg, off = path.read_text(encoding="ascii").split()
            return Position(int(seg), int(off))
        except FileNotFoundError:
            return Position(0, 0)
        except (OSError, ValueError):
            log.warning("outbox %s: unreadable committed position; resending everything kept", self.directory)
            return Position(0, 0)

    def _write_committed(self) -> None:
        # Not fsynced: losing it on power loss only resends points, which is idempotent. For the
        # same reason a failure (disk full) is counted and logged, not raised: the position in
        # memory is right, and the file catches up at the next commit.
        tmp = self.directory / "committed.tmp"
        try:
            tmp.write_text(f"{self._committed.segment} {self._committed.offset}\n", encoding="ascii")
            os.replace(tmp, self.directory / "committed")
        except OSError as exc:
            self.counters["committed_write_errors"] += 1
            self._warn(f"cannot record the committed position ({exc}); a restart would resend points")
