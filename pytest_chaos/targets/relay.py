"""A TCP port on the host's loopback carried into a local swarm's hub namespace, where
the host has no route (see :class:`Relay`)."""

from __future__ import annotations

import contextlib
import os
import socket
import threading
from typing import Any

from .netns import NetNamespace, in_namespace


class Relay:
    """A TCP port on 127.0.0.1 in pytest's namespace whose connections are carried to
    ``target()`` (resolved per connection: it follows a task that moved) from a thread
    that entered the swarm's hub namespace: no route or address is added to the host's
    own namespace, and traffic goes only to loopback and to namespaces of the swarm."""

    def __init__(self, target: Any, hub: str) -> None:
        self._target = target
        path = f"/run/netns/{hub}"
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        self._hub = NetNamespace(fd, os.fstat(fd).st_ino, "the swarm's hub")
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = int(self._listener.getsockname()[1])
        self._closed = False
        self._last: tuple[str, int] | None = None
        #: Each open connection: the client's socket, the upstream's, where it goes.
        self._open: set[tuple[socket.socket, socket.socket, tuple[str, int]]] = set()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        threading.Thread(target=self._accept, name="pytest-chaos-relay", daemon=True).start()
        threading.Thread(target=self._follow, name="pytest-chaos-relay", daemon=True).start()

    def _follow(self) -> None:
        """Every half second, where the service's task is now: when it moved (Swarm
        replaced it on another node), kept-alive connections to the old place close."""
        while not self._stop.wait(0.5):
            address = None
            with contextlib.suppress(Exception):  # no task now, or no manager answers
                address = self._target()
            if address is not None:
                self._moved_to(address)

    def _moved_to(self, address: tuple[str, int]) -> None:
        with self._lock:
            last, self._last = self._last, address
        if last is not None and last != address:
            self._close_to(last)

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            threading.Thread(
                target=self._carry, args=(client,), name="pytest-chaos-relay", daemon=True
            ).start()

    def _carry(self, client: socket.socket) -> None:
        try:
            address = self._target()
            # The task moved: connections to where it was are closed, as a load
            # balancer drops a backend that left (clients reconnect, and reach it).
            self._moved_to(address)
            upstream = in_namespace(
                self._hub, lambda: socket.create_connection(address, timeout=2.0)
            )
        except Exception:  # noqa: BLE001 - no task, or its node cut off: the client sees a reset
            with contextlib.suppress(OSError):
                client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\1\0\0\0\0\0\0\0")
            client.close()
            return
        upstream.settimeout(None)
        pair = (client, upstream, address)
        with self._lock:
            self._open.add(pair)
        back = threading.Thread(
            target=_pump, args=(upstream, client), name="pytest-chaos-relay", daemon=True
        )
        back.start()
        _pump(client, upstream)
        back.join()
        with self._lock:
            self._open.discard(pair)
        client.close()
        upstream.close()

    def _close_to(self, address: tuple[str, int] | None) -> None:
        with self._lock:
            pairs = [p for p in self._open if p[2] == address]
        for client, upstream, _ in pairs:
            for sock in (client, upstream):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        self._closed = True
        self._stop.set()
        with contextlib.suppress(OSError):
            self._listener.shutdown(socket.SHUT_RDWR)
        self._listener.close()
        with self._lock:
            pairs = list(self._open)
        for client, upstream, _ in pairs:
            for sock in (client, upstream):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
        os.close(self._hub.fd)


def _pump(source: socket.socket, sink: socket.socket) -> None:
    try:
        while data := source.recv(65536):
            sink.sendall(data)
    except OSError:
        pass
    with contextlib.suppress(OSError):
        sink.shutdown(socket.SHUT_WR)
