"""Redis, used as a cache and an event bus: every call has a timeout, no failure of
Redis ever fails a request, and while Redis is down it is left alone for a moment
instead of paying a timeout on every request."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from typing import Any

import redis.asyncio as redis
from redis.exceptions import RedisError

from .config import Settings
from .metrics import Metrics

log = logging.getLogger("exchange.cache")

_RETRY_AFTER_S = 1.0


class Cache:
    def __init__(self, settings: Settings, metrics: Metrics) -> None:
        self._timeout = settings.cache_timeout_s
        self._metrics = metrics
        self._client = redis.Redis.from_url(
            settings.redis_url,
            socket_timeout=settings.cache_timeout_s,
            socket_connect_timeout=settings.cache_timeout_s,
        )
        self.state = "unknown"
        self.last_error: str | None = None
        self._skip_until = 0.0
        self._pending: set[asyncio.Task[None]] = set()

    async def close(self) -> None:
        await self._client.close()

    async def get_json(self, key: str) -> dict[str, Any] | None:
        raw = await self._call("get", self._client.get(key))
        if raw is None:
            return None
        try:
            value = json.loads(raw)
        except ValueError:
            return None
        return value if isinstance(value, dict) else None

    async def set_json(self, key: str, value: dict[str, Any], ttl_s: int) -> None:
        await self._call("set", self._client.set(key, json.dumps(value), ex=ttl_s))

    def publish_later(self, channel: str, event: dict[str, Any]) -> None:
        """Publish without making the caller wait; failures are logged and counted."""
        task = asyncio.get_running_loop().create_task(self._publish(channel, event))
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    async def publish_now(self, channel: str, event: dict[str, Any]) -> bool:
        """Publish and wait for Redis; False if it failed (counted)."""
        result = await self._call("publish", self._client.publish(channel, json.dumps(event)))
        self._metrics.inc("events_published" if result is not None else "events_failed")
        return result is not None

    async def claim(self, key: str, ttl_s: int) -> bool | None:
        """SET ``key`` NX: True if this call set it, False if it was set already, None
        if Redis could not say (down, or skipped while down)."""
        if time.monotonic() < self._skip_until:
            self._metrics.inc("cache_skipped")
            return None
        try:
            result = await asyncio.wait_for(
                self._client.set(key, "1", nx=True, ex=ttl_s), self._timeout
            )
        except (RedisError, OSError, TimeoutError) as exc:
            self._down("claim", exc)
            return None
        self._up()
        return bool(result)

    async def ping(self) -> bool:
        return await self._call("ping", self._client.ping()) is not None

    def status(self) -> dict[str, Any]:
        return {"state": self.state, "last_error": self.last_error}

    async def _publish(self, channel: str, event: dict[str, Any]) -> None:
        result = await self._call("publish", self._client.publish(channel, json.dumps(event)))
        self._metrics.inc("events_published" if result is not None else "events_failed")

    async def _call(self, op: str, awaitable: Any) -> Any:
        if time.monotonic() < self._skip_until:
            awaitable.close()
            self._metrics.inc("cache_skipped")
            return None
        try:
            result = await asyncio.wait_for(awaitable, self._timeout)
        except (RedisError, OSError, TimeoutError) as exc:
            self._down(op, exc)
            return None
        self._up()
        return True if result is None and op == "set" else result

    def _down(self, op: str, exc: BaseException) -> None:
        if self.state != "down":
            log.warning("redis %s failed: %s; serving without the cache", op, exc)
        self.state = "down"
        self.last_error = f"{type(exc).__name__}: {exc}"
        self._skip_until = time.monotonic() + _RETRY_AFTER_S
        self._metrics.inc("cache_errors")

    def _up(self) -> None:
        if self.state != "up":
            log.info("redis reachable")
        self.state = "up"
        self.last_error = None
