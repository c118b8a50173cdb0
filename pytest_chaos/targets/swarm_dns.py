"""The local swarm's upstream DNS server: "no such name" to every question, at the
hub's address (see :class:`NameAnswerer`)."""

from __future__ import annotations

import contextlib
import os
import socket
import threading

from .. import dnswire


class NameAnswerer:
    """A DNS server at the hub's address that says "no such name" to every question.

    Docker's embedded DNS answers the names of the swarm's services and sends any
    other question to the engine's upstream servers. The nodes have no route out of
    their namespaces (nothing of ours reaches another network), so an upstream
    question would go unanswered: measured here, a name that does not resolve took
    20 s to fail, and a client resolving the name of a service scaled to no task
    (a stop) stalled that long, where a real network answers "no such name" at once.
    Every engine of the swarm is given this server as its upstream."""

    def __init__(self, hub: str, address: str) -> None:
        from .netns import NetNamespace, in_namespace

        fd = os.open(f"/run/netns/{hub}", os.O_RDONLY | os.O_CLOEXEC)
        try:
            ns = NetNamespace(fd, os.fstat(fd).st_ino, "the swarm's hub")

            def bind() -> socket.socket:
                sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                sock.bind((address, 53))
                return sock

            self._sock = in_namespace(ns, bind)
        finally:
            os.close(fd)
        self._thread = threading.Thread(target=self._serve, name="pytest-chaos-dns", daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while True:
            try:
                query, peer = self._sock.recvfrom(4096)
            except OSError:
                return
            answer = dnswire.answer(query, dnswire.NXDOMAIN)
            if answer is not None:
                with contextlib.suppress(OSError):
                    self._sock.sendto(answer, peer)

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self._sock.shutdown(socket.SHUT_RDWR)
        self._sock.close()
        self._thread.join(timeout=5)
