"""A seq is never reused: a durable high-water mark beside the store, and the receiver's word.

A store can lose records it had committed — a damaged frame in the WAL (SQLite replays
the log up to the frame before it, and ``quick_check`` passes), an SD card written back
from an image. Its head then lies below seqs that were already chained, perhaps sent;
appending on would give those seqs to other records. Two witnesses outside the database
say so:

The high-water mark (:class:`HighWater`)
    The side file ``<store>.stream`` holds the stream id and the highest seq known
    committed. It is written after a commit (never ahead of one), at most every
    ``every_s`` seconds while the head moves, at a new stream and at close, and made
    durable with ``fdatasync``. It is cheap: two fixed slots of 256 bytes, 4 KiB apart,
    overwritten in place in turn, each with its own CRC, so a write is one block of
    data and no metadata (no rename, no size change), and a write torn by a power cut
    leaves the other slot good. A store that opens below the mark has lost the records
    between its head and the mark (:meth:`agent.store.Store.open` starts a new stream).
    Records committed after the last mark write (at most ``every_s`` seconds' worth)
    are not covered: that window is the receiver's to see.
The receiver's answer (:class:`ConflictWatch`)
    A server that answers ``conflicts > 0`` for records the gateway believes new already
    holds those seqs with other content: the store went back in time (an image restored
    with its side file) and its seqs are being reused. The watch wraps the transport
    and reports the batch, so the writer can start a new stream before more follow.

The file's slots are text, readable with ``cat``::

    {"crc":"5e1c07d2","last_seq":5934,"n":118,"stream":"6f0c…"}␠␠…␠⏎
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # the store imports this module; it needs nothing of the uplink at run time
    from agent.uplink.base import Answer, Batch, Transport

log = logging.getLogger(__name__)

SLOT_BYTES = 256
SLOT_STRIDE = 4096  # one filesystem block per slot: a torn write cannot reach the other
#: The mark is written at most this often while the head moves (and at close).
MARK_EVERY_S = 2.0


@dataclass(frozen=True)
class Mark:
    """What the side file says: the stream and the highest seq known committed in it."""

    stream: str
    last_seq: int
    n: int = 0  # write counter: the slot with the higher one is the newer


def _crc(stream: str, last_seq: int, n: int) -> str:
    text = json.dumps({"last_seq": last_seq, "n": n, "stream": stream}, sort_keys=True, separators=(",", ":"))
    return f"{zlib.crc32(text.encode('utf-8')):08x}"


def _slot(mark: Mark) -> bytes:
    body = json.dumps({"crc": _crc(mark.stream, mark.last_seq, mark.n), "last_seq": mark.last_seq, "n": mark.n,
                       "stream": mark.stream}, sort_keys=True, separators=(",", ":")).encode("utf-8")
    if len(body) >= SLOT_BYTES:
        raise ValueError("stream id too long for the mark slot")
    return body.ljust(SLOT_BYTES - 1) + b"\n"


def _parse_slot(raw: bytes) -> Mark | None:
    try:
        d = json.loads(raw.decode("utf-8"))
        stream, last_seq, n, crc = d["stream"], d["last_seq"], d["n"], d["crc"]
    except (ValueError, KeyError, TypeError, UnicodeDecodeError):
        return None
    if not (isinstance(stream, str) and type(last_seq) is int and type(n) is int and last_seq >= 0):
        return None
    return Mark(stream, last_seq, n) if crc == _crc(stream, last_seq, n) else None


def read_mark(path: Path) -> Mark | None:
    """The newest valid slot of the side file; the plain JSON of coldgate ≤ 0.1 too; None."""
    try:
        data = path.read_bytes()
    except OSError:
        return None
    try:  # coldgate 0.1 wrote {"stream": …, "last_seq": …} with a rename, at close
        d = json.loads(data.decode("utf-8"))
        if isinstance(d, dict) and "crc" not in d and isinstance(d.get("stream"), str):
            seq = d.get("last_seq")
            return Mark(d["stream"], seq if type(seq) is int and seq >= 0 else 0, 0)
    except (ValueError, UnicodeDecodeError):
        pass
    slots = [_parse_slot(data[off:off + SLOT_BYTES]) for off in (0, SLOT_STRIDE)]
    good = [m for m in slots if m is not None]
    return max(good, key=lambda m: m.n) if good else None


class HighWater:
    """Writes the side file; see the module docstring. Not for several writers at once
    (one agent per store); a second process only ever raises the mark."""

    def __init__(self, path: Path, *, every_s: float = MARK_EVERY_S) -> None:
        self.path = path
        self.every_s = every_s
        self._fd: int | None = None
        self._lock = threading.Lock()
        self._written: Mark | None = None
        self._wanted: tuple[str, int] | None = None
        self._written_at = -1e18
        #: how many times the mark was made durable (for the benchmark and status)
        self.writes = 0

    def note(self, stream: str, seq: int) -> None:
        """A commit reached ``seq``: write the mark if it is due (at most every ``every_s``)."""
        self._wanted = (stream, seq)
        if time.monotonic() - self._written_at >= self.every_s:
            self.flush()

    def flush(self) -> bool:
        """Write what was noted, if it is new. False when the file could not be written."""
        wanted = self._wanted
        if wanted is None:
            return True
        with self._lock:
            w = self._written
            if w is not None and (w.stream, w.last_seq) == wanted:
                return True
            try:
                self._write(*wanted)
            except OSError as exc:
                log.warning("cannot write the high-water mark %s: %s", self.path, exc)
                self._written_at = time.monotonic()  # not again before every_s
                return False
        return True

    def set(self, stream: str, seq: int) -> bool:
        """Write the mark now (a new stream): durable before anything is appended to it."""
        self._wanted = (stream, seq)
        return self.flush()

    def _write(self, stream: str, seq: int) -> None:
        if self._fd is None:
            self._open()
        assert self._fd is not None
        current = self._written
        if current is None:
            current = read_mark(self.path)
        n = (current.n if current is not None else 0) + 1
        if current is not None and current.stream == stream and current.last_seq > seq:
            seq = current.last_seq  # another process marked higher: never lower the mark
        mark = Mark(stream, seq, n)
        os.pwrite(self._fd, _slot(mark), (n % 2) * SLOT_STRIDE)
        os.fdatasync(self._fd)
        self._written, self._written_at = mark, time.monotonic()
        self.writes += 1

    def _open(self) -> None:
        legacy = None
        try:
            data = self.path.read_bytes()
            if data[:1] == b"{" and b'"crc"' not in data[:SLOT_BYTES]:
                legacy = read_mark(self.path)
        except OSError:
            data = None
        if legacy is not None:  # rewrite once in slots, by rename: the old text is never torn
            tmp = self.path.with_name(f"{self.path.name}.{os.getpid()}.tmp")
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            try:
                os.pwrite(fd, _slot(legacy), 0)
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(tmp, self.path)
            self._written = legacy
        created = data is None
        self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        if created or legacy is not None:
            _fsync_dir(self.path.parent)

    def close(self, *, flush: bool = True) -> None:
        """Write what is noted (unless ``flush=False``) and close the file."""
        if flush:
            self.flush()
        with self._lock:
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


class ConflictWatch:
    """A transport that tells ``on_conflict(batch, answer)`` when the receiver answers
    ``conflicts > 0``: it holds some of the batch's seqs with other content.

    Wraps any :class:`~agent.uplink.base.Transport` and changes nothing of what it sends
    or answers; the loop acknowledges the batch as before (the server stored it; the
    store carries the conflicting records into the new stream)."""

    def __init__(self, inner: Transport, on_conflict: Callable[[Batch, Answer], None]) -> None:
        self.inner = inner
        self.on_conflict = on_conflict

    def send(self, batch: Batch) -> Answer:
        answer = self.inner.send(batch)
        if answer.conflicts > 0:
            log.error("the receiver holds %d record(s) of batch %s with other content: seqs reused",
                      answer.conflicts, batch.key)
            try:
                self.on_conflict(batch, answer)
            except Exception as exc:  # noqa: BLE001 - the answer still stands; the next conflict reports again
                log.error("the conflicting seqs of batch %s could not be reported: %s", batch.key, exc)
        return answer

    def __getattr__(self, name: str) -> Any:
        # The transport's optional parts (an MQTT transport's ``link()`` for status) stay
        # visible through the wrapper; only ``send`` is watched.
        return getattr(self.inner, name)

    def close(self) -> None:
        self.inner.close()


__all__ = ["MARK_EVERY_S", "ConflictWatch", "HighWater", "Mark", "read_mark"]
