"""A background load generator: sends requests at a set rate (open loop, so a slow
server does not slow the schedule down) and records every request, both as a
:class:`RequestRecord` and as an operation of its :class:`~.history.History`
(invoke, then ok, fail or info, with the faults in force).

The generator knows nothing about the system under test: each :class:`Flow` says
how to build its n-th request, how to read an acknowledgement from a response, which
operation the request is, and (if the default does not fit) how to tell a request
that definitely did not happen from one whose outcome is unknown.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import threading
import time
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .. import timeline
from ..errors import ConfigurationError
from ..errors import hide_chaos_errors as __tracebackhide__  # noqa: F401
from ..units import parse_duration
from .history import Client, History, OpType
from .offered import Slot

if TYPE_CHECKING:
    import httpx


@dataclass(frozen=True)
class Request:
    """An HTTP request a flow sends: ``json`` is the body, if any."""

    method: str
    url: str
    json: Any = None


@dataclass(frozen=True)
class Flow:
    """One stream of requests at ``rate`` per second."""

    name: str
    rate: float
    build: Callable[[int], Request]
    #: Returns the id of what a response acknowledged (e.g. a stored order), or None.
    ack: Callable[[httpx.Response], str | None] = field(default=lambda _r: None)
    #: Keeps a short summary of the response body for later assertions.
    summarize: Callable[[httpx.Response], Any] = field(default=lambda _r: None)
    #: The operation the n-th request is in the history, as (f, value), e.g.
    #: ("add", client_order_id). Default: (the flow's name, None).
    operation: Callable[[int, Request], tuple[str, Any]] | None = None
    #: The completion's value in the history (e.g. the id the system gave a stored
    #: order, for the unique-ids check). Default: what ``ack`` read.
    result: Callable[[httpx.Response], Any] | None = None
    #: How a request ended: "ok", "fail" (definitely not carried out) or "info"
    #: (unknown), from the response or the exception. Default: :func:`outcome_of`.
    outcome: Callable[[httpx.Response | None, BaseException | None], OpType] | None = None

    def __post_init__(self) -> None:
        if not self.name:
            raise ConfigurationError("a flow needs a name.")
        if not (0 < self.rate <= 1000):
            raise ConfigurationError(
                f"flow {self.name!r}: rate must be between 0 and 1000 requests/s, "
                f"got {self.rate!r}."
            )


#: Statuses after which a request may still have been carried out: the server (or a
#: proxy in front of it) gave up without saying what happened.
UNKNOWN_STATUSES = frozenset({408, 500, 502, 504})


def outcome_of(response: httpx.Response | None, exc: BaseException | None) -> OpType:
    """The default reading of how a request ended. A success is ``ok``. A refusal the
    server stated (4xx, 503) is ``fail``, and so is an error before the request left
    (connection refused, connect or pool timeout). A timeout or broken connection
    after it was sent, a cancelled request, and 408/500/502/504 are ``info``: it may
    have been carried out."""
    import httpx

    if exc is None and response is not None:
        if response.status_code < 400:
            return "ok"
        return "info" if response.status_code in UNKNOWN_STATUSES else "fail"
    not_sent = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout,
                httpx.UnsupportedProtocol, httpx.InvalidURL)  # fmt: skip
    return "fail" if isinstance(exc, not_sent) else "info"


@dataclass(frozen=True)
class RequestRecord:
    """What happened to one request: when it was sent, how long it took, its status
    (None when no response came) or ``error``, and the id it acknowledged."""

    flow: str
    seq: int
    #: time.monotonic() when the request was sent, and wall-clock time.
    started: float
    started_wall: float
    latency_s: float
    status: int | None
    error: str | None
    ack_id: str | None
    summary: Any
    #: time.monotonic() when the schedule wanted it sent (None: when it was sent).
    due: float | None = None

    @property
    def ok(self) -> bool:
        return self.error is None and self.status is not None and self.status < 400

    @property
    def finished(self) -> float:
        return self.started + self.latency_s

    @property
    def response_s(self) -> float:
        """From when it was due to its answer: what a client on the schedule waited,
        a late send included (``latency_s`` starts at the send)."""
        return self.finished - (self.due if self.due is not None else self.started)


@dataclass(frozen=True)
class NotSent:
    """A request of the schedule the generator held back: ``max_in_flight`` requests
    were still waiting for their answers when it was due."""

    flow: str
    seq: int
    due: float
    in_flight: int


class LoadGenerator:
    """Run flows in a background thread until :meth:`stop` (or ``max_duration``).

    Use it as a context manager. Records are kept in order of completion; the
    helpers below filter them by flow and time window.
    """

    def __init__(
        self,
        flows: Sequence[Flow],
        *,
        request_timeout: float | str = 5.0,
        max_in_flight: int = 64,
        max_duration: float | str = 600.0,
        history: History | None = None,
    ) -> None:
        if not flows:
            raise ConfigurationError("a load generator needs at least one flow.")
        names = [f.name for f in flows]
        if len(set(names)) != len(names):
            raise ConfigurationError(f"flow names must be unique, got {names}.")
        if max_in_flight < 1:
            raise ConfigurationError("max_in_flight must be at least 1.")
        self.flows = tuple(flows)
        self.request_timeout = parse_duration(request_timeout, name="request_timeout")
        self.max_duration = parse_duration(max_duration, name="max_duration")
        self.max_in_flight = max_in_flight
        self._records: list[RequestRecord] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._failure: BaseException | None = None
        #: Requests not sent because ``max_in_flight`` were pending (see not_sent()).
        self.skipped = 0
        self._not_sent: list[NotSent] = []
        #: (flow, due) of every request sent, answered or not.
        self._sent: list[tuple[str, float]] = []
        self.started_at: float | None = None
        self.stopped_at: float | None = None
        #: (flow, seq) -> time.monotonic() when sent, of each request awaiting its answer.
        self._in_flight: dict[tuple[str, int], float] = {}
        #: (flow, seq) -> when it was due, of each request sent and not yet answered.
        self._in_flight_due: dict[tuple[str, int], float] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        #: Every request as an operation. Inside a chaos test, the test's history
        #: (one for all its generators and final reads); else one of its own.
        if history is None:
            history = timeline.history()
        self.history = history if history is not None else History(faults=timeline.faults_in_force)
        #: Clients of the history with no operation open (touched by the loop only).
        self._idle: list[Client] = []

    # -- lifecycle -----------------------------------------------------------------------

    def start(self) -> LoadGenerator:
        """Start sending in a background thread (``with`` does it for you)."""
        if self._thread is not None:
            raise ConfigurationError("this load generator was already started.")
        self.started_at = time.monotonic()
        timeline.note_load(self)
        self._thread = threading.Thread(target=self._run, name="pytest-chaos-load", daemon=True)
        self._thread.start()
        _running.add(self)
        return self

    def stop(self) -> None:
        """Stop sending and wait for the requests in flight (up to their timeout)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(self.request_timeout + 5.0)
        if self.stopped_at is None:
            self.stopped_at = time.monotonic()
        _running.discard(self)
        if self._failure is not None:
            raise RuntimeError("the load generator failed") from self._failure

    def abort(self, wait: float = 0.0) -> None:
        """Stop sending and cancel the requests in flight at once (an interrupted run
        does not wait for answers that may never come); each is recorded with the
        error ``cancelled``. Waits up to ``wait`` seconds for the thread to end."""
        self._stop.set()
        loop = self._loop
        if loop is not None and not loop.is_closed():
            with contextlib.suppress(RuntimeError):  # the loop closed meanwhile
                loop.call_soon_threadsafe(self._cancel_all)
        if self.stopped_at is None:
            self.stopped_at = time.monotonic()
        if wait > 0 and self._thread is not None:
            self._thread.join(wait)
        if self._thread is None or not self._thread.is_alive():
            _running.discard(self)

    def _cancel_all(self) -> None:
        for task in list(self._tasks):
            task.cancel()

    def in_flight(self) -> list[float]:
        """When each request still awaiting its answer was sent (time.monotonic())."""
        with self._lock:
            return sorted(self._in_flight.values())

    def __enter__(self) -> LoadGenerator:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, *exc: object) -> None:
        if exc_type is not None and not issubclass(exc_type, Exception):
            # Interrupted (Ctrl-C, SIGTERM): the faults are to be undone first; the
            # requests in flight are cancelled, and the thread is joined after the
            # undo (abort_all), not here.
            self.abort()
            return
        self.stop()

    # -- results -------------------------------------------------------------------------

    def records(
        self, flow: str | None = None, *, since: float | None = None, until: float | None = None
    ) -> list[RequestRecord]:
        """Records of ``flow`` (all flows if None) sent in [since, until)."""
        with self._lock:
            rows = list(self._records)
        return [
            r
            for r in rows
            if (flow is None or r.flow == flow)
            and (since is None or r.started >= since)
            and (until is None or r.started < until)
        ]

    def not_sent(
        self, flow: str | None = None, *, since: float | None = None, until: float | None = None
    ) -> list[NotSent]:
        """The requests of ``flow`` (all if None) due in [since, until) that were held
        back, ``max_in_flight`` being pending."""
        with self._lock:
            rows = list(self._not_sent)
        return [
            r for r in rows if (flow is None or r.flow == flow) and _within(r.due, since, until)
        ]

    def offered(
        self, flow: str | None = None, *, since: float | None = None, until: float | None = None
    ) -> int:
        """How many requests of ``flow`` were due in [since, until), sent or not."""
        with self._lock:
            dues = [due for name, due in self._sent if flow is None or name == flow]
        sent = sum(_within(due, since, until) for due in dues)
        return sent + len(self.not_sent(flow, since=since, until=until))

    def slots(self) -> list[Slot]:
        """Every request of the schedule so far: its flow, when it was due, and whether
        it was sent (for :func:`~pytest_chaos.observe.offered.rate_windows`)."""
        with self._lock:
            sent = [Slot(flow, due, True) for flow, due in self._sent]
            held = [Slot(r.flow, r.due, False) for r in self._not_sent]
        return sorted(sent + held, key=lambda s: s.due)

    def response_times(
        self, flow: str | None = None, *, since: float | None = None, until: float | None = None
    ) -> list[float]:
        """For every request of ``flow`` due in [since, until), how long a client on the
        schedule waited for its answer, from when it was due: answered ones (errors
        too) their :attr:`RequestRecord.response_s`; one still waiting, the time so
        far; one held back (never sent), ``math.inf``. Percentiles of these
        (:func:`~pytest_chaos.observe.offered.percentile`) cannot leave out the
        requests a slow system kept the generator from sending."""
        now = time.monotonic()
        with self._lock:
            done = {(r.flow, r.seq): r for r in self._records}
            waiting = dict(self._in_flight_due)
            held = list(self._not_sent)
        out = [
            r.response_s
            for r in done.values()
            if (flow is None or r.flow == flow) and _within(r.due or r.started, since, until)
        ]
        out += [
            now - due
            for (name, _), due in waiting.items()
            if (flow is None or name == flow) and _within(due, since, until)
        ]
        out += [
            math.inf
            for r in held
            if (flow is None or r.flow == flow) and _within(r.due, since, until)
        ]
        return out

    def acknowledged(self, flow: str | None = None) -> list[str]:
        """The ids the responses of ``flow`` (or all flows) acknowledged, in order."""
        return [r.ack_id for r in self.records(flow) if r.ack_id is not None]

    def wait_for_records(self, flow: str, count: int, timeout: float = 30.0) -> None:
        """Block until ``flow`` has ``count`` completed requests (e.g. a baseline)."""
        deadline = time.monotonic() + timeout
        while len(self.records(flow)) < count:
            if self._failure is not None or self._stop.is_set():
                raise RuntimeError("the load generator stopped before the records arrived")
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"flow {flow!r} completed {len(self.records(flow))} of {count} requests "
                    f"in {timeout:g} s"
                )
            time.sleep(0.02)

    # -- the thread ----------------------------------------------------------------------

    def _run(self) -> None:
        try:
            asyncio.run(self._main())
        except BaseException as exc:  # noqa: BLE001 - reported by stop()
            self._failure = exc

    async def _main(self) -> None:
        import httpx

        self._loop = asyncio.get_running_loop()
        limits = httpx.Limits(max_connections=self.max_in_flight, max_keepalive_connections=16)
        timeout = httpx.Timeout(self.request_timeout)
        async with httpx.AsyncClient(limits=limits, timeout=timeout) as client:
            pending = self._tasks
            await asyncio.gather(*(self._schedule(client, f, pending) for f in self.flows))
            if pending:
                await asyncio.wait(pending, timeout=self.request_timeout + 1.0)

    async def _schedule(
        self, client: httpx.AsyncClient, flow: Flow, pending: set[asyncio.Task[None]]
    ) -> None:
        period = 1.0 / flow.rate
        start = time.monotonic()
        seq = 0
        while not self._stop.is_set() and time.monotonic() - start < self.max_duration:
            due = start + seq * period
            delay = due - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            if len(pending) >= self.max_in_flight:
                self.skipped += 1
                with self._lock:
                    self._not_sent.append(NotSent(flow.name, seq, due, len(pending)))
            else:
                with self._lock:
                    self._sent.append((flow.name, due))
                    self._in_flight_due[(flow.name, seq)] = due
                task = asyncio.get_running_loop().create_task(self._send(client, flow, seq, due))
                pending.add(task)
                task.add_done_callback(pending.discard)
            seq += 1

    async def _send(self, client: httpx.AsyncClient, flow: Flow, seq: int, due: float) -> None:
        import httpx

        req = flow.build(seq)
        f, written = flow.operation(seq, req) if flow.operation else (flow.name, None)
        process = self._idle.pop() if self._idle else self.history.client()
        process.invoke(f, written)
        started, wall = time.monotonic(), time.time()
        status: int | None = None
        error: str | None = None
        ack: str | None = None
        summary: Any = None
        value: Any = None
        response: httpx.Response | None = None
        failure: BaseException | None = None
        with self._lock:
            self._in_flight[(flow.name, seq)] = started
        try:
            response = await client.request(req.method, req.url, json=req.json)
            status = response.status_code
            ack = flow.ack(response)
            summary = flow.summarize(response)
            value = flow.result(response) if flow.result else ack
        except httpx.HTTPError as exc:
            failure = exc
            error = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        except asyncio.CancelledError as exc:
            failure = exc
            error = "cancelled: the run was interrupted"
            raise
        finally:
            latency = time.monotonic() - started
            record = RequestRecord(
                flow.name, seq, started, wall, latency, status, error, ack, summary, due
            )
            kind = (flow.outcome or outcome_of)(response, failure)
            why = error if error is not None else (f"HTTP {status}" if kind != "ok" else None)
            process.complete(kind, value, error=why)  # after info, a new process
            self._idle.append(process)
            with self._lock:
                del self._in_flight[(flow.name, seq)]
                self._in_flight_due.pop((flow.name, seq), None)
                self._records.append(record)


def _within(t: float, since: float | None, until: float | None) -> bool:
    return (since is None or t >= since) and (until is None or t < until)


#: Load generators started and not yet stopped (weakly: a forgotten one may go).
_running: weakref.WeakSet[LoadGenerator] = weakref.WeakSet()


def abort_all(wait: float = 1.0) -> int:
    """Cancel every running load generator's requests and wait (``wait`` seconds in
    all) for their threads: what an interruption does once the faults are undone.
    Returns how many there were."""
    found = list(_running)
    deadline = time.monotonic() + wait
    for load in found:
        load.abort(wait=max(0.0, deadline - time.monotonic()))
    return len(found)
