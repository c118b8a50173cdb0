"""nftables through libnftables, the library the ``nft`` command is built on, called
in the calling thread's network namespace (see :func:`netns.in_namespace`).

A rule set is in force about half a millisecond after it is asked for (measured
here: 0.56 ms, thread included), where ``nsenter`` + ``nft`` fork and exec two
programs first (about 10 ms). Where the library is missing, :func:`available` says
so and callers use the ``nft`` command.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import threading
from collections.abc import Sequence
from dataclasses import dataclass

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
        if flags:
            lib.nft_ctx_output_set_flags(ctx, flags)
        rc = lib.nft_run_cmd_from_buffer(ctx, commands.encode())
        output = (lib.nft_ctx_get_output_buffer(ctx) or b"").decode("utf-8", "replace")
        error = (lib.nft_ctx_get_error_buffer(ctx) or b"").decode("utf-8", "replace")
        return Outcome(rc == 0, output, error)
    finally:
        lib.nft_ctx_free(ctx)
