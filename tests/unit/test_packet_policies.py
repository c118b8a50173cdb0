"""The two faults a packet worker carries out (dns_failure, disorder): DNS messages read
and answered on bytes, the policies' counts proven against generated arrivals, and
each policy in a real worker in a scratch network namespace of our own (loopback
only: nothing outside it is touched)."""

from __future__ import annotations

import os
import random
import secrets
import socket
import struct
import time

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st
from test_netns_commands import _scratch_namespace

from pytest_chaos.faults.delayer import OWN_MARK
from pytest_chaos.faults.disorder import Disorder
from pytest_chaos.faults.dns import matches, parse_query, servfail
from pytest_chaos.faults.nfqueue import Worker
from pytest_chaos.targets.netns import NetNamespace, in_namespace

LABEL = st.from_regex(r"[a-z][a-z0-9-]{0,11}", fullmatch=True)
NAME = st.lists(LABEL, min_size=1, max_size=4).map(".".join)


def dns_query(name: str, ident: int = 0x1234, qtype: int = 1) -> bytes:
    question = b"".join(bytes([len(p)]) + p.encode() for p in name.split(".")) + b"\0"
    return (
        struct.pack(">HHHHHH", ident, 0x0100, 1, 0, 0, 0) + question + struct.pack(">HH", qtype, 1)
    )


def ipv4_udp(payload: bytes, src="127.0.0.1", dst="127.0.0.11", sport=40000, dport=53) -> bytes:
    udp = struct.pack(">HHHH", sport, dport, 8 + len(payload), 0) + payload
    header = struct.pack(">BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), 1, 0, 64, 17, 0,
                         socket.inet_aton(src), socket.inet_aton(dst))  # fmt: skip
    return header + udp


def ones_complement_sum(data: bytes) -> int:
    data += b"\0" * (len(data) % 2)
    total = sum(struct.unpack(f">{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return total


# -- DNS on the wire ------------------------------------------------------------------


@given(NAME, st.integers(0, 0xFFFF), st.sampled_from([1, 28, 33]))
def test_a_query_reads_back_its_name_and_its_servfail_answers_it(name, ident, qtype):
    datagram = ipv4_udp(dns_query(name, ident, qtype), sport=40000 + ident % 1000)
    query = parse_query(datagram)
    assert query is not None
    assert query.name == name
    answer = servfail(datagram, query)
    # Addresses and ports swapped; both checksums hold (a sum of all ones).
    assert answer[12:16] == datagram[16:20]
    assert answer[16:20] == datagram[12:16]
    assert answer[20:22] == datagram[22:24]
    assert answer[22:24] == datagram[20:22]
    assert ones_complement_sum(answer[:20]) == 0xFFFF
    pseudo = answer[12:20] + b"\x00\x11" + answer[24:26]
    assert ones_complement_sum(pseudo + answer[20:]) == 0xFFFF
    message = answer[28:]
    got_id, flags, questions, answers, authority, extra = struct.unpack(">HHHHHH", message[:12])
    assert (got_id, questions, answers, authority, extra) == (ident, 1, 0, 0, 0)
    assert flags & 0x8000  # an answer
    assert flags & 0x000F == 2  # SERVFAIL
    assert flags & 0x0100  # recursion desired, as asked
    assert message[12:] == dns_query(name, ident, qtype)[12:]  # the same question


@pytest.mark.parametrize(
    "datagram",
    [
        b"",
        ipv4_udp(dns_query("db"))[:30],  # cut short
        ipv4_udp(dns_query("db"))[:-2],  # no class
        ipv4_udp(bytes([0x12, 0x34, 0x81, 0x80]) + dns_query("db")[4:]),  # an answer
        ipv4_udp(dns_query("db")[:4] + b"\0\0" + dns_query("db")[6:]),  # no question
        ipv4_udp(dns_query("db")[:12] + b"\xc0\x0c\0\x01\0\x01"),  # a pointer
        ipv4_udp(dns_query("db")[:12] + b"\x3fdb\0\0\x01\0\x01"),  # a label past the end
        b"\x60" + ipv4_udp(dns_query("db"))[1:],  # IPv6 version
        ipv4_udp(dns_query("db"))[:9] + b"\x06" + ipv4_udp(dns_query("db"))[10:],  # TCP
    ],
    ids=[
        "empty",
        "short",
        "no-class",
        "answer",
        "no-question",
        "pointer",
        "long-label",
        "not-v4",
        "not-udp",
    ],
)
def test_what_is_not_a_plain_query_is_not_read_as_one(datagram):
    assert parse_query(datagram) is None


@given(NAME, NAME)
def test_a_name_matches_itself_its_search_expansions_and_the_names_under_it(name, other):
    assert matches(name, [])  # no names: every lookup
    assert matches(name, [name])
    assert matches(f"{name}.{other}", [name])  # a search domain appended
    assert matches(f"{other}.{name}", [name])  # a name under it
    assert matches(name, [name.upper() + "."])


@given(NAME, LABEL)
def test_a_name_that_only_shares_letters_does_not_match(name, extra):
    assume(extra != name)
    assert not matches(name + extra, [name])  # "db" is not "dbx"
    assert not matches(extra + name, [name])  # nor "xdb"
    assert not matches(name, [f"{name}.{extra}"])  # a longer name is not asked for


# -- disorder's counts, against arrivals whose answer is known -------------------------


class FakePacket:
    def __init__(self, number: int, log: list[int]) -> None:
        self.number, self.log = number, log

    def retain(self) -> None:
        pass

    def accept(self) -> None:
        self.log.append(self.number)

    def get_payload(self) -> bytes:
        return b""


@given(
    st.lists(st.floats(0, 0.05), min_size=1, max_size=60),
    st.integers(0, 100),
    st.integers(0, 100),
    st.integers(0, 2**32),
)
def test_disorder_counts_exactly_what_it_did(gaps, reorder, duplicate, seed):
    assume(reorder or duplicate)
    policy = Disorder(
        {"reorder": reorder, "duplicate": duplicate, "gap_ms": 10}, random.Random(seed)
    )
    sent: list[bytes] = []
    policy.send = sent.append  # type: ignore[method-assign]
    delivered: list[int] = []
    now = 0.0
    overtaken = 0
    for number, gap in enumerate(gaps):
        now += gap
        policy.release(now)
        before = len(delivered)
        held_before = policy.holding()
        policy.on_packet(FakePacket(number, delivered), now)
        if len(delivered) > before and held_before:
            overtaken += 1  # sent at once while an earlier one waited
    policy.release_all()
    assert sorted(delivered) == list(range(len(gaps)))  # every packet, once
    counts = policy.counts
    assert counts["packets"] == len(gaps)
    assert counts["duplicated"] == len(sent)
    assert counts["overtook"] == overtaken
    inversions = sum(1 for i, a in enumerate(delivered) for b in delivered[i + 1 :] if a > b)
    assert (inversions > 0) == (overtaken > 0)


# -- in a real worker, in a namespace of our own ---------------------------------------

needs_root = pytest.mark.skipif(
    os.geteuid() != 0, reason="a network namespace and NFQUEUE need root (CAP_NET_ADMIN)"
)


def queue_in(ns: NetNamespace, queue: int, match: str) -> None:
    ns.run(["ip", "link", "set", "lo", "up"])
    ns.run(
        ["iptables-restore", "--noflush"],
        input_text=f"*mangle\n-A OUTPUT -m mark --mark {OWN_MARK} -j RETURN\n"
        f"-A OUTPUT {match} -j NFQUEUE --queue-num {queue} --queue-bypass\nCOMMIT\n",
    )


def worker_in(ns: NetNamespace, order: dict) -> Worker:
    worker = Worker()
    worker.wait_warm()
    worker.start(ns, order)
    return worker


def ask(ns: NetNamespace, name: str, timeout: float = 1.0) -> str:
    """Send a query for ``name`` to 127.0.0.11:53 in ``ns``: 'servfail', 'refused'
    (nothing listens there: the query went through) or 'no answer'."""

    def query() -> str:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.settimeout(timeout)
            sock.connect(("127.0.0.11", 53))
            sock.send(dns_query(name, ident=secrets.randbelow(0xFFFF)))
            try:
                answer = sock.recv(512)
            except ConnectionRefusedError:
                return "refused"
            except TimeoutError:
                return "no answer"
            return "servfail" if answer[3] & 0x0F == 2 else f"rcode {answer[3] & 0x0F}"

    return in_namespace(ns, query)


@needs_root
@pytest.mark.parametrize("mode", ["servfail", "timeout"])
def test_a_lookup_of_a_chosen_name_fails_as_told_and_others_go_through(mode):
    ns = _scratch_namespace()
    queue = 1000 + secrets.randbelow(60000)
    worker = None
    try:
        queue_in(ns, queue, "-p udp --dport 53")
        policy = "pytest_chaos.faults.dns:FailLookups"
        worker = worker_in(ns, {"queue": queue, "policy": policy, "mode": mode, "names": ["db"]})
        began = time.monotonic()
        said = ask(ns, "db.example.org")
        assert said == ("servfail" if mode == "servfail" else "no answer")
        if mode == "servfail":
            assert time.monotonic() - began < 0.5  # at once, not after a timeout
        assert ask(ns, "cache") == "refused"  # another name passed through
        assert worker.stats() == {"packets": 2, "queries": 2, "failed": 1}
    finally:
        if worker is not None:
            worker.stop()
        os.close(ns.fd)


#: Datagrams sent before any is read: with their copies they stay well inside the
#: receiving socket's default buffer (about 270 such datagrams).
SENT = 100


@needs_root
def test_disorder_reorders_and_duplicates_what_it_is_given():
    ns = _scratch_namespace()
    queue = 1000 + secrets.randbelow(60000)
    worker = None
    try:
        queue_in(ns, queue, "-o lo -p udp --dport 9999")
        order = {
            "queue": queue,
            "policy": "pytest_chaos.faults.disorder:Disorder",
            "reorder": 30,
            "duplicate": 20,
            "gap_ms": 20,
            "seed": 7,
        }
        worker = worker_in(ns, order)

        def exchange() -> list[int]:
            with (
                socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as rx,
                socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as tx,
            ):
                rx.bind(("127.0.0.1", 9999))
                rx.settimeout(0.5)
                for number in range(SENT):
                    tx.sendto(struct.pack(">I", number), ("127.0.0.1", 9999))
                    time.sleep(0.001)  # the pace of the flow: packets 1 ms apart
                got = []
                try:
                    while True:
                        got.append(struct.unpack(">I", rx.recv(16))[0])
                except TimeoutError:
                    return got

        got = in_namespace(ns, exchange)
        counts = worker.stats()
        assert sorted(set(got)) == list(range(SENT))  # nothing lost
        assert counts["packets"] == SENT
        assert len(got) - SENT == counts["duplicated"] > 0
        assert got != sorted(got)  # out of order
        assert counts["overtook"] > 0
    finally:
        if worker is not None:
            worker.stop()
        os.close(ns.fd)
