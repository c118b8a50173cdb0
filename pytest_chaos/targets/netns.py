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

from ..errors import EnvironmentProblem, FaultError, PermissionProblem, UnsafeTarget
from ..errors import hide_chaos_errors as __tracebackhide__  # noqa: F401


@dataclass(frozen=True)
class NetNamespace:
    fd: int
    inode: int
    owner: str

    def run(self, argv: Sequence[str], *, input_text: str | None = None) -> str:
        """Run ``argv`` inside this namespace (through nsenter); return its stdout."""
        tool = argv[0]
        if shutil.which(tool) is None:
            raise EnvironmentProblem(
                f"{tool} is not installed: apt-get install nftables iproute2 iptables."
            )
        if shutil.which("nsenter") is None:
            raise EnvironmentProblem("nsenter is missing: apt-get install util-linux.")
        try:
            done = subprocess.run(
                ["nsenter", f"--net=/proc/self/fd/{self.fd}", *argv],
                input=input_text,
                capture_output=True,
                text=True,
                pass_fds=(self.fd,),
                timeout=15,
                check=False,
            )
        except subprocess.TimeoutExpired as exc:
            raise FaultError(f"{tool} in {self.owner}'s namespace did not finish in 15 s.") from exc
        if done.returncode != 0:
            message = done.stderr.strip() or done.stdout.strip()
            if "Operation not permitted" in message:
                raise PermissionProblem(
                    f"{tool} in {self.owner}'s network namespace was refused: "
                    "run pytest as root (sudo)."
                )
            raise FaultError(f"{tool} failed in {self.owner}'s network namespace: {message}")
        return done.stdout


_CLONE_NEWNET = 0x40000000


def netlink_socket(ns: NetNamespace) -> socket.socket:
    """A NETLINK_ROUTE socket that lives in ``ns``. ``setns`` moves only the calling
    thread, so a short-lived thread enters the namespace and opens the socket there
    (a socket keeps the namespace it was created in); pytest's threads never move,
    and nothing forks (a forked pytest would run its finalizers twice)."""
    return _netlink_socket_from_thread(
        lambda libc: int(libc.setns(ns.fd, _CLONE_NEWNET)),
        f"cannot enter {ns.owner}'s network namespace",
    )


def scratch_netlink_socket() -> socket.socket:
    """A NETLINK_ROUTE socket in a fresh, empty network namespace of our own (a
    thread unshares it and opens the socket; the namespace goes away with the
    socket). For questions to the kernel that must not touch any real interface."""
    return _netlink_socket_from_thread(
        lambda libc: int(libc.unshare(_CLONE_NEWNET)), "cannot make a scratch network namespace"
    )


def _netlink_socket_from_thread(move: Callable[[ctypes.CDLL], int], failure: str) -> socket.socket:
    made: dict[str, object] = {}

    def move_and_open() -> None:
        libc = ctypes.CDLL(None, use_errno=True)
        if move(libc) != 0:
            made["error"] = os.strerror(ctypes.get_errno())
            return
        made["socket"] = socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM, 0)

    thread = threading.Thread(target=move_and_open, name="pytest-chaos-netns")
    thread.start()
    thread.join()
    sock = made.get("socket")
    if not isinstance(sock, socket.socket):
        raise PermissionProblem(f"{failure} ({made.get('error')}): run pytest as root (sudo).")
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
