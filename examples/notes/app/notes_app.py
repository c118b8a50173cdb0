"""Notes: a small HTTP service that stores notes in Redis.

It is the second system pytest-chaos's examples run against, written the way many
real services are: it answers within its deadlines and says clearly when its store
is unreachable, but it keeps its data in a Redis that does not persist (the weakness
its chaos tests catch: a crash of the store loses acknowledged notes).

    POST /notes {"text": ...}   201 {"id": ...} once Redis holds the note
    GET /notes/{id}             200 {"id", "text"} or 404
    POST /notes/lookup [ids]    200 [ids that exist]
    GET /notes/{id}/digest      200 {"digest"}: a CPU-bound summary of the note
    GET /health                 200 when Redis answers, else 503
"""

from __future__ import annotations

import hashlib
import os
import uuid

import redis.asyncio as aioredis
from aiohttp import web
from redis.exceptions import RedisError

# Every call to the store has a deadline: a slow or cut-off store becomes a clear
# 503 within a second, never a hung request.
STORE_TIMEOUT_S = float(os.environ.get("NOTES_STORE_TIMEOUT_S", "1.0"))
DIGEST_ROUNDS = int(os.environ.get("NOTES_DIGEST_ROUNDS", "20000"))


def unavailable(exc: Exception) -> web.Response:
    return web.json_response(
        {"error": "store_unavailable", "detail": type(exc).__name__}, status=503
    )


async def create(request: web.Request) -> web.Response:
    body = await request.json()
    text = body.get("text") if isinstance(body, dict) else None
    if not isinstance(text, str) or not text:
        return web.json_response({"error": "text must be a non-empty string"}, status=400)
    note_id = uuid.uuid4().hex
    try:
        await request.app["store"].set(f"note:{note_id}", text)
    except RedisError as exc:
        return unavailable(exc)
    return web.json_response({"id": note_id}, status=201)


async def fetch(request: web.Request) -> tuple[str, str] | web.Response:
    """The note the path names, as (id, text), or the response that says why not."""
    note_id = request.match_info["note_id"]
    try:
        text = await request.app["store"].get(f"note:{note_id}")
    except RedisError as exc:
        return unavailable(exc)
    if text is None:
        return web.json_response({"error": "not_found"}, status=404)
    return note_id, text


async def read(request: web.Request) -> web.Response:
    found = await fetch(request)
    if isinstance(found, web.Response):
        return found
    note_id, text = found
    return web.json_response({"id": note_id, "text": text})


async def lookup(request: web.Request) -> web.Response:
    ids = await request.json()
    if not isinstance(ids, list) or not all(isinstance(i, str) for i in ids):
        return web.json_response({"error": "send a list of ids"}, status=400)
    if not ids:
        return web.json_response([])
    try:
        found = await request.app["store"].mget([f"note:{i}" for i in ids])
    except RedisError as exc:
        return unavailable(exc)
    return web.json_response([i for i, text in zip(ids, found, strict=True) if text is not None])


async def digest(request: web.Request) -> web.Response:
    found = await fetch(request)
    if isinstance(found, web.Response):
        return found
    note_id, text = found
    value = hashlib.pbkdf2_hmac("sha256", text.encode(), note_id.encode(), DIGEST_ROUNDS)
    return web.json_response({"id": note_id, "digest": value.hex()})


async def health(request: web.Request) -> web.Response:
    try:
        await request.app["store"].ping()
    except RedisError as exc:
        return unavailable(exc)
    return web.json_response({"status": "ok"})


async def open_store(app: web.Application) -> None:
    app["store"] = aioredis.Redis(
        host=os.environ.get("NOTES_REDIS_HOST", "store"),
        port=6379,
        decode_responses=True,
        socket_timeout=STORE_TIMEOUT_S,
        socket_connect_timeout=STORE_TIMEOUT_S,
    )


async def close_store(app: web.Application) -> None:
    await app["store"].close()


def main() -> None:
    app = web.Application()
    app.on_startup.append(open_store)
    app.on_cleanup.append(close_store)
    app.add_routes(
        [
            web.post("/notes", create),
            web.post("/notes/lookup", lookup),
            web.get("/notes/{note_id}", read),
            web.get("/notes/{note_id}/digest", digest),
            web.get("/health", health),
        ]
    )
    web.run_app(app, host="0.0.0.0", port=8000, access_log=None)  # noqa: S104


if __name__ == "__main__":
    main()
