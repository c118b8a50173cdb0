"""DNS messages on the wire, the little of them pytest-chaos reads and writes: the
question of a query, and the answer a server gives that fails (SERVFAIL) or knows no
such name (NXDOMAIN), with the query's id, opcode, recursion flag and question."""

from __future__ import annotations

from dataclasses import dataclass

SERVFAIL = 2
NXDOMAIN = 3


@dataclass(frozen=True)
class Question:
    """A query's question: its name (lower case, no final dot), and where the question
    (its type and class included) ends in the message."""

    name: str
    end: int


def question(message: bytes) -> Question | None:
    """The question of a DNS query of one question, or None for what is not one (an
    answer, several questions or none, a message cut short, a pointer in the name)."""
    if len(message) < 12 or message[2] & 0x80 or int.from_bytes(message[4:6], "big") != 1:
        return None
    labels = []
    at = 12
    while True:
        if at >= len(message):
            return None
        length = message[at]
        if length == 0:
            at += 1
            break
        if length & 0xC0 or at + 1 + length > len(message):
            return None  # a pointer has no place in a query's question; or cut short
        labels.append(message[at + 1 : at + 1 + length].decode("ascii", "replace").lower())
        at += 1 + length
    if at + 4 > len(message):
        return None  # no type and class
    return Question(".".join(labels), at + 4)


def answer(message: bytes, rcode: int) -> bytes | None:
    """The answer with ``rcode`` and no records to the query ``message`` (None if it
    is not one): its id and question, opcode and recursion desired kept, recursion
    available set."""
    asked = question(message)
    if asked is None:
        return None
    flags = 0x8000 | (message[2] & 0x79) << 8 | 0x80 | rcode
    return message[:2] + flags.to_bytes(2, "big") + b"\0\1\0\0\0\0\0\0" + message[12 : asked.end]
