"""Tollway's one error vocabulary.

Every error a client sees has OpenAI's shape::

    {"error": {"message": str, "type": str, "param": str | None, "code": str | None}}

Raise a :class:`TollwayError` subclass anywhere; the proxy's renderer
(``proxy.errors``) and the DRF exception handler below turn it into that body with the
right status. Codes are an enum so clients can branch on them.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Any

from django.http import Http404
from rest_framework import exceptions as drf_exceptions
from rest_framework.response import Response


class ErrorCode(StrEnum):
    INVALID_JSON = "invalid_json"
    MISSING_PARAMETER = "missing_required_parameter"
    INVALID_PARAMETER = "invalid_parameter"
    BODY_TOO_LARGE = "request_too_large"
    INVALID_API_KEY = "invalid_api_key"
    KEY_REVOKED = "api_key_revoked"
    KEY_EXPIRED = "api_key_expired"
    TENANT_SUSPENDED = "tenant_suspended"
    PERMISSION_DENIED = "permission_denied"
    INSUFFICIENT_SCOPE = "insufficient_scope"
    IP_NOT_ALLOWED = "ip_not_allowed"
    MODEL_NOT_FOUND = "model_not_found"
    NOT_FOUND = "not_found"
    METHOD_NOT_ALLOWED = "method_not_allowed"
    RATE_LIMITED = "rate_limit_exceeded"
    INSUFFICIENT_QUOTA = "insufficient_quota"
    LIMITS_UNAVAILABLE = "limits_unavailable"
    UPSTREAM_UNAVAILABLE = "upstream_unavailable"
    UPSTREAM_BAD_RESPONSE = "upstream_bad_response"
    UPSTREAM_AUTH = "upstream_authentication_failed"
    UPSTREAM_REJECTED = "upstream_rejected_request"
    NO_DEPLOYMENT = "no_available_deployment"
    UNSUPPORTED = "unsupported_by_provider"
    UPSTREAM_OVERLOADED = "upstream_overloaded"
    UPSTREAM_TIMEOUT = "upstream_timeout"
    SERVER_ERROR = "server_error"
    DRAINING = "server_draining"


class TollwayError(Exception):
    """Base of every error a client may see. Subclasses set status and type."""

    status: int = 500
    type: str = "server_error"
    default_code: ErrorCode = ErrorCode.SERVER_ERROR
    # Set by the upstream adapters, for the proxy's retries: whether another attempt may
    # succeed, the provider's HTTP status, and its own Retry-After in seconds.
    retryable: bool = False
    upstream_status: int | None = None
    retry_after: float | None = None

    def __init__(
        self,
        message: str,
        *,
        param: str | None = None,
        code: ErrorCode | None = None,
        status: int | None = None,
        headers: dict[str, str] | None = None,
        type: str | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.code = code or self.default_code
        if status is not None:
            self.status = status
        if type is not None:
            self.type = type
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        return error_body(self.message, type=self.type, param=self.param, code=self.code)


class InvalidRequest(TollwayError):
    status = 400
    type = "invalid_request_error"
    default_code = ErrorCode.INVALID_PARAMETER


class AuthenticationFailed(TollwayError):
    status = 401
    type = "invalid_request_error"
    default_code = ErrorCode.INVALID_API_KEY

    def __init__(self, message: str, **kwargs: Any) -> None:
        super().__init__(message, **kwargs)
        self.headers.setdefault("WWW-Authenticate", 'Bearer realm="tollway"')


class PermissionDenied(TollwayError):
    status = 403
    type = "permission_error"
    default_code = ErrorCode.TENANT_SUSPENDED


class NotFound(TollwayError):
    status = 404
    type = "invalid_request_error"
    default_code = ErrorCode.NOT_FOUND


class MethodNotAllowed(TollwayError):
    status = 405
    type = "invalid_request_error"
    default_code = ErrorCode.METHOD_NOT_ALLOWED


class RateLimited(TollwayError):
    status = 429
    type = "rate_limit_error"
    default_code = ErrorCode.RATE_LIMITED


class QuotaExceeded(TollwayError):
    """A budget or prepaid credit is used up. Retrying will not help, so the SDKs are told not to."""

    status = 429
    type = "insufficient_quota"
    default_code = ErrorCode.INSUFFICIENT_QUOTA

    def __init__(self, message: str, **kwargs: Any) -> None:
        super().__init__(message, **kwargs)
        self.headers.setdefault("x-should-retry", "false")


class UpstreamError(TollwayError):
    """The provider failed us: 502 unless told otherwise. Never a client fault."""

    status = 502
    type = "upstream_error"
    default_code = ErrorCode.UPSTREAM_UNAVAILABLE


def error_body(message: str, *, type: str, param: str | None = None, code: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": type, "param": param, "code": code}}


_DRF_TYPES: dict[int, tuple[str, ErrorCode]] = {
    400: ("invalid_request_error", ErrorCode.INVALID_PARAMETER),
    401: ("invalid_request_error", ErrorCode.INVALID_API_KEY),
    403: ("permission_error", ErrorCode.PERMISSION_DENIED),
    404: ("invalid_request_error", ErrorCode.NOT_FOUND),
    405: ("invalid_request_error", ErrorCode.METHOD_NOT_ALLOWED),
    429: ("rate_limit_error", ErrorCode.RATE_LIMITED),
}


def _first_error(detail: Any, prefix: str = "") -> tuple[str | None, str]:
    """The first (field path, message) in a DRF ValidationError detail."""
    if isinstance(detail, dict):
        for field, value in detail.items():
            path = f"{prefix}.{field}" if prefix else str(field)
            if field == "non_field_errors":
                path = prefix
            param, message = _first_error(value, path)
            return param or None, message
    if isinstance(detail, list) and detail:
        return _first_error(detail[0], prefix)
    return prefix or None, str(detail)


def drf_exception_handler(exc: Exception, context: dict[str, Any]) -> Response | None:
    """DRF's EXCEPTION_HANDLER: every API error in OpenAI's shape."""
    if isinstance(exc, TollwayError):
        return Response(exc.body(), status=exc.status, headers=exc.headers)
    if isinstance(exc, Http404):
        exc = drf_exceptions.NotFound()
    if not isinstance(exc, drf_exceptions.APIException):
        return None
    status = exc.status_code
    type_, code = _DRF_TYPES.get(status, ("server_error", ErrorCode.SERVER_ERROR))
    if isinstance(exc, drf_exceptions.ParseError):
        code = ErrorCode.INVALID_JSON
    if isinstance(exc, drf_exceptions.ValidationError):
        param, message = _first_error(exc.detail)
        if param:
            message = f"{param}: {message}"
    else:
        param, message = None, str(exc.detail)
    headers = {}
    wait = getattr(exc, "wait", None)
    if isinstance(exc, drf_exceptions.Throttled) and wait is not None:
        headers["Retry-After"] = str(int(wait))
    return Response(error_body(message, type=type_, param=param, code=code), status, headers=headers)
