"""Settings from the environment, each with the default the compose file documents."""

from __future__ import annotations

import os
from dataclasses import dataclass


def _float(name: str, default: float) -> float:
    # Empty is unset: compose passes an unset variable through as "".
    return float(os.environ.get(name) or default)


def _int(name: str, default: int) -> int:
    return int(os.environ.get(name, default))


# Ways a real service is weak, switched on one at a time by EXCHANGE_WEAKEN to show
# that the experiment meant to catch each one fails.
WEAKNESSES = {
    "no-backoff": "reconnect every 10 ms, without backoff (a retry storm)",
    "ack-before-commit": "answer 201 at once and write orders behind, every 200 ms",
    "no-cache-fallback": "fail market data when the database fails, stale cache or not",
    "blocking-events": "publish order events before answering; fail the order if Redis fails",
    "rate-limit-api": "rate-limit on the API itself too (50 r/s per client), not only in nginx",
    "no-db-timeout": "no statement timeout, no deadline on queries or the pool: wait for ever",
    "tight-timeouts": "database calls time out after 100 ms, a deadline tuned on an idle machine",
    "wait-for-connection": "when PostgreSQL has no connection slot left, retry until it has one",
    "retry-reinserts": (
        "no idempotency key: every POST stores a new order, and an order whose database "
        "work outlives 1 s is answered 503 database_timeout while its transaction commits"
    ),
    "unlocked-match": (
        "match against the book read before taking the symbol's lock: concurrent orders "
        "fill the same resting quantity twice"
    ),
    "cache-idempotency": (
        "the idempotency key lives only in Redis (SET NX; no unique key in PostgreSQL), "
        "with retry-reinserts' 1 s answer deadline: a retry after Redis lost or never "
        "took the key stores the order twice"
    ),
    "stale-as-fresh": (
        "when the database cannot answer, serve the cached book marked fresh, however old"
    ),
}


#: Weaknesses without PostgreSQL's unique client order id, answering 503 after 1 s
#: while the order's transaction goes on.
NO_DB_IDEMPOTENCY = frozenset({"retry-reinserts", "cache-idempotency"})


def _weaknesses(text: str) -> frozenset[str]:
    chosen = frozenset(w.strip() for w in text.split(",") if w.strip())
    unknown = chosen - set(WEAKNESSES)
    if unknown:
        raise SystemExit(
            f"EXCHANGE_WEAKEN names unknown weaknesses {sorted(unknown)}; "
            f"known: {sorted(WEAKNESSES)}"
        )
    return chosen


@dataclass(frozen=True)
class Settings:
    database_url: str
    redis_url: str
    port: int
    db_pool_size: int
    db_pool_timeout_s: float
    db_connect_timeout_s: float
    db_statement_timeout_ms: int
    cache_timeout_s: float
    market_fresh_s: float
    backoff_base_s: float
    backoff_cap_s: float
    #: Weaknesses switched on for the proof that each experiment can fail (WEAKNESSES).
    weaken: frozenset[str] = frozenset()

    @classmethod
    def from_env(cls) -> Settings:
        return cls(
            database_url=os.environ.get(
                "DATABASE_URL", "postgresql://exchange:exchange@postgres:5432/exchange"
            ),
            redis_url=os.environ.get("REDIS_URL", "redis://redis:6379/0"),
            port=_int("PORT", 8080),
            db_pool_size=_int("DB_POOL_SIZE", 10),
            db_pool_timeout_s=_float("DB_POOL_TIMEOUT_S", 2.0),
            db_connect_timeout_s=_float("DB_CONNECT_TIMEOUT_S", 2.0),
            db_statement_timeout_ms=_int("DB_STATEMENT_TIMEOUT_MS", 3000),
            cache_timeout_s=_float("CACHE_TIMEOUT_S", 0.5),
            market_fresh_s=_float("MARKET_FRESH_S", 0.25),
            # 20 ms: the ~3 s outage of experiment 01 then holds 7-8 reconnects, enough
            # for its judgement to tell backoff from a retry storm (6 are needed).
            backoff_base_s=_float("RECONNECT_BACKOFF_BASE_S", 0.02),
            backoff_cap_s=_float("RECONNECT_BACKOFF_CAP_S", 5.0),
            weaken=_weaknesses(os.environ.get("EXCHANGE_WEAKEN", "")),
        )
