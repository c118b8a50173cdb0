"""nftables through libnftables, the library the ``nft`` command is built on.

:func:`run_in` hands the commands to a worker thread that entered the target's
network namespace and keeps one libnftables context there: the context's netlink
socket lives in that namespace, and it keeps what it learnt of the rule set between
commands, so a rule set is in force about 0.15 ms after it is asked for (a fresh
context in a fresh thread: 0.9 ms, most of it reading the rule set back first;
``nsenter`` + ``nft``: several ms). A worker idle for 30 s ends (and lets go of the
namespace, which it keeps alive while it lives). Where the library is missing,
:func:`available` says so and callers use the ``nft`` command.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import queue
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

from ..errors import hide_chaos_errors as __tracebackhide__  # noqa: F401

#: The nft command's output options and their libnftables flags (NFT_CTX_OUTPUT_*).
OPTIONS = {"-j": 1 << 4, "--json": 1 << 4, "-s": 1 << 2, "--stateless": 1 << 2}
_lock = threading.Lock()
_lib: ctypes.CDLL | None = None
_tried = False


@dataclass(frozen=True)
class Outcome:
    ok: bool
    output: str
    error: str


def _load() -> ctypes.CDLL | None:
    global _lib, _tried
    with _lock:
        if _tried:
            return _lib
        _tried = True
        name = ctypes.util.find_library("nftables") or "libnftables.so.1"
        try:
            lib = ctypes.CDLL(name, use_errno=True)
        except OSError:
            return None
        vp, cp = ctypes.c_void_p, ctypes.c_char_p
        lib.nft_ctx_new.restype, lib.nft_ctx_new.argtypes = vp, [ctypes.c_uint32]
        lib.nft_ctx_free.restype, lib.nft_ctx_free.argtypes = None, [vp]
        lib.nft_ctx_buffer_output.argtypes = [vp]
        lib.nft_ctx_buffer_error.argtypes = [vp]
        lib.nft_ctx_output_set_flags.restype = None
        lib.nft_ctx_output_set_flags.argtypes = [vp, ctypes.c_uint]
        lib.nft_ctx_get_output_buffer.restype = cp
        lib.nft_ctx_get_output_buffer.argtypes = [vp]
        lib.nft_ctx_get_error_buffer.restype = cp
        lib.nft_ctx_get_error_buffer.argtypes = [vp]
        lib.nft_run_cmd_from_buffer.argtypes = [vp, cp]
        _lib = lib
        return lib


def available() -> bool:
    """Whether libnftables can be loaded (Debian: libnftables1, which nftables needs)."""
    return _load() is not None


def understood(args: Sequence[str]) -> bool:
    """Whether ``nft args`` can go through the library: the output options above,
    then either ``-f -`` or one command."""
    words = [a for a in args if a not in OPTIONS]
    return words == ["-f", "-"] or (bool(words) and not any(w.startswith("-") for w in words))


def command_of(args: Sequence[str], input_text: str | None) -> tuple[str, int]:
    """The commands and output flags ``nft args`` (with ``input_text`` on its stdin
    for ``-f -``) stands for."""
    flags = 0
    for a in args:
        flags |= OPTIONS.get(a, 0)
    words = [a for a in args if a not in OPTIONS]
    return ((input_text or "") if words == ["-f", "-"] else " ".join(words)), flags


def run(commands: str, *, flags: int = 0) -> Outcome:
    """Run nft ``commands`` (the syntax of ``nft -f``) in the calling thread's network
    namespace, as one transaction: all of it applies or none. ``flags``: output
    options (:data:`OPTIONS`)."""
    lib = _load()
    if lib is None:
        raise RuntimeError("libnftables is not available")
    # A context per call: it opens its netlink socket in the namespace of the thread
    # that makes it, and a thread of ours enters one namespace only.
    ctx = lib.nft_ctx_new(0)
    if not ctx:
        return Outcome(False, "", "libnftables could not make a context (out of memory?)")
    try:
        lib.nft_ctx_buffer_output(ctx)
        lib.nft_ctx_buffer_error(ctx)
        return _run_with(lib, ctx, commands, flags)
    finally:
        lib.nft_ctx_free(ctx)


def _run_with(lib: ctypes.CDLL, ctx: int, commands: str, flags: int) -> Outcome:
    """Run ``commands`` with a context whose output and errors are buffered (each
    buffer is emptied as it is read)."""
    lib.nft_ctx_output_set_flags(ctx, flags)
    rc = lib.nft_run_cmd_from_buffer(ctx, commands.encode())
    output = (lib.nft_ctx_get_output_buffer(ctx) or b"").decode("utf-8", "replace")
    error = (lib.nft_ctx_get_error_buffer(ctx) or b"").decode("utf-8", "replace")
    return Outcome(rc == 0, output, error)


# -- a worker per namespace -------------------------------------------------------------

_CLONE_NEWNET = 0x40000000
#: How long a worker waits for its next command before it ends.
IDLE_S = 30.0


@dataclass
class _Job:
    commands: str
    flags: int
    done: threading.Event = field(default_factory=threading.Event)
    outcome: Outcome | None = None


class _Worker:
    """A thread in one network namespace with one libnftables context, running the
    commands given to it in order."""

    def __init__(self, fd: int, inode: int) -> None:
        self.inode = inode
        self.jobs: queue.Queue[_Job] = queue.Queue()
        self._entered = threading.Event()
        self.refused = ""
        self.thread = threading.Thread(
            target=self._serve, args=(fd,), name=f"pytest-chaos-nft-{inode}", daemon=True
        )
        self.thread.start()
        self._entered.wait()

    def _serve(self, fd: int) -> None:
        lib = _load()
        libc = ctypes.CDLL(None, use_errno=True)
        if lib is None or libc.setns(fd, _CLONE_NEWNET) != 0:
            self.refused = os.strerror(ctypes.get_errno()) if lib else "no libnftables"
            self._entered.set()
            return
        ctx = lib.nft_ctx_new(0)
        self._entered.set()
        try:
            lib.nft_ctx_buffer_output(ctx)
            lib.nft_ctx_buffer_error(ctx)
            while (job := self._next()) is not None:
                job.outcome = _run_with(lib, ctx, job.commands, job.flags)
                job.done.set()
        finally:
            lib.nft_ctx_free(ctx)

    def _next(self) -> _Job | None:
        """The next command, or None once idle for IDLE_S (the worker is then out of
        the registry: no command can reach it any more)."""
        while True:
            try:
                return self.jobs.get(timeout=IDLE_S)
            except queue.Empty:
                with _workers_lock:
                    if self.jobs.empty():
                        if _workers.get(self.inode) is self:
                            del _workers[self.inode]
                        return None


_workers: dict[int, _Worker] = {}
_workers_lock = threading.Lock()


def run_in(fd: int, inode: int, commands: str, *, flags: int = 0) -> Outcome:
    """Run nft ``commands`` in the network namespace that ``fd`` (whose inode is
    ``inode``) refers to, through that namespace's worker. The caller holds ``fd``
    open for the call; a worker keeps its namespace alive, so while it is
    registered no other namespace can have its inode."""
    with _workers_lock:
        worker = _workers.get(inode)
        if worker is None or not worker.thread.is_alive():
            worker = _Worker(fd, inode)
            if worker.refused:
                raise PermissionError(worker.refused)
            _workers[inode] = worker
        job = _Job(commands, flags)
        worker.jobs.put(job)
    began = time.monotonic()
    while not job.done.wait(1.0):
        if not worker.thread.is_alive():
            raise RuntimeError("the nftables worker ended before it ran the commands")
        if time.monotonic() - began > 30:
            raise TimeoutError("nftables did not answer in 30 s")
    if job.outcome is None:
        raise RuntimeError("the nftables worker gave no outcome")
    return job.outcome
