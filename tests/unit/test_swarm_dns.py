"""The local swarm's upstream DNS answer (pytest_chaos.dnswire): "no such name" to any
one-question query, nothing to what is not a query."""

from __future__ import annotations

from pytest_chaos.dnswire import NXDOMAIN, answer


def nxdomain(query: bytes) -> bytes | None:
    return answer(query, NXDOMAIN)


def _query(name: str, *, ident: bytes = b"\x12\x34", flags: bytes = b"\x01\x00") -> bytes:
    labels = b"".join(bytes([len(p)]) + p.encode() for p in name.split("."))
    # One question, and an EDNS record in the additional section (as resolvers send).
    header = ident + flags + b"\x00\x01\x00\x00\x00\x00\x00\x01"
    opt = b"\x00\x00\x29\x04\xd0\x00\x00\x00\x00\x00\x00"
    return header + labels + b"\x00\x00\x01\x00\x01" + opt


def test_a_query_gets_no_such_name_with_its_id_and_question():
    query = _query("redis")
    answer = nxdomain(query)
    assert answer is not None
    assert answer[:2] == b"\x12\x34"
    flags = int.from_bytes(answer[2:4], "big")
    assert flags & 0x8000  # a response
    assert flags & 0x0100  # recursion desired, as asked
    assert flags & 0x0080  # recursion available
    assert flags & 0x000F == 3  # NXDOMAIN
    assert answer[4:12] == b"\x00\x01\x00\x00\x00\x00\x00\x00"
    assert answer[12:] == b"\x05redis\x00\x00\x01\x00\x01"


def test_a_longer_name_and_another_opcode_are_kept():
    answer = nxdomain(_query("tasks.trading-api.example", ident=b"\xff\x00", flags=b"\x08\x00"))
    assert answer is not None
    assert answer[:2] == b"\xff\x00"
    assert (answer[2] >> 3) & 0x0F == 1  # opcode 1 kept
    assert answer[12:].startswith(b"\x05tasks\x0btrading-api\x07example\x00")


def test_what_is_not_a_query_gets_nothing():
    assert nxdomain(b"") is None
    assert nxdomain(b"\x00" * 11) is None
    response = bytearray(_query("redis"))
    response[2] |= 0x80
    assert nxdomain(bytes(response)) is None
    two = bytearray(_query("redis"))
    two[5] = 2
    assert nxdomain(bytes(two)) is None
    assert nxdomain(_query("redis")[:15]) is None  # cut inside the name
