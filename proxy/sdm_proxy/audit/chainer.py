"""Chaining spooled audit events in a process of its own (``sdm gateway --audit-chainer process``).

Chaining (hashing, SQL inserts, the JSON-lines sink) is pure CPU in Python. In the gateway's
process it shares one GIL with the relay, and the two slow each other down far more than their
sums suggest (switching, not work, dominated: docs/benchmarks.md). Here a child, forked before the
gateway starts its event loop or any thread, does that work; the gateway's audit writer hands it
batches of spooled records over a pipe and waits in its worker thread (GIL released).

Nothing about durability changes: the records are in the spool before the child sees them, and
the writer keeps its queue, retries and spool trimming. The child opens its own connection to the
state database; the chain's head lock and the sink's ``flock`` already order writers across
processes (CLI commands write the same chain). If the child dies, the call in flight fails (the
writer re-checks what that batch's commit left in the chain before retrying) and chaining carries
on in the gateway's process, with an error in the log.

The pipe carries pickles between a parent and the child it forked: nothing else can write to it.
"""

from __future__ import annotations

import ctypes
import gc
import logging
import multiprocessing
import os
import signal
import threading
from collections.abc import Iterable, Sequence

from ..errors import AuditUnavailable, SdmError
from .log import AuditLog
from .records import Stamp

log = logging.getLogger("sdm.audit.chainer")

PR_SET_PDEATHSIG, PR_SET_NAME = 1, 15  # linux/prctl.h
PROCESS_NAME = b"sdm-audit-chain"  # what ps shows (the kernel keeps 15 bytes)
STOP_WAIT = 10.0  # seconds the child gets to finish its batch and exit at shutdown
CHAINER_GONE = ("audit log unavailable: the audit chainer process exited; chaining goes on in the "
                "gateway's process")


class ChainerProcess:
    """The gateway's side: ``append_spooled`` and ``known_ids`` of ``AuditLog``, run by the child."""

    def __init__(self, local: AuditLog, conn, process):
        self._local = local  # used once the child is gone
        self._conn = conn
        self._process = process
        self._lock = threading.Lock()  # one call on the pipe at a time
        self._gone = False

    @classmethod
    def start(cls, audit: AuditLog) -> ChainerProcess | None:
        """Fork the child; None (chain in this process) where a fork is not safe or not possible."""
        if threading.active_count() > 1:
            log.warning("audit chainer: this process already runs threads; chaining in the gateway's process")
            return None
        try:
            ctx = multiprocessing.get_context("fork")
        except ValueError:  # no fork on this platform
            return None
        # No database connection may cross the fork (SQLite keeps per-process lock state on each
        # open file): the parent's pooled ones are closed now and reopen on demand.
        audit.db.engine.dispose()
        # Objects alive now are the gateway's long-lived ones (modules, classes, the control plane).
        # Frozen, neither process's garbage collector walks them again: a walk writes to every object
        # it visits, which would give each process its own copy of every page the two still share.
        gc.freeze()
        try:
            parent_end, child_end = ctx.Pipe()
        except OSError as exc:
            log.warning("audit chainer: no pipe (%s); chaining in the gateway's process", exc.strerror or exc)
            return None
        process = ctx.Process(target=_child_main, args=(child_end, parent_end, audit, os.getpid()),
                              name="sdm-audit-chainer", daemon=True)
        try:
            process.start()
        except OSError as exc:  # EAGAIN, ENOMEM: run without one rather than not at all
            parent_end.close()
            child_end.close()
            log.warning("audit chainer: cannot fork (%s); chaining in the gateway's process", exc.strerror or exc)
            return None
        child_end.close()
        return cls(audit, parent_end, process)

    @property
    def pid(self) -> int | None:
        return None if self._gone else self._process.pid

    def append_spooled(self, records: Sequence[tuple], *, only_new: bool = False) -> int:
        return self._call("append_spooled", (records, only_new))

    def known_ids(self, events: Iterable) -> set[str]:
        return self._call("known_ids", [Stamp(ev.id, ev.ts) for ev in events])

    def _call(self, op: str, arg):
        with self._lock:
            if self._gone:
                return _run_op(self._local, op, arg)
            try:
                self._conn.send((op, arg))
                status, value = self._conn.recv()
            except (EOFError, OSError) as exc:
                self._gone = True
                log.error("the audit chainer process is gone (%s); chaining in the gateway's process "
                          "from now on", type(exc).__name__)
                raise AuditUnavailable(CHAINER_GONE) from None
        if status == "ok":
            return value
        raise AuditUnavailable(value)

    def close(self) -> None:
        """Stop the child once the writer has nothing left for it."""
        with self._lock:
            if not self._gone:
                try:
                    self._conn.send(("stop", None))
                except OSError:
                    pass
            self._gone = True
            self._conn.close()
        self._process.join(STOP_WAIT)
        if self._process.is_alive():
            log.error("the audit chainer process did not stop; killing it")
            self._process.kill()
            self._process.join(STOP_WAIT)


def _child_main(conn, parent_end, inherited: AuditLog, parent_pid: int) -> None:
    parent_end.close()
    _die_with(parent_pid)
    # The gateway stops us after its writer drained; a Ctrl-C on the terminal reaches the whole
    # process group and must not cut a batch short. SIGTERM keeps its default: it is how
    # multiprocessing ends a child left running at exit, and a service manager that sends it to
    # every process of the gateway only makes the gateway chain the rest itself.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    audit = _own_audit_log(inherited)
    while True:
        try:
            op, arg = conn.recv()
        except (EOFError, OSError):
            return  # the gateway is gone: nothing more will come
        if op == "stop":
            return
        try:
            reply = ("ok", _run_op(audit, op, arg))
        except AuditUnavailable as exc:
            reply = ("error", exc.message)
        except SdmError as exc:
            reply = ("error", f"audit log unavailable: {exc.message}; the action was refused")
        except Exception as exc:  # noqa: BLE001 - reported to the writer, which retries
            reply = ("error", f"audit log unavailable: {type(exc).__name__}; the action was refused")
        try:
            conn.send(reply)
        except OSError:
            return


def _run_op(audit: AuditLog, op: str, arg):
    """One request of the gateway, run on ``audit`` (in the child, or locally once it is gone)."""
    if op == "append_spooled":
        records, only_new = arg
        return audit.append_spooled(records, only_new=only_new)
    if op == "known_ids":
        return audit.known_ids(arg)
    raise AuditUnavailable(f"audit log unavailable: unknown chainer request {op!r}")


def _die_with(parent_pid: int) -> None:
    """Linux: be killed when the gateway dies, as a thread would be. A batch committing on after
    the gateway was killed could race the next start's spool recovery and be chained twice.
    Also take a name of our own, for ps and top."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        libc.prctl(PR_SET_NAME, PROCESS_NAME, 0, 0, 0)
    except (OSError, AttributeError):
        pass  # not Linux: the pipe's EOF still stops the loop after the batch in hand
    if os.getppid() != parent_pid:  # the gateway died before prctl took effect
        os._exit(0)


def _own_audit_log(inherited: AuditLog) -> AuditLog:
    """The same log through this process's own database connection (the parent closed its pooled
    ones before the fork; the inherited engine is never used here)."""
    from ..control.db import StateDB

    sink = inherited.sink.path if inherited.sink is not None else None
    log.debug("audit chainer %d started", os.getpid())
    return AuditLog(StateDB(inherited.db.url, check=False), jsonl_path=sink, signer=inherited.signer,
                    checkpoint_every=inherited.checkpoint_every)

