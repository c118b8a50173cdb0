"""HTTP routes of the trading API (aiohttp). Every failure of a dependency becomes a
JSON error with a clear message and, where it helps, a Retry-After header."""

from __future__ import annotations

import asyncio
import html
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from . import orders
from .cache import Cache
from .config import NO_DB_IDEMPOTENCY, Settings
from .db import Database
from .errors import BadRequest, DatabaseTimeout, NotFound, ServiceError
from .metrics import Metrics

log = logging.getLogger("exchange.api")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
# String keys: Debian bookworm's aiohttp (3.8) predates web.AppKey.
SETTINGS = "settings"
DB = "db"
CACHE = "cache"
METRICS = "metrics"
MARKET_TTL_S = 3600  # the last good book stays as a fallback long after it is fresh


@web.middleware
async def api_rate_limit(request: web.Request, handler: Handler) -> web.StreamResponse:
    """The weakness rate-limit-api: a per-client token bucket (50 r/s, burst 100) on
    the API itself, so bypassing nginx no longer bypasses the limit."""
    if "rate-limit-api" in request.app[SETTINGS].weaken:
        buckets = request.app["buckets"]
        client = request.remote or "?"
        now = time.monotonic()
        tokens, last = buckets.get(client, (100.0, now))
        tokens = min(100.0, tokens + (now - last) * 50.0)
        if tokens < 1.0:
            buckets[client] = (tokens, now)
            return web.json_response(
                {"error": "rate_limited", "message": "Too many requests."}, status=429
            )
        buckets[client] = (tokens - 1.0, now)
    return await handler(request)


@web.middleware
async def errors_as_json(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except ServiceError as exc:
        request.app[METRICS].inc(f"errors_{exc.code}")
        headers = {}
        if exc.retry_after_s is not None:
            headers["Retry-After"] = str(max(1, round(exc.retry_after_s)))
        return web.json_response(
            {"error": exc.code, "message": exc.message}, status=exc.status, headers=headers
        )
    except web.HTTPException:
        raise
    except Exception:
        log.exception("unhandled error on %s %s", request.method, request.path)
        request.app[METRICS].inc("errors_internal")
        return web.json_response(
            {"error": "internal_error", "message": "An internal error occurred; it was logged."},
            status=500,
        )


async def place_order(request: web.Request) -> web.Response:
    try:
        body = await request.json()
    except ValueError:
        raise BadRequest("The body must be JSON.") from None
    order = orders.NewOrder.parse(body)
    if "ack-before-commit" in request.app[SETTINGS].weaken:
        return _accept_and_write_behind(request.app, order)
    db, weaken = request.app[DB], request.app[SETTINGS].weaken
    if "cache-idempotency" in weaken:
        # The weakness: only Redis remembers which client order ids were seen; when it
        # cannot say, the order is stored as new.
        key = f"client-order:{order.client_order_id}"
        if await request.app[CACHE].claim(key, ttl_s=3600) is False:
            seen = await db.run(lambda conn: orders.find(conn, order.client_order_id))
            if seen is not None:
                request.app[METRICS].inc("orders_replayed")
                return web.json_response(seen, status=200)
    work = asyncio.ensure_future(db.run(lambda conn: orders.place(conn, order, weaken)))
    if weaken & NO_DB_IDEMPOTENCY:
        # The weakness: a deadline that answers without cancelling the work behind it.
        try:
            placed, created = await asyncio.wait_for(asyncio.shield(work), 1.0)
        except TimeoutError:
            abandoned = request.app["abandoned"]
            abandoned.add(work)
            work.add_done_callback(lambda t: abandoned.discard(t) or t.cancelled() or t.exception())
            raise DatabaseTimeout("The order was not placed within 1 s.") from None
    else:
        placed, created = await work
    request.app[METRICS].inc("orders_placed" if created else "orders_replayed")
    if created and "blocking-events" in request.app[SETTINGS].weaken:
        # The weakness: the order waits on Redis, and fails with it.
        if not await request.app[CACHE].publish_now(
            "orders", {"type": "order_placed", "order": placed}
        ):
            raise ServiceError("Publishing the order event failed (Redis unavailable).")
    elif created:
        request.app[CACHE].publish_later("orders", {"type": "order_placed", "order": placed})
    return web.json_response(placed, status=201 if created else 200)


def _accept_and_write_behind(app: web.Application, order: orders.NewOrder) -> web.Response:
    """The weakness ack-before-commit: acknowledge now, write later. Orders queued when
    the database fails are dropped: acknowledged, and lost."""
    app["write_behind"].append(order)
    app[METRICS].inc("orders_accepted_unwritten")
    return web.json_response(
        {"id": None, "client_order_id": order.client_order_id, "status": "accepted"}, status=201
    )


async def _write_behind(app: web.Application) -> None:
    while True:
        await asyncio.sleep(0.2)
        queued, app["write_behind"] = app["write_behind"], []
        for order in queued:
            try:
                await app[DB].run(lambda conn, o=order: orders.place(conn, o))
            except ServiceError as exc:
                app[METRICS].inc("orders_lost_unwritten")
                log.error("dropped acknowledged order %s: %s", order.client_order_id, exc.message)


async def list_open_orders(request: web.Request) -> web.Response:
    """GET /orders?symbol=S&limit=N: open orders of a symbol, oldest first. Each
    request holds its page in memory while it is built: a spike of large pages is
    what drives the API's memory up in experiment 03."""
    symbol = request.query.get("symbol", "")
    if not orders.SYMBOL.match(symbol):
        raise BadRequest("symbol must be 1-12 upper-case letters, digits or dots, e.g. 'BTC'.")
    try:
        limit = int(request.query.get("limit", "100"))
    except ValueError:
        raise BadRequest("limit must be an integer.") from None
    if not 1 <= limit <= orders.MAX_OPEN_ORDERS:
        raise BadRequest(f"limit must be between 1 and {orders.MAX_OPEN_ORDERS}.")
    rows = await request.app[DB].run(lambda conn: orders.open_orders(conn, symbol, limit))
    return web.json_response({"symbol": symbol, "orders": rows, "count": len(rows)})


async def get_order(request: web.Request) -> web.Response:
    try:
        order_id = int(request.match_info["order_id"])
    except ValueError:
        raise BadRequest("The order id must be an integer.") from None
    found = await request.app[DB].run(lambda conn: orders.get(conn, order_id))
    if found is None:
        raise NotFound(f"No order with id {order_id}.")
    return web.json_response(found)


async def market(request: web.Request) -> web.Response:
    """Cache-aside: a fresh cached book is served as is; otherwise the database is read
    and the cache refreshed; if the database cannot answer, the last cached book is
    served marked stale."""
    symbol = request.match_info["symbol"]
    app = request.app
    cache, metrics = app[CACHE], app[METRICS]
    key = f"market:{symbol}"
    cached = await cache.get_json(key)
    age = time.time() - float(cached["as_of"]) if cached else None
    if cached is not None and age is not None and age < app[SETTINGS].market_fresh_s:
        metrics.inc("cache_hits")
        return web.json_response({**cached, "source": "cache", "stale": False})
    metrics.inc("cache_misses")
    try:
        book = await app[DB].run(lambda conn: orders.market(conn, symbol))
    except ServiceError as exc:
        if cached is None or "no-cache-fallback" in app[SETTINGS].weaken:
            raise
        if "stale-as-fresh" in app[SETTINGS].weaken:
            # The weakness: an old book, served as if it had just been read.
            return web.json_response({**cached, "source": "cache", "stale": False})
        metrics.inc("market_served_stale")
        return web.json_response(
            {
                **cached,
                "source": "cache-fallback",
                "stale": True,
                "age_s": round(age or 0.0, 3),
                "reason": exc.message,
            }
        )
    book["as_of"] = time.time()
    await cache.set_json(key, book, MARKET_TTL_S)
    return web.json_response({**book, "source": "database", "stale": False})


async def health(_: web.Request) -> web.Response:
    return web.json_response({"status": "alive"})


def _ready_state(app: web.Application) -> tuple[dict[str, Any], int]:
    db, cache = app[DB], app[CACHE]
    ok = db.state == "up"
    status = "ready" if ok and cache.state != "down" else ("degraded" if ok else "unavailable")
    return {"status": status, "database": db.status(), "cache": cache.status()}, 200 if ok else 503


async def ready(request: web.Request) -> web.Response:
    if request.app[CACHE].state != "up":
        await request.app[CACHE].ping()
    body, status = _ready_state(request.app)
    return web.json_response(body, status=status)


async def metrics_view(request: web.Request) -> web.Response:
    return web.json_response(request.app[METRICS].snapshot())


async def dashboard(request: web.Request) -> web.Response:
    """A small status page, rendered on the server so it reads the same with or
    without a browser; nginx serves it on port 80."""
    body, _ = _ready_state(request.app)
    db, cache = body["database"], body["cache"]
    if db["state"] == "up":
        db_line = '<p class="ok">Database available</p>'
    else:
        db_line = (
            '<p class="bad">Database unavailable</p>'
            f"<p>Last error: {html.escape(str(db['last_error']))}; "
            f"{db['reconnect_attempts']} reconnect attempts so far.</p>"
        )
    cache_line = (
        '<p class="ok">Cache available</p>'
        if cache["state"] != "down"
        else '<p class="bad">Cache unavailable: market data comes from the database</p>'
    )
    page = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta http-equiv="refresh" content="2">
<title>Exchange status: {body["status"]}</title>
<style>body{{font-family:sans-serif;margin:2em}} .ok{{color:#186a3b}}
.bad{{color:#b03a2e;font-weight:bold}}</style>
</head><body><h1>Exchange status: {body["status"]}</h1>
{db_line}
{cache_line}
</body></html>
"""
    return web.Response(text=page, content_type="text/html")


async def _start(app: web.Application) -> None:
    app[DB].start()
    if "ack-before-commit" in app[SETTINGS].weaken:
        app["write_behind_task"] = asyncio.get_running_loop().create_task(_write_behind(app))


async def _stop(app: web.Application) -> None:
    await app[DB].close()
    await app[CACHE].close()


def build_app(settings: Settings) -> web.Application:
    app = web.Application(middlewares=[api_rate_limit, errors_as_json])
    app["buckets"] = {}
    app["write_behind"] = []
    app["abandoned"] = set()  # the weakness retry-reinserts: work answered 504 and left to run
    metrics = Metrics()
    app[SETTINGS] = settings
    app[METRICS] = metrics
    app[DB] = Database(settings, metrics)
    app[CACHE] = Cache(settings, metrics)
    if settings.weaken:
        log.warning(
            "running WEAKENED for an experiment's proof: %s", ", ".join(sorted(settings.weaken))
        )
    app.on_startup.append(_start)
    app.on_cleanup.append(_stop)
    app.add_routes(
        [
            web.post("/orders", place_order),
            web.get("/orders", list_open_orders),
            web.get("/orders/{order_id}", get_order),
            web.get("/market/{symbol}", market),
            web.get("/health", health),
            web.get("/ready", ready),
            web.get("/metrics", metrics_view),
            web.get("/dashboard", dashboard),
        ]
    )
    return app
