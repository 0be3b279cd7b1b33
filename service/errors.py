"""Request-facing errors and the one table that maps them to HTTP statuses.

::

    AppError                      500 internal
     ├── BadRequestError          400 bad_request       malformed key, body or payload
     ├── KeyNotFoundError         404 not_found         the key is not in the snapshot
     ├── RouteNotFoundError       404 route_not_found   no such path
     ├── MethodNotAllowedError    405 method_not_allowed  the path exists, not the method (Allow)
     └── SnapshotUnavailableError 503 snapshot_unavailable  no good snapshot is loaded (Retry-After)
          └── RowsUnavailableError 503 rows_unavailable  tiered mode: a block could not be read

Every answer built from one of these is ``{"error": {"code", "message"}}``, plus the
``snapshot`` block when the error happened with a snapshot in hand, and ``headers`` for HTTP.
"""

from __future__ import annotations

from http import HTTPStatus
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import Sequence


class AppError(Exception):
    """Base of every error a caller may see; subclasses set ``status`` and ``code``."""

    status = HTTPStatus.INTERNAL_SERVER_ERROR
    code = "internal"

    def __init__(self, message: str, *, snapshot: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.snapshot = snapshot

    @property
    def headers(self) -> dict[str, str] | None:
        """Extra HTTP headers of the answer, if any."""
        return None


class BadRequestError(AppError):
    status = HTTPStatus.BAD_REQUEST
    code = "bad_request"


class KeyNotFoundError(AppError):
    status = HTTPStatus.NOT_FOUND
    code = "not_found"


class RouteNotFoundError(AppError):
    status = HTTPStatus.NOT_FOUND
    code = "route_not_found"


class MethodNotAllowedError(AppError):
    status = HTTPStatus.METHOD_NOT_ALLOWED
    code = "method_not_allowed"

    def __init__(self, message: str, *, allowed: Sequence[str]) -> None:
        super().__init__(message)
        self.allowed = tuple(allowed)

    @property
    def headers(self) -> dict[str, str]:
        return {"Allow": ", ".join(self.allowed)}


class SnapshotUnavailableError(AppError):
    status = HTTPStatus.SERVICE_UNAVAILABLE
    code = "snapshot_unavailable"

    def __init__(self, message: str, *, retry_after_seconds: int = 5) -> None:
        super().__init__(message)
        self.retry_after_seconds = retry_after_seconds

    @property
    def headers(self) -> dict[str, str]:
        return {"Retry-After": str(self.retry_after_seconds)}


class RowsUnavailableError(SnapshotUnavailableError):
    """A tiered reader could not read (or verify) a block this request needs, in time.

    Only this request fails; the version stays loaded.
    """

    code = "rows_unavailable"


def to_response(exc: AppError) -> tuple[int, dict[str, Any]]:
    """The HTTP status and JSON body for ``exc``."""
    body: dict[str, Any] = {"error": {"code": exc.code, "message": exc.message}}
    if exc.snapshot is not None:
        body["snapshot"] = exc.snapshot
    return int(exc.status), body


def internal_error_body() -> dict[str, Any]:
    """The body of an unexpected failure: no detail, no trace."""
    return {"error": {"code": AppError.code, "message": "internal error"}}
