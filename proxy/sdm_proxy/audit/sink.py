"""The JSON-lines sink: an append-only copy of the chain in a file outside the database.

One line per event, in seq order: ``{"seq":N,<canonical body fields>,"hash":"..."}``; after the
event at a checkpointed seq comes a line ``{"type":"audit.checkpoint","seq":N,"hash":..,"ts":..,
"signature":..}``. The file may be shipped elsewhere (S3 with object lock) so that whoever controls
the gateway's database still cannot rewrite history unnoticed.

Writers in several processes (the gateway and `sdm` admin commands) share the file: each write holds
an exclusive ``flock`` on it for the whole append (database transaction included), so lines land in
seq order. The sink remembers the last seq it holds; when it is behind the database (a write failed
after the commit, or the sink was enabled later) the missing events are copied from the database
first, so the file heals itself on the next write.
"""

from __future__ import annotations

import fcntl
import json
import os
from contextlib import contextmanager
from pathlib import Path
from typing import Iterable, Iterator

from ..errors import AuditUnavailable


def event_line(seq: int, body_json: str, hash_: str) -> str:
    """The line for one event, spliced from the canonical body (saves a second json.dumps)."""
    return f'{{"seq":{seq},{body_json[1:-1]},"hash":"{hash_}"}}'


class SinkError(Exception):
    """The sink is in a state we refuse to append to (its message says why)."""


class _LockedSink:
    """An open, exclusively locked sink file (only inside ``JsonlSink.locked()``)."""

    def __init__(self, sink: "JsonlSink", fd: int):
        self._sink = sink
        self.fd = fd

    def last_seq(self) -> int:
        """The seq of the last event line (0 for an empty file); repairs a torn last line."""
        st = os.fstat(self.fd)
        cached = self._sink._cache
        if cached is not None and cached[:2] == (st.st_ino, st.st_size):
            return cached[2]
        seq = self._scan_last_seq(st.st_size)
        self._remember(seq)
        return seq

    def _scan_last_seq(self, size: int) -> int:
        if size == 0:
            return 0
        tail, start = b"", size
        # Read backwards until we hold the whole last line (and know whether it is complete).
        while True:
            step = min(start, 1 << 16)
            start -= step
            tail = os.pread(self.fd, step, start) + tail
            body = tail.rstrip(b"\n") if tail.endswith(b"\n") else tail
            if b"\n" in body or start == 0:
                break
        if not tail.endswith(b"\n"):
            # A write was cut off (crash, full disk): drop the torn line. The event is in the
            # database (the commit comes first), so the backfill writes it again in full.
            cut = tail.rfind(b"\n")
            keep = start + cut + 1 if cut >= 0 else 0
            os.ftruncate(self.fd, keep)
            os.fsync(self.fd)
            return self._scan_last_seq(keep)
        last = tail[:-1].rsplit(b"\n", 1)[-1]
        try:
            seq = json.loads(last)["seq"]
        except (ValueError, KeyError, TypeError):
            raise SinkError(f"the last line of {self._sink.path} is not an audit record") from None
        if not isinstance(seq, int) or seq < 0:
            raise SinkError(f"the last line of {self._sink.path} has no valid seq")
        return seq

    def write_lines(self, lines: Iterable[str], last_seq: int) -> None:
        """Append lines, flush and fsync. On failure cut the file back so no torn line remains."""
        data = "\n".join([*lines, ""]).encode("utf-8")  # each line and its newline, copied once
        if not data:
            return
        start = os.lseek(self.fd, 0, os.SEEK_END)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(self.fd, view):]
            os.fsync(self.fd)
        except BaseException:
            self._sink._cache = None
            try:
                os.ftruncate(self.fd, start)
            except OSError:
                pass  # the next append finds and drops the torn line
            raise
        self._remember(last_seq)

    def _remember(self, seq: int) -> None:
        st = os.fstat(self.fd)
        self._sink._cache = (st.st_ino, st.st_size, seq)


class JsonlSink:
    """A JSON-lines audit file. The parent directory must exist (we do not invent one: fail closed)."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self._cache: tuple[int, int, int] | None = None  # (inode, size, last seq) after our last look

    @contextmanager
    def locked(self) -> Iterator[_LockedSink]:
        try:
            # Opened per append (cheap) so a file moved aside is noticed; 0600: queries are private.
            fd = os.open(self.path, os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except OSError as exc:
            raise AuditUnavailable(
                f"audit log unavailable: cannot open the JSON-lines sink {self.path}: {exc.strerror}; "
                "the action was refused"
            ) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield _LockedSink(self, fd)
        finally:
            os.close(fd)  # also releases the flock
