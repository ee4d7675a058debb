"""The gateway's audit spool: a write-ahead journal for events not yet in the chain.

Why: chaining an event into the state database and fsyncing the JSON-lines sink costs about a
millisecond, far more than relaying a small query. So the gateway writes each event to this spool
(one ``write(2)``, a few microseconds, made without giving up the GIL: ``_write``) before the
statement runs, and moves spooled events into the chain in batches (group commit) a few
milliseconds later.

What survives what:
- the gateway process dies (crash, ``kill -9``, OOM): nothing is lost, the bytes are in the kernel's
  page cache; the next gateway start chains whatever the dead one had not (``recover_spools``);
- the machine loses power: events of the last flush interval may be lost unless the spool is
  fsynced before the statement runs (``sdm gateway --audit-sync fsync``, or ``commit`` to wait for
  the chain itself). This is the trade PostgreSQL's ``synchronous_commit = off`` makes.

Each gateway owns its spool files (an exclusive ``flock`` while open); a file nobody holds belongs to
a gateway that stopped without draining it. Files are segments: when the first one is fully chained
it is truncated (idle) or, past ``SEGMENT_BYTES``, the spool moves to a new file and the old one is
deleted once chained. One line per event: its canonical body (``prev_hash`` still null).
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import json
import logging
import os
import secrets
from pathlib import Path
from typing import Iterable, NamedTuple

from ..errors import AuditUnavailable
from .events import Event, canonical_json

log = logging.getLogger("sdm.audit.spool")

SUFFIX = ".spool"
SEGMENT_BYTES = 16 << 20  # move to a new file once this much is written and chained
RECOVERY_BATCH = 1000


def _libc_write_holding_gil():
    """``write(2)`` called without releasing the GIL (``ctypes.PyDLL``), or None where unavailable.

    Why: ``os.write`` releases the GIL, the audit chaining thread (which nearly always wants it)
    takes it, and the event loop then waits for it back while that thread runs Python. A spool
    write lands in the page cache in about a microsecond, so keeping the GIL across it costs the
    chaining thread nothing and spares the loop a hand-over per statement. Together with the
    gateway's shorter switch interval (``gateway.GIL_SWITCH_INTERVAL``) this took
    ``benchmarks/audit_rate.py`` from about 16,000 to 26,000 audited statements per second on the
    2-core machine; either change alone did little (docs/benchmarks.md, "The GIL").
    """
    try:
        write = ctypes.PyDLL(None, use_errno=True).write
    except (OSError, AttributeError):
        return None
    write.restype = ctypes.c_ssize_t
    write.argtypes = (ctypes.c_int, ctypes.c_char_p, ctypes.c_size_t)
    return write


_c_write = _libc_write_holding_gil()


GIL_WRITE_MAX = 1 << 16  # larger writes (rare: a huge statement) give the GIL up, as os.write does


def _write(fd: int, data: bytes) -> int:
    """``os.write(fd, data)``, without handing the GIL to another thread for the usual small write."""
    if _c_write is None or type(data) is not bytes or len(data) > GIL_WRITE_MAX:
        n = os.write(fd, data)
    else:
        while True:
            n = _c_write(fd, data, len(data))
            if n >= 0:
                break
            err = ctypes.get_errno()
            if err != errno.EINTR:
                raise OSError(err, os.strerror(err))
    if n == 0 and data:  # a file that takes nothing: fail, never retry forever
        raise OSError(errno.EIO, "the spool file took none of the bytes written")
    return n


class SpoolMark(NamedTuple):
    """A position in the spool: everything written before it sits in ``segment`` up to ``offset``.

    ``offset`` counts every byte ever written to the segment, also those cut away when it started
    over, so marks only grow. A tuple: marks compare (and ``max()``) in spool order for free."""

    segment: int
    offset: int


class _Segment:
    def __init__(self, path: Path, fd: int):
        self.path = path
        self.fd = fd
        self.end = 0  # bytes ever written (marks' offsets); one attribute, so other threads read it whole
        self.start = 0  # ... of which this many were cut away (the file holds end - start)

    @property
    def size(self) -> int:
        return self.end - self.start


class AuditSpool:
    """Append-only event journal of one gateway process (single writer: the event loop's thread)."""

    def __init__(self, directory: Path):
        self.directory = Path(directory)
        self._segments: dict[int, _Segment] = {}
        self._current = -1
        self._synced = SpoolMark(-1, 0)

    def open(self) -> None:
        self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        self._roll()

    @property
    def mark(self) -> SpoolMark:
        return SpoolMark(self._current, self._segments[self._current].end)

    def append(self, events: Iterable[Event]) -> SpoolMark:
        """Write the events; raises ``AuditUnavailable`` when they cannot be written (fail closed)."""
        return self.append_bodies([canonical_json(ev.body_dict()) for ev in events])

    def append_bodies(self, bodies: list[str]) -> SpoolMark:
        """Write events already serialised as their canonical bodies (one line each)."""
        return self.append_chunks([("\n".join(bodies) + "\n").encode("utf-8")])[-1]

    def append_chunks(self, chunks: list[bytes]) -> list[SpoolMark]:
        """Write several callers' lines (each chunk whole lines) with one ``write(2)``; returns the
        mark after each chunk. All or nothing: on failure the file is cut back, no torn line stays."""
        seg = self._segments.get(self._current)
        if seg is None:
            raise AuditUnavailable("audit log unavailable: the audit spool is closed; the action was refused")
        data = chunks[0] if len(chunks) == 1 else b"".join(chunks)
        try:
            written = _write(seg.fd, data)
            while written < len(data):  # short write: finish it (or fail below)
                written += _write(seg.fd, data[written:])
        except OSError as exc:
            try:  # leave no torn line behind: the statement will not run, so neither may its record
                os.ftruncate(seg.fd, seg.size)
            except OSError:
                pass  # recovery drops a torn last line anyway
            raise AuditUnavailable(
                f"audit log unavailable: cannot write the audit spool {seg.path}: {exc.strerror or exc}; "
                "the action was refused") from None
        current, offset = self._current, seg.end
        seg.end += len(data)
        if len(chunks) == 1:
            return [SpoolMark(current, seg.end)]
        marks = []
        for chunk in chunks:
            offset += len(chunk)
            marks.append(SpoolMark(current, offset))
        return marks

    def needs_sync(self, mark: SpoolMark) -> bool:
        return mark > self._synced

    def sync(self) -> SpoolMark:
        """fdatasync the current segment (older ones were synced before the spool left them)."""
        mark = self.mark  # read from a worker thread: a segment the loop just left was synced on leaving
        seg = self._segments.get(mark.segment)
        if seg is not None:
            os.fdatasync(seg.fd)
        if mark > self._synced:
            self._synced = mark
        return mark

    def chained(self, mark: SpoolMark) -> None:
        """Everything up to ``mark`` is in the chain: drop what no longer needs keeping."""
        for number in [n for n in self._segments if n < mark.segment]:
            self._drop(number)
        seg = self._segments.get(mark.segment)
        if seg is None or mark.offset < seg.end:
            return
        # Chained events need no fsync any more (the chain's commit is durable): a statement
        # waiting for one in fsync mode may go on.
        self._synced = max(self._synced, mark)
        if mark.segment == self._current and seg.size < SEGMENT_BYTES:
            os.ftruncate(seg.fd, 0)  # idle: start over in the same file (O_APPEND writes at 0)
            seg.start = seg.end
        elif mark.segment == self._current:
            self._roll()
            self._drop(mark.segment)
        else:
            self._drop(mark.segment)

    def maybe_roll(self) -> None:
        """Past SEGMENT_BYTES, new events go to a fresh file (the old one goes once it is chained)."""
        if self._segments[self._current].size >= SEGMENT_BYTES:
            os.fdatasync(self._segments[self._current].fd)
            self._roll()

    def close(self) -> None:
        """Close every file; an empty one is removed (a non-empty one is recovered on next start)."""
        for number in list(self._segments):
            seg = self._segments.pop(number)
            if seg.size == 0:
                seg.path.unlink(missing_ok=True)
            os.close(seg.fd)

    def _roll(self) -> None:
        name = f"{os.getpid()}-{secrets.token_hex(6)}"
        # Locked under a name recovery does not look at, then renamed: a recovery in another gateway
        # can never take (and unlink) the file between its creation and our lock.
        claiming = self.directory / f"{name}.new"
        fd = os.open(claiming, os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # ours while we live
        path = self.directory / f"{name}{SUFFIX}"
        os.rename(claiming, path)
        self._current += 1
        self._segments[self._current] = _Segment(path, fd)

    def _drop(self, number: int) -> None:
        seg = self._segments.pop(number, None)
        if seg is not None:
            seg.path.unlink(missing_ok=True)
            os.close(seg.fd)


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except FileNotFoundError:  # a live gateway dropped that segment meanwhile: the open below skips it
        return 0.0


def recover_spools(directory: Path, audit_log) -> int:
    """Chain the events of spool files no live gateway holds; returns how many were added.

    Safe to run at any time: files held (``flock``) by a running gateway are skipped, and events the
    chain already has (the crash came between the commit and the truncation) are not added twice.
    """
    directory = Path(directory)
    if not directory.is_dir():
        return 0
    added = 0
    for path in sorted(directory.glob(f"*{SUFFIX}"), key=_mtime):
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            continue
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                continue  # a live gateway's spool
            with os.fdopen(os.dup(fd), "rb") as f:
                events = list(_read_events(f, path))
            if events:
                added += _chain_missing(audit_log, events)
            path.unlink(missing_ok=True)
        finally:
            os.close(fd)
    if added:
        log.warning("recovered %d audit event(s) from the spool of a gateway that stopped unexpectedly", added)
    return added


def _read_events(f, path: Path):
    for number, raw in enumerate(f, 1):
        if not raw.endswith(b"\n"):
            # Torn by a crash mid-write: that write never returned, so its statement never ran.
            log.warning("audit spool %s: dropped a torn last line", path.name)
            return
        try:
            yield Event.from_dict(json.loads(raw))
        except (ValueError, TypeError) as exc:
            raise AuditUnavailable(f"audit log unavailable: audit spool {path} line {number} is not an event "
                                   f"({type(exc).__name__}); move it aside after inspection") from None


def _chain_missing(audit_log, events: list[Event]) -> int:
    # One look-up for the whole file: it reads the chain from the file's oldest ts on, once.
    known = audit_log.known_ids(events)
    missing = []
    for ev in events:
        if ev.id not in known:  # the chain has no unique id any more: this is the guard
            known.add(ev.id)  # a line seen twice is chained once
            missing.append(ev)
    for start in range(0, len(missing), RECOVERY_BATCH):
        # only_new: a dead gateway's COMMIT that lands late (PostgreSQL state) is seen under the lock
        audit_log.append_many(missing[start:start + RECOVERY_BATCH], only_new=True)
    return len(missing)
