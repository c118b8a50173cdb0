"""Limit orders: validation, and matching by price-time priority inside the
transaction that stores the order, so an acknowledged order and its trades are
committed together or not at all."""

from __future__ import annotations

import re
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import Any

import psycopg
from psycopg.rows import dict_row

from .config import NO_DB_IDEMPOTENCY
from .errors import BadRequest

SYMBOL = re.compile(r"^[A-Z][A-Z0-9.]{0,11}$")
_CLIENT_ID = re.compile(r"^[A-Za-z0-9._:-]{1,64}$")
_MAX_PRICE = Decimal("1e12")


@dataclass(frozen=True)
class NewOrder:
    symbol: str
    side: str
    price: Decimal
    quantity: int
    client_order_id: str

    @classmethod
    def parse(cls, body: Any) -> NewOrder:
        if not isinstance(body, dict):
            raise BadRequest("The body must be a JSON object.")
        symbol = body.get("symbol")
        if not isinstance(symbol, str) or not SYMBOL.match(symbol):
            raise BadRequest("symbol must be 1-12 upper-case letters, digits or dots, e.g. 'BTC'.")
        side = body.get("side")
        if side not in ("buy", "sell"):
            raise BadRequest("side must be 'buy' or 'sell'.")
        try:
            price = Decimal(str(body.get("price")))
        except InvalidOperation:
            raise BadRequest("price must be a positive number, e.g. 101.25.") from None
        if not price.is_finite() or price <= 0 or price >= _MAX_PRICE or price != round(price, 4):
            raise BadRequest("price must be positive, below 1e12, with at most 4 decimals.")
        quantity = body.get("quantity")
        if isinstance(quantity, bool) or not isinstance(quantity, int) or not 0 < quantity < 2**62:
            raise BadRequest("quantity must be a positive integer.")
        client_order_id = body.get("client_order_id")
        if not isinstance(client_order_id, str) or not _CLIENT_ID.match(client_order_id):
            raise BadRequest("client_order_id must be 1-64 characters of [A-Za-z0-9._:-].")
        return cls(symbol, side, price, quantity, client_order_id)


def order_json(row: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": row["id"],
        "client_order_id": row["client_order_id"],
        "symbol": row["symbol"],
        "side": row["side"],
        "price": str(row["price"]),
        "quantity": row["quantity"],
        "remaining": row["remaining"],
        "status": row["status"],
        "created_at": row["created_at"].isoformat(),
    }


_INSERT_ONCE = """
    INSERT INTO orders (client_order_id, symbol, side, price, quantity, remaining, status)
    VALUES (%s, %s, %s, %s, %s, %s, 'open')
    ON CONFLICT (client_order_id) DO NOTHING
    RETURNING *"""
#: The weaknesses of NO_DB_IDEMPOTENCY: no unique key, every request a new order.
_INSERT_ALWAYS = """
    INSERT INTO orders (client_order_id, symbol, side, price, quantity, remaining, status)
    VALUES (%s, %s, %s, %s, %s, %s, 'open')
    RETURNING *"""


async def place(
    conn: psycopg.AsyncConnection[Any], order: NewOrder, weaken: frozenset[str] = frozenset()
) -> tuple[dict[str, Any], bool]:
    """Store and match ``order``; return (order, created). A repeated client_order_id
    returns the order stored the first time (created False), so clients may retry.
    ``weaken`` switches on the weaknesses of NO_DB_IDEMPOTENCY and unlocked-match."""
    cur = conn.cursor(row_factory=dict_row)
    if order.side == "buy":
        book_query = """SELECT id, price, remaining FROM orders
                        WHERE symbol = %s AND side = 'sell' AND remaining > 0 AND price <= %s
                        ORDER BY price ASC, id ASC"""
    else:
        book_query = """SELECT id, price, remaining FROM orders
                        WHERE symbol = %s AND side = 'buy' AND remaining > 0 AND price >= %s
                        ORDER BY price DESC, id ASC"""
    stale_book = None
    if "unlocked-match" in weaken:
        # The weakness: the book is read before the lock, and may change meanwhile.
        await cur.execute(book_query, (order.symbol, order.price))
        stale_book = await cur.fetchall()
    # One matching engine per symbol: serialise matching on the symbol's book.
    await cur.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (order.symbol,))
    await cur.execute(
        _INSERT_ALWAYS if weaken & NO_DB_IDEMPOTENCY else _INSERT_ONCE,
        (
            order.client_order_id,
            order.symbol,
            order.side,
            order.price,
            order.quantity,
            order.quantity,
        ),
    )
    row = await cur.fetchone()
    if row is None:
        await cur.execute(
            "SELECT * FROM orders WHERE client_order_id = %s", (order.client_order_id,)
        )
        existing = await cur.fetchone()
        assert existing is not None
        return order_json(existing), False

    if stale_book is None:
        await cur.execute(book_query, (order.symbol, order.price))
        resting = await cur.fetchall()
    else:
        resting = stale_book

    remaining = order.quantity
    for other in resting:
        if remaining == 0:
            break
        qty = min(remaining, other["remaining"])
        buy_id, sell_id = (
            (row["id"], other["id"]) if order.side == "buy" else (other["id"], row["id"])
        )
        # The resting order sets the price (it was there first).
        await cur.execute(
            """INSERT INTO trades (symbol, buy_order_id, sell_order_id, price, quantity)
               VALUES (%s, %s, %s, %s, %s)""",
            (order.symbol, buy_id, sell_id, other["price"], qty),
        )
        left = other["remaining"] - qty
        await cur.execute(
            "UPDATE orders SET remaining = %s, status = %s WHERE id = %s",
            (left, "filled" if left == 0 else "partial", other["id"]),
        )
        remaining -= qty

    if remaining != order.quantity:
        status = "filled" if remaining == 0 else "partial"
        await cur.execute(
            "UPDATE orders SET remaining = %s, status = %s WHERE id = %s RETURNING *",
            (remaining, status, row["id"]),
        )
        row = await cur.fetchone()
        assert row is not None
    return order_json(row), True


#: The most open orders one request may list (a client pages through more).
MAX_OPEN_ORDERS = 10_000


async def open_orders(
    conn: psycopg.AsyncConnection[Any], symbol: str, limit: int
) -> list[dict[str, Any]]:
    """The symbol's resting orders, oldest first: what a trader's blotter shows."""
    cur = conn.cursor(row_factory=dict_row)
    await cur.execute(
        """SELECT * FROM orders WHERE symbol = %s AND remaining > 0
           ORDER BY id ASC LIMIT %s""",
        (symbol, limit),
    )
    return [order_json(row) for row in await cur.fetchall()]


async def find(conn: psycopg.AsyncConnection[Any], client_order_id: str) -> dict[str, Any] | None:
    """The first order stored under ``client_order_id`` (the weakness
    cache-idempotency looks a repeated one up after Redis said it saw it)."""
    cur = conn.cursor(row_factory=dict_row)
    await cur.execute(
        "SELECT * FROM orders WHERE client_order_id = %s ORDER BY id LIMIT 1", (client_order_id,)
    )
    row = await cur.fetchone()
    return order_json(row) if row else None


async def get(conn: psycopg.AsyncConnection[Any], order_id: int) -> dict[str, Any] | None:
    cur = conn.cursor(row_factory=dict_row)
    await cur.execute("SELECT * FROM orders WHERE id = %s", (order_id,))
    row = await cur.fetchone()
    return order_json(row) if row else None


async def market(conn: psycopg.AsyncConnection[Any], symbol: str) -> dict[str, Any]:
    cur = conn.cursor(row_factory=dict_row)
    await cur.execute(
        """SELECT
             (SELECT max(price) FROM orders
               WHERE symbol = %(s)s AND side = 'buy' AND remaining > 0) AS best_bid,
             (SELECT min(price) FROM orders
               WHERE symbol = %(s)s AND side = 'sell' AND remaining > 0) AS best_ask""",
        {"s": symbol},
    )
    top = await cur.fetchone()
    assert top is not None
    await cur.execute(
        """SELECT id, price, quantity, executed_at FROM trades
           WHERE symbol = %s ORDER BY id DESC LIMIT 10""",
        (symbol,),
    )
    trades = [
        {
            "id": t["id"],
            "price": str(t["price"]),
            "quantity": t["quantity"],
            "executed_at": t["executed_at"].isoformat(),
        }
        for t in await cur.fetchall()
    ]
    return {
        "symbol": symbol,
        "best_bid": None if top["best_bid"] is None else str(top["best_bid"]),
        "best_ask": None if top["best_ask"] is None else str(top["best_ask"]),
        "last_trades": trades,
    }
