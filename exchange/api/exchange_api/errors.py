"""Failures of a dependency, each answered with a clear JSON error instead of a traceback."""

from __future__ import annotations


class ServiceError(Exception):
    """A request could not be served; ``status`` and ``code`` go to the client."""

    status = 503
    code = "service_unavailable"

    def __init__(self, message: str, *, retry_after_s: float | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.retry_after_s = retry_after_s


class DatabaseUnavailable(ServiceError):
    code = "database_unavailable"


class DatabaseTimeout(ServiceError):
    code = "database_timeout"


class DatabaseBusy(ServiceError):
    """PostgreSQL refused a new connection (too many clients)."""

    code = "database_busy"


class PoolExhausted(ServiceError):
    code = "database_pool_exhausted"


class BadRequest(ServiceError):
    status = 400
    code = "bad_request"


class NotFound(ServiceError):
    status = 404
    code = "not_found"
