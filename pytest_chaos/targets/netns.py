"""A service's network namespace, pinned by a file descriptor, and commands run in
it. Rules go into the target container's namespace only: the host's own namespace
and pytest's are refused."""

from __future__ import annotations

import contextlib
import ctypes
import os
import shutil
import socket
import subprocess
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from ..errors import EnvironmentProblem, FaultError, PermissionProblem, UnsafeTarget
from ..errors import hide_chaos_errors as __tracebackhide__  # noqa: F401
from . import nft


@dataclass(frozen=True)
class NetNamespace:
    fd: int
    inode: int
    owner: str

    def run(self, argv: Sequence[str], *, input_text: str | None = None) -> str:
        """Run ``argv`` inside this namespace; return its stdout. ``nft`` commands go
        through libnftables where it loads (no process at all: a worker thread that
        lives in the namespace, see :func:`nft.run_in`); other tools are started by a
        thread that entered the namespace (no ``nsenter`` in between)."""
        tool = argv[0]
        if tool == "nft" and nft.available() and nft.understood(argv[1:]):
            return self._nft(argv[1:], input_text)
        if shutil.which(tool) is None:
            raise EnvironmentProblem(
                f"{tool} is not installed: apt-get install nftables iproute2 iptables."
            )

        def run_here() -> subprocess.CompletedProcess[str]:
            return subprocess.run(
                list(argv), input=input_text, capture_output=True, text=True, timeout=15,
                check=False,
            )  # fmt: skip

        try:
            done = in_namespace(self, run_here)
        except subprocess.TimeoutExpired as exc:
            raise FaultError(f"{tool} in {self.owner}'s namespace did not finish in 15 s.") from exc
        if done.returncode != 0:
            self._failed(tool, done.stderr.strip() or done.stdout.strip())
        return done.stdout

    def _nft(self, args: Sequence[str], input_text: str | None) -> str:
        commands, flags = nft.command_of(args, input_text)
        try:
            outcome = nft.run_in(self.fd, self.inode, commands, flags=flags)
        except PermissionError as exc:
            raise PermissionProblem(
                f"cannot enter {self.owner}'s network namespace ({exc}): run pytest as root (sudo)."
            ) from None
        if not outcome.ok:
            self._failed("nft", outcome.error.strip() or outcome.output.strip())
        return outcome.output

    def _failed(self, tool: str, message: str) -> None:
        if "Operation not permitted" in message:
            raise PermissionProblem(
                f"{tool} in {self.owner}'s network namespace was refused: "
                "run pytest as root (sudo)."
            )
        raise FaultError(f"{tool} failed in {self.owner}'s network namespace: {message}")


T = TypeVar("T")


def in_namespace(ns: NetNamespace, work: Callable[[], T]) -> T:
    """``work()`` called by a short-lived thread that entered ``ns``: what it opens
    (sockets, processes it starts) lives in that namespace. ``setns`` moves only the
    calling thread, so pytest's own threads never move."""
    done: dict[str, Any] = {}

    def enter_and_work() -> None:
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.setns(ns.fd, _CLONE_NEWNET) != 0:
            done["refused"] = os.strerror(ctypes.get_errno())
            return
        try:
            done["result"] = work()
        except BaseException as exc:  # noqa: BLE001 - handed to the caller's thread
            done["error"] = exc

    thread = threading.Thread(target=enter_and_work, name="pytest-chaos-netns")
    thread.start()
    thread.join()
    if "refused" in done:
        raise PermissionProblem(
            f"cannot enter {ns.owner}'s network namespace ({done['refused']}): "
            "run pytest as root (sudo)."
        )
    if "error" in done:
        raise done["error"]
    return done["result"]  # type: ignore[no-any-return]


_CLONE_NEWNET = 0x40000000


def netlink_socket(ns: NetNamespace) -> socket.socket:
    """A NETLINK_ROUTE socket that lives in ``ns`` (a socket keeps the namespace it
    was created in); nothing forks (a forked pytest would run its finalizers twice)."""
    return in_namespace(ns, lambda: socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM, 0))


def scratch_netlink_socket() -> socket.socket:
    """A NETLINK_ROUTE socket in a fresh, empty network namespace of our own (a
    thread unshares it and opens the socket; the namespace goes away with the
    socket). For questions to the kernel that must not touch any real interface."""
    made: dict[str, object] = {}

    def move_and_open() -> None:
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.unshare(_CLONE_NEWNET) != 0:
            made["error"] = os.strerror(ctypes.get_errno())
            return
        made["socket"] = socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM, 0)

    thread = threading.Thread(target=move_and_open, name="pytest-chaos-netns")
    thread.start()
    thread.join()
    sock = made.get("socket")
    if not isinstance(sock, socket.socket):
        raise PermissionProblem(
            f"cannot make a scratch network namespace ({made.get('error')}): "
            "run pytest as root (sudo)."
        )
    return sock


def _inode(path: str) -> int:
    return os.stat(path).st_ino


@contextlib.contextmanager
def open_netns(pid: int, owner: str) -> Iterator[NetNamespace]:
    """Pin the network namespace of ``pid``; refuse the host's and our own."""
    try:
        fd = os.open(f"/proc/{pid}/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        raise UnsafeTarget(f"{owner}: process {pid} is gone; is the service running?") from None
    except PermissionError:
        raise PermissionProblem(
            f"cannot open {owner}'s network namespace: run pytest as root (sudo)."
        ) from None
    try:
        inode = os.fstat(fd).st_ino
        for other, what in (
            ("/proc/1/ns/net", "the host's"),
            ("/proc/self/ns/net", "pytest's own"),
        ):
            with contextlib.suppress(OSError):
                if _inode(other) == inode:
                    raise UnsafeTarget(
                        f"refusing to change {what} network namespace: {owner} shares it "
                        "(network_mode: host?). Faults act only inside a container's own namespace."
                    )
        yield NetNamespace(fd, inode, owner)
    finally:
        os.close(fd)
