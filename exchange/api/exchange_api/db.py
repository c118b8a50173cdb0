"""PostgreSQL access: a bounded pool, timeouts on every call, and a circuit that opens
when the database is lost and closes when a background reconnect loop (capped
exponential backoff with jitter) gets through again."""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import psycopg
from psycopg import pq

from .backoff import Backoff
from .config import NO_DB_IDEMPOTENCY, Settings
from .errors import DatabaseBusy, DatabaseTimeout, DatabaseUnavailable, PoolExhausted
from .metrics import Metrics

log = logging.getLogger("exchange.db")
T = TypeVar("T")

SCHEMA = """
CREATE TABLE IF NOT EXISTS orders (
    id              BIGSERIAL PRIMARY KEY,
    client_order_id TEXT NOT NULL UNIQUE,
    symbol          TEXT NOT NULL,
    side            TEXT NOT NULL CHECK (side IN ('buy', 'sell')),
    price           NUMERIC(18, 4) NOT NULL CHECK (price > 0),
    quantity        BIGINT NOT NULL CHECK (quantity > 0),
    remaining       BIGINT NOT NULL CHECK (remaining >= 0),
    status          TEXT NOT NULL,
    created_at      TIMESTAMPTZ NOT NULL DEFAULT clock_timestamp()
);
CREATE INDEX IF NOT EXISTS orders_book
    ON orders (symbol, side, price, id) WHERE remaining > 0;
CREATE TABLE IF NOT EXISTS trades (
    id            BIGSERIAL PRIMARY KEY,
    symbol        TEXT NOT NULL,
    buy_order_id  BIGINT NOT NULL REFERENCES orders (id),
    sell_order_id BIGINT NOT NULL REFERENCES orders (id),
    price         NUMERIC(18, 4) NOT NULL,
    quantity      BIGINT NOT NULL,
    executed_at   TIMESTAMPTZ NOT NULL DEFAULT clock_timestamp()
);
CREATE INDEX IF NOT EXISTS trades_recent ON trades (symbol, id DESC);
"""
#: The weaknesses without a unique key in the database (NO_DB_IDEMPOTENCY).
SCHEMA_WITHOUT_IDEMPOTENCY = SCHEMA.replace(
    "client_order_id TEXT NOT NULL UNIQUE", "client_order_id TEXT NOT NULL"
)

# Errors that mean the connection (or the server behind it) is gone, not that a query
# was wrong. psycopg reports both lost connections and refused ones as OperationalError.
_CONNECTION_ERRORS = (psycopg.OperationalError, psycopg.InterfaceError, OSError)


class Database:
    def __init__(self, settings: Settings, metrics: Metrics) -> None:
        self._settings = settings
        self._metrics = metrics
        self._slots = asyncio.Semaphore(settings.db_pool_size)
        self._idle: list[psycopg.AsyncConnection[Any]] = []
        self._reconnect: asyncio.Task[None] | None = None
        if "no-backoff" in settings.weaken:
            self._backoff = Backoff(base=0.01, cap=0.01, jitter=0.0)
        else:
            self._backoff = Backoff(base=settings.backoff_base_s, cap=settings.backoff_cap_s)
        self._schema_ready = False
        self.state = "down"
        self.last_error: str | None = "not connected yet"
        self.down_since: float | None = time.time()
        self.next_attempt_at: float | None = None
        # Wall-clock times of reconnect attempts in the current or last outage.
        self.attempts: deque[float] = deque(maxlen=64)
        self.in_use = 0

    # -- public -------------------------------------------------------------------------

    def start(self) -> None:
        self._open_circuit("not connected yet")

    async def close(self) -> None:
        if self._reconnect is not None:
            self._reconnect.cancel()
        await self._close_idle()

    async def run(self, work: Callable[[psycopg.AsyncConnection[Any]], Awaitable[T]]) -> T:
        """Run ``work`` in one transaction; return only after it committed."""
        if self.state != "up":
            raise DatabaseUnavailable(
                f"The database is unavailable ({self.last_error}).",
                retry_after_s=self._retry_after(),
            )
        try:
            await asyncio.wait_for(self._slots.acquire(), self._pool_wait_s())
        except TimeoutError:
            self._metrics.inc("db_pool_exhausted")
            raise PoolExhausted(
                f"All {self._settings.db_pool_size} database connections are busy; "
                f"none freed within {self._settings.db_pool_timeout_s:g} s.",
                retry_after_s=1.0,
            ) from None
        self.in_use += 1
        try:
            conn = self._idle.pop() if self._idle else await self._connect_for_request()
            try:
                result = await asyncio.wait_for(
                    self._transaction(conn, work), self._op_timeout_or_none()
                )
            except psycopg.errors.QueryCanceled as exc:
                # statement_timeout: the server is alive but slow; the connection is fine.
                self._give_back(conn)
                self._metrics.inc("db_timeouts")
                raise DatabaseTimeout(
                    "The database did not answer within "
                    f"{self._settings.db_statement_timeout_ms} ms (statement timeout).",
                    retry_after_s=1.0,
                ) from exc
            except TimeoutError as exc:
                await self._discard(conn)
                self._metrics.inc("db_timeouts")
                self._open_circuit(f"no answer within {self._op_timeout():g} s")
                raise DatabaseTimeout(
                    f"The database did not answer within {self._op_timeout():g} s.",
                    retry_after_s=self._retry_after(),
                ) from exc
            except _CONNECTION_ERRORS as exc:
                await self._discard(conn)
                self._open_circuit(_describe(exc))
                raise DatabaseUnavailable(
                    f"The database is unavailable ({_describe(exc)}).",
                    retry_after_s=self._retry_after(),
                ) from exc
            self._give_back(conn)
            return result
        finally:
            self.in_use -= 1
            self._slots.release()

    def status(self) -> dict[str, Any]:
        now = time.time()
        return {
            "state": self.state,
            "last_error": self.last_error,
            "down_since": self.down_since,
            "down_for_s": round(now - self.down_since, 3) if self.down_since else None,
            "reconnect_attempts": len(self.attempts),
            "reconnect_attempt_times": list(self.attempts),
            "next_attempt_in_s": (
                round(max(0.0, self.next_attempt_at - now), 3) if self.next_attempt_at else None
            ),
            "pool": {
                "size": self._settings.db_pool_size,
                "in_use": self.in_use,
                "idle": len(self._idle),
            },
        }

    # -- connections ----------------------------------------------------------------------

    async def _connect(self) -> psycopg.AsyncConnection[Any]:
        s = self._settings
        return await asyncio.wait_for(
            psycopg.AsyncConnection.connect(
                s.database_url,
                autocommit=True,
                connect_timeout=max(2, int(s.db_connect_timeout_s)),
                options=f"-c statement_timeout={self._statement_timeout_ms}",
                application_name="trading-api",
            ),
            s.db_connect_timeout_s + 1.0,
        )

    async def _connect_for_request(self) -> psycopg.AsyncConnection[Any]:
        try:
            return await self._connect()
        except psycopg.OperationalError as exc:
            if _too_many_clients(exc) and "wait-for-connection" in self._settings.weaken:
                return await self._connect_when_a_slot_frees()
            if _too_many_clients(exc):
                self._metrics.inc("db_too_many_clients")
                raise DatabaseBusy(
                    "The database refused a new connection: too many clients "
                    "(max_connections reached).",
                    retry_after_s=1.0,
                ) from exc
            self._open_circuit(_describe(exc))
            raise DatabaseUnavailable(
                f"The database is unavailable ({_describe(exc)}).",
                retry_after_s=self._retry_after(),
            ) from exc
        except (TimeoutError, OSError) as exc:
            self._open_circuit(_describe(exc))
            raise DatabaseUnavailable(
                f"The database is unavailable ({_describe(exc)}).",
                retry_after_s=self._retry_after(),
            ) from exc

    async def _connect_when_a_slot_frees(self) -> psycopg.AsyncConnection[Any]:
        """The weakness wait-for-connection: retry a refused connection every 100 ms
        for as long as PostgreSQL refuses it, holding the request meanwhile."""
        while True:
            await asyncio.sleep(0.1)
            try:
                return await self._connect()
            except psycopg.OperationalError as exc:
                if not _too_many_clients(exc):
                    raise

    @staticmethod
    async def _transaction(
        conn: psycopg.AsyncConnection[Any],
        work: Callable[[psycopg.AsyncConnection[Any]], Awaitable[T]],
    ) -> T:
        async with conn.transaction():
            return await work(conn)

    def _give_back(self, conn: psycopg.AsyncConnection[Any]) -> None:
        healthy = not conn.closed and conn.info.transaction_status == pq.TransactionStatus.IDLE
        if healthy and self.state == "up":
            self._idle.append(conn)
        else:
            asyncio.get_running_loop().create_task(self._quiet_close(conn))

    async def _discard(self, conn: psycopg.AsyncConnection[Any]) -> None:
        await self._quiet_close(conn)

    @staticmethod
    async def _quiet_close(conn: psycopg.AsyncConnection[Any]) -> None:
        try:
            await asyncio.wait_for(conn.close(), 1.0)
        except Exception:
            log.debug("closing a broken connection failed", exc_info=True)

    async def _close_idle(self) -> None:
        idle, self._idle = self._idle, []
        for conn in idle:
            await self._quiet_close(conn)

    @property
    def _statement_timeout_ms(self) -> int:
        # 0 is PostgreSQL's "no timeout".
        return (
            0
            if "no-db-timeout" in self._settings.weaken
            else self._settings.db_statement_timeout_ms
        )

    def _pool_wait_s(self) -> float | None:
        return (
            None if "no-db-timeout" in self._settings.weaken else self._settings.db_pool_timeout_s
        )

    def _op_timeout_or_none(self) -> float | None:
        return None if "no-db-timeout" in self._settings.weaken else self._op_timeout()

    def _op_timeout(self) -> float:
        if "tight-timeouts" in self._settings.weaken:
            return 0.1
        # The server's statement_timeout answers first; this catches a silent network.
        return self._settings.db_statement_timeout_ms / 1000.0 + 1.0

    def _retry_after(self) -> float:
        if self.next_attempt_at is None:
            return 1.0
        return round(max(0.1, self.next_attempt_at - time.time()), 1)

    # -- the circuit and the reconnect loop ---------------------------------------------

    def _open_circuit(self, reason: str) -> None:
        self.last_error = reason
        if self.state == "up":
            log.warning("database lost: %s; reconnecting in the background", reason)
            self._metrics.inc("db_outages")
        if self.state != "down":
            self.state = "down"
            self.down_since = time.time()
            self.attempts.clear()
            self._backoff.reset()
        if self._reconnect is None or self._reconnect.done():
            self._reconnect = asyncio.get_running_loop().create_task(self._reconnect_loop())

    async def _reconnect_loop(self) -> None:
        await self._close_idle()
        while True:
            delay = self._backoff.next_delay()
            self.next_attempt_at = time.time() + delay
            await asyncio.sleep(delay)
            self.attempts.append(time.time())
            self._metrics.inc("db_reconnect_attempts")
            try:
                conn = await self._connect()
                if not self._schema_ready:
                    async with conn.transaction():
                        await conn.execute("SELECT pg_advisory_xact_lock(4242)")
                        await conn.execute(
                            SCHEMA_WITHOUT_IDEMPOTENCY
                            if self._settings.weaken & NO_DB_IDEMPOTENCY
                            else SCHEMA
                        )
                    self._schema_ready = True
                await conn.execute("SELECT 1")
            except (*_CONNECTION_ERRORS, TimeoutError, psycopg.Error) as exc:
                self.last_error = _describe(exc)
                log.info(
                    "database reconnect attempt %d failed: %s; next in ~%.2f s",
                    len(self.attempts),
                    self.last_error,
                    min(self._backoff.cap, self._backoff.base * 2**self._backoff.attempt),
                )
                continue
            outage = time.time() - (self.down_since or time.time())
            self._idle.append(conn)
            self.state = "up"
            self.next_attempt_at = None
            self.last_error = None
            self.down_since = None
            log.info(
                "database reachable again after %.2f s and %d attempts",
                outage,
                len(self.attempts),
            )
            return


def _too_many_clients(exc: BaseException) -> bool:
    # SQLSTATE 53300 is not always set on a refused connection: read the message too.
    text = str(exc)
    return (
        getattr(exc, "sqlstate", None) == "53300"
        or "too many clients" in text
        or "remaining connection slots are reserved" in text
    )


def _describe(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    first = text[0] if text else ""
    return f"{type(exc).__name__}: {first}" if first else type(exc).__name__
