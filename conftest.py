"""Wires the bundled exchange (docker-compose.yml) into the experiments.

pytest-chaos itself knows nothing about the exchange: this file tells pytest-docker
how to start the stack, and gives the experiments an ``exchange`` fixture with the
exchange's addresses, its steady-state checks, an order flow and a data-loss lookup.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import random
import shutil
import socket
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from pytest_chaos import (
    Chaos,
    ComposeProject,
    Flow,
    LoadGenerator,
    Request,
    timeline,
    wait_for_recovery,
)
from pytest_chaos.observe.load import outcome_of

ROOT = Path(__file__).resolve().parent
LOCAL_BASE_IMAGE = "pytest-chaos/base:bookworm"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# Free loopback ports chosen once per session, so a stack left by another run (or a
# developer's own `docker-compose up`) never collides with the one under test. They
# are fixed rather than left to Docker because Docker picks a new port each time a
# container restarts, and the experiments restart containers.
for _var in ("EXCHANGE_HTTP_PORT", "EXCHANGE_API_PORT", "EXCHANGE_DB_PORT"):
    if not os.environ.get(_var):
        os.environ[_var] = str(_free_port())


def _local_base_image() -> bool:
    if not shutil.which("docker"):
        return False
    found = subprocess.run(
        ["docker", "image", "inspect", LOCAL_BASE_IMAGE], capture_output=True, check=False
    )
    return found.returncode == 0


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--exchange-weaken",
        default="",
        metavar="WEAKNESS[,...]",
        help="run the exchange with these weaknesses (see exchange/api/exchange_api/config.py), "
        "to show an experiment failing for the right reason",
    )


def pytest_configure(config: pytest.Config) -> None:
    weaken = config.getoption("--exchange-weaken")
    if weaken:
        os.environ["EXCHANGE_WEAKEN"] = weaken


@pytest.fixture(scope="session")
def docker_compose_command() -> str:
    # Debian bookworm has docker-compose 1.29, not the `docker compose` plugin.
    return "docker-compose" if shutil.which("docker-compose") else "docker compose"


@pytest.fixture(scope="session")
def docker_compose_file() -> str:
    return str(ROOT / "docker-compose.yml")


@pytest.fixture(scope="session")
def docker_compose_project_name() -> str:
    return f"chaos-exchange-{os.getpid()}"


@pytest.fixture(scope="session")
def docker_setup() -> list[str]:
    # Machines without a registry build from the base image scripts/setup made.
    if "CHAOS_BASE_IMAGE" not in os.environ and _local_base_image():
        os.environ["CHAOS_BASE_IMAGE"] = LOCAL_BASE_IMAGE
    return ["up -d --build"]


@dataclass
class Exchange:
    """The running exchange, seen from the host."""

    project: ComposeProject
    api_url: str
    http_url: str
    db_dsn: str
    symbol: str = field(default_factory=lambda: "X" + uuid.uuid4().hex[:6].upper())
    #: Part of every client order id, new for each test: the final read of a test's
    #: history is the orders stored under its tag.
    tag: str = field(default_factory=lambda: uuid.uuid4().hex[:6])
    #: Ids of orders the steady-state probe placed (acknowledged writes too).
    probe_acks: list[str] = field(default_factory=list)
    #: Every order sent in this test, by client order id: the final phase sends again
    #: each one whose outcome was unknown, as a client retrying it would.
    sent: dict[str, dict[str, Any]] = field(default_factory=dict)
    _ids: Iterator[int] = field(default_factory=itertools.count)

    def order(self, n: int, rng: random.Random | None = None) -> dict[str, Any]:
        r = rng or random
        order = {
            "symbol": self.symbol,
            "side": r.choice(("buy", "sell")),
            "price": round(100 + r.uniform(-1, 1), 2),
            "quantity": r.randint(1, 10),
            "client_order_id": f"{self.symbol}-{self.tag}-{uuid.uuid4().hex[:12]}-{n}",
        }
        self.sent[order["client_order_id"]] = order
        return order

    def new_trial(self) -> None:
        """Start afresh: a new tag for this run's orders (its history's final read is
        the orders under it), no probe orders, nothing sent. Each test starts so, and
        each run of a schedule search's example."""
        self.probe_acks.clear()
        self.sent.clear()
        self.tag = uuid.uuid4().hex[:6]

    def ready(self) -> bool:
        import httpx

        return httpx.get(f"{self.api_url}/ready", timeout=2.0).status_code == 200

    def accepts_orders(self) -> bool:
        """The steady state: the API is ready and an order is acknowledged."""
        if not self.ready():
            return False
        response = self.place(self.order(next(self._ids)))
        if response.status_code == 201:
            self.probe_acks.append(str(response.json()["client_order_id"]))
            return True
        return False

    def place(self, order: dict[str, Any], *, timeout: float = 5.0) -> Any:
        """POST ``order`` to the API once, as an operation of the test's history (every
        order under the test's tag must be one, or the final read finds a phantom);
        return the response, or raise httpx's error."""
        import httpx

        history = timeline.history()
        client = history.client() if history is not None else None
        if client is not None:
            client.invoke("add", order["client_order_id"])
        try:
            response = httpx.post(f"{self.api_url}/orders", json=order, timeout=timeout)
        except httpx.HTTPError as exc:
            if client is not None:
                client.complete(order_outcome(None, exc), error=type(exc).__name__)
            raise
        if client is not None:
            kind = order_outcome(response, None)
            client.complete(kind, _order_id_any(response), error=None if kind == "ok" else "HTTP "
                            f"{response.status_code}")  # fmt: skip
        return response

    def flows(
        self, *, orders: float = 0, market: float = 0, ready: float = 0, dashboard: float = 0
    ) -> list[Flow]:
        """Order placement, market data, readiness and the dashboard, at the given rates
        (a flow left at 0 is not run)."""
        rng = random.Random(1)  # noqa: S311 - test data, not security
        every = {
            "orders": lambda rate: Flow(
                "orders",
                rate,
                lambda n: Request("POST", f"{self.api_url}/orders", self.order(n, rng)),
                ack=lambda r: str(r.json()["client_order_id"]) if r.status_code == 201 else None,
                summarize=_json_error,
                operation=lambda n, req: ("add", req.json["client_order_id"]),
                result=_order_id,
                outcome=order_outcome,
            ),
            "market": lambda rate: Flow(
                "market",
                rate,
                lambda n: Request("GET", f"{self.api_url}/market/{self.symbol}"),
                summarize=lambda r: (
                    r.json().get("source") if r.status_code == 200 else _json_error(r)
                ),
                operation=lambda n, req: ("read-market", self.symbol),
                result=_market_freshness,
            ),
            "ready": lambda rate: Flow(
                "ready",
                rate,
                lambda n: Request("GET", f"{self.api_url}/ready"),
                summarize=lambda r: r.json()["database"]["state"],
            ),
            "dashboard": lambda rate: Flow(
                "dashboard",
                rate,
                lambda n: Request("GET", f"{self.http_url}/"),
                summarize=lambda r: "Database unavailable" in r.text,
            ),
        }
        rates = {"orders": orders, "market": market, "ready": ready, "dashboard": dashboard}
        return [every[name](rate) for name, rate in rates.items() if rate > 0]

    def open_orders_flow(self, symbol: str, rate: float, limit: int) -> Flow:
        """Reads of ``symbol``'s open orders, ``limit`` per page: heavy for the API
        (each page is built in its memory, with its CPU)."""
        url = f"{self.api_url}/orders?symbol={symbol}&limit={limit}"
        return Flow("pages", rate, lambda n: Request("GET", url), summarize=_json_error)

    def seed_book(self, symbol: str, count: int) -> None:
        """Give ``symbol`` a book of ``count`` resting buy orders, as after a busy day
        (written directly in one statement: experiments that use it are about reading
        them)."""

        with self.connect_db() as conn:
            conn.execute(
                """INSERT INTO orders
                     (client_order_id, symbol, side, price, quantity, remaining, status)
                   SELECT %(s)s || '-seed-' || g, %(s)s, 'buy', 50 + (g %% 100) / 100.0,
                          5, 5, 'open'
                   FROM generate_series(1, %(n)s) AS g
                   ON CONFLICT DO NOTHING""",
                {"s": symbol, "n": count},
            )

    def load(self, **rates: float) -> LoadGenerator:
        return LoadGenerator(self.flows(**rates), request_timeout=10.0, max_duration=300.0)

    def check_no_orders_lost(self, load: LoadGenerator, chaos: Chaos) -> None:
        """Every order acknowledged during the experiment (by ``load`` and by the
        steady-state probe) is stored; fails naming the missing ones. Records
        ``orders_acknowledged`` and ``orders_lost`` either way. Then judges the test's
        whole history (:meth:`check_history`)."""
        from pytest_chaos import DataLossDetected, check_no_data_loss

        acknowledged = load.acknowledged("orders") + self.probe_acks
        chaos.record("orders_acknowledged", len(set(acknowledged)))
        try:
            report = check_no_data_loss(acknowledged, self.orders_exist, what="acknowledged orders")
        except DataLossDetected as exc:
            chaos.record("orders_lost", getattr(exc.report, "lost_count", "?"))
            raise
        chaos.record("orders_lost", report.lost_count)
        self.check_history(chaos)

    def check_history(self, chaos: Chaos) -> None:
        """The final phase, once every fault is undone and the exchange has recovered:
        read back the orders stored under this test's tag, then judge the test's
        history. set-full: every acknowledged order stored once, nothing stored that
        no client sent, no refused order stored; unique-ids: no order id handed out
        twice; availability: outcomes per fault window (figures); conservation: the
        :meth:`invariants`. Every checker's figures are recorded before the first
        invalid one fails the test."""

        from pytest_chaos import availability, conservation, set_full, unique_ids

        # The final phase: no fault in force, the exchange recovered, then the retries
        # and the final read.
        if chaos.undo_all():
            wait_for_recovery(self.accepts_orders, timeout=60, what="the final steady state")
        self.retry_unknown(chaos)
        reader = chaos.history.client()
        reader.invoke("read")
        with self.connect_db() as conn:
            rows = conn.execute(
                "SELECT client_order_id FROM orders WHERE client_order_id LIKE %s",
                (f"{self.symbol}-{self.tag}-%",),
            ).fetchall()
        reader.ok([str(row[0]) for row in rows])
        history = chaos.history
        invariants = {**self.invariants(), "fresh_reads_are_fresh": lambda: stale_as_fresh(history)}
        chaos.check(
            set_full(history), unique_ids(history, f="add"), availability(history),
            conservation(invariants, name="exchange-conservation"),
        )  # fmt: skip

    def retry_unknown(self, chaos: Chaos) -> None:
        """Send again, once, each order whose outcome was unknown (a timeout, a lost
        connection), with its client order id, as a client that must know would: the
        exchange must store it once, whether the first attempt was stored or not.
        Each retry is an operation of the history (its own client)."""
        import httpx

        unknown = [
            op.invoke.value for op in chaos.history.operations()
            if op.f == "add" and op.type == "info" and op.invoke.value in self.sent
        ]  # fmt: skip
        chaos.record("orders_retried_after_unknown_outcome", len(unknown))
        for client_order_id in unknown:
            with contextlib.suppress(httpx.HTTPError):  # recorded in the history either way
                self.place(self.sent[client_order_id], timeout=10.0)

    def invariants(self) -> dict[str, Callable[[], list[str]]]:
        """The exchange's conservation rules over the orders of this test (its tag)
        and their trades, each returning its counterexamples: an order's filled
        quantity is the sum of its trades; no order is filled beyond its quantity;
        every trade joins a buy and a sell of its symbol whose limits cross."""

        pattern = f"{self.symbol}-{self.tag}-%"

        def rows(sql: str) -> list[tuple[Any, ...]]:
            with self.connect_db() as conn:
                return conn.execute(sql, {"p": pattern}).fetchall()

        fills = """
            SELECT o.client_order_id, o.quantity, o.remaining,
                   COALESCE((SELECT sum(t.quantity) FROM trades t
                             WHERE t.buy_order_id = o.id OR t.sell_order_id = o.id), 0)
            FROM orders o WHERE o.client_order_id LIKE %(p)s"""
        trades = """
            SELECT t.id, t.symbol, b.symbol, b.side, b.price, s.symbol, s.side, s.price
            FROM trades t JOIN orders b ON b.id = t.buy_order_id
                          JOIN orders s ON s.id = t.sell_order_id
            WHERE b.client_order_id LIKE %(p)s OR s.client_order_id LIKE %(p)s"""
        return {
            "filled_is_traded": lambda: [
                f"order {c}: {q - r} filled (quantity {q}, remaining {r}) but trades of {t}"
                for c, q, r, t in rows(fills) if q - r != t
            ],
            "not_overfilled": lambda: [
                f"order {c}: trades fill {t} of its quantity {q}"
                for c, q, _r, t in rows(fills) if t > q
            ],
            "trades_cross": lambda: [
                f"trade {i} ({sym}): buy side {bs}/{bside} at {bp}, sell side {ss}/{sside} at {sp}"
                for i, sym, bs, bside, bp, ss, sside, sp in rows(trades)
                if not (bside == "buy" and sside == "sell" and bs == ss == sym and bp >= sp)
            ],
        }  # fmt: skip

    def connect_db(self, timeout: float = 60.0) -> Any:
        """A connection to the exchange's PostgreSQL from the host, for the checks'
        own reads: polled until the database accepts one (it may still be starting
        up after a fault, even when the API already answers), within ``timeout``."""
        import psycopg

        deadline = time.monotonic() + timeout
        while True:
            try:
                return psycopg.connect(self.db_dsn, connect_timeout=5)
            except psycopg.OperationalError as exc:
                if time.monotonic() >= deadline:
                    raise AssertionError(
                        f"the exchange's database refused the checks' connection for "
                        f"{timeout:g} s: {str(exc).strip()}"
                    ) from exc
                time.sleep(0.2)

    def orders_exist(self, client_order_ids: list[str]) -> list[str]:
        """Which of these acknowledged orders are stored in PostgreSQL (asked directly,
        by the client order id the exchange acknowledged)."""

        with self.connect_db() as conn:
            rows = conn.execute(
                "SELECT client_order_id FROM orders WHERE client_order_id = ANY(%s)",
                (list(client_order_ids),),
            ).fetchall()
        return [str(row[0]) for row in rows]


def _order_id(response: Any) -> int | None:
    """The id the exchange gave a stored order (None: not stored yet, or refused)."""
    if response.status_code != 201:
        return None
    value = response.json().get("id")
    return int(value) if value is not None else None


#: 503s the exchange answers before any work on the order began: definitely not done.
_REFUSED_BEFORE_WORK = frozenset({"database_busy", "database_pool_exhausted"})
#: Market data older than this when it was served, yet marked fresh, is a lie: the
#: exchange's cache is fresh for 0.25 s (MARKET_FRESH_S); the rest is margin for the
#: clocks of the container and the host (one kernel clock: the same wall time).
FRESH_S = 0.25 + 0.25


def order_outcome(response: Any, exc: BaseException | None) -> str:
    """How an order request ended, for the history. The exchange's 503s say why: a
    refusal before the order's transaction began (no connection slot, pool exhausted)
    is ``fail``; database_unavailable and database_timeout may come after the
    transaction sent its commit, so they are ``info``, as is anything unknown."""
    kind = outcome_of(response, exc)
    if kind == "fail" and response is not None and response.status_code == 503:
        return "fail" if _json_error(response) in _REFUSED_BEFORE_WORK else "info"
    return kind


def _order_id_any(response: Any) -> int | None:
    """The id of the order a retry stored or found (201 stored, 200 found)."""
    if response.status_code not in (200, 201):
        return None
    value = response.json().get("id")
    return int(value) if value is not None else None


def _market_freshness(response: Any) -> dict[str, Any] | None:
    """What a market read said of its age: marked stale or not, and how old the book
    was when the answer arrived (the exchange stamps each book with ``as_of``)."""
    if response.status_code != 200:
        return None
    body = response.json()
    as_of = body.get("as_of")
    age = time.time() - float(as_of) if as_of is not None else None
    return {"stale": bool(body.get("stale")), "source": body.get("source"), "age_s": age}


def stale_as_fresh(history: Any) -> list[str]:
    """Counterexamples: market reads marked fresh whose book was older than FRESH_S
    when they were served (its age on arrival less the whole request's duration: a
    lower bound of its age when the exchange answered)."""
    found = []
    for op in history.operations():
        if op.f != "read-market" or op.type != "ok" or op.completion is None:
            continue
        value = op.completion.value or {}
        if value.get("stale") or value.get("age_s") is None:
            continue
        served_age = value["age_s"] - (op.completion.time - op.invoke.time)
        if served_age > FRESH_S:
            found.append(
                f"a market read at {op.completion.time:.3f} s was marked fresh (source "
                f"{value.get('source')!r}) but its book was at least {served_age:.2f} s old"
            )
    return found


def _json_error(response: Any) -> str | None:
    if response.status_code < 400:
        return None
    try:
        return str(response.json().get("error"))
    except ValueError:
        return f"non-JSON {response.status_code}"


@pytest.fixture(scope="session")
def exchange(chaos_project: ComposeProject) -> Exchange:
    host, api_port = chaos_project.service("trading-api").published_port(8080)
    _, http_port = chaos_project.service("nginx").published_port(80)
    _, db_port = chaos_project.service("postgres").published_port(5432)
    password = os.environ.get("EXCHANGE_DB_PASSWORD", "exchange")
    return Exchange(
        project=chaos_project,
        api_url=f"http://{host}:{api_port}",
        http_url=f"http://{host}:{http_port}",
        db_dsn=f"postgresql://exchange:{password}@{host}:{db_port}/exchange",
    )


@pytest.fixture(autouse=True)
def _probe_acks_per_test(request: pytest.FixtureRequest) -> None:
    """Each test counts (and checks) the steady-state probe's orders it placed itself,
    and tags its orders afresh (its history's final read is the orders under its tag)."""
    if "exchange" in request.fixturenames:
        request.getfixturevalue("exchange").new_trial()
