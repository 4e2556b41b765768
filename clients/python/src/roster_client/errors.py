"""Roster's error details, decoded from a failed call.

Roster puts a google.rpc.Status in the ``grpc-status-details-bin`` trailer of
every error it returns. Its details carry a google.rpc.ErrorInfo (domain
"roster", a stable ``reason`` such as ``USER_NOT_FOUND``), for
INVALID_ARGUMENT a google.rpc.BadRequest with one violation per bad field, and
for some RESOURCE_EXHAUSTED a google.rpc.RetryInfo.

    try:
        users.GetUser(user_service_pb2.GetUserRequest(name="nobody"))
    except grpc.RpcError as err:
        details = error_details(err)
        details.code            # grpc.StatusCode.NOT_FOUND
        details.reason          # "USER_NOT_FOUND"
        details.field_violations  # () here; (FieldViolation(...), ...) for INVALID_ARGUMENT
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass, field
from typing import Mapping, Optional, Tuple

import grpc
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status

__all__ = ["ErrorDetails", "FieldViolation", "error_details"]

_DETAILS_KEY = "grpc-status-details-bin"


@dataclass(frozen=True)
class FieldViolation:
    """One google.rpc.BadRequest.FieldViolation: which field, and why."""

    field: str
    reason: str
    description: str


@dataclass(frozen=True)
class ErrorDetails:
    """What a failed call said: its status and the decoded google.rpc details."""

    code: grpc.StatusCode
    message: str
    reason: Optional[str] = None
    """google.rpc.ErrorInfo.reason (stable, e.g. "USER_ALREADY_EXISTS"); None without ErrorInfo."""
    domain: Optional[str] = None
    """google.rpc.ErrorInfo.domain ("roster" for Roster's own errors)."""
    metadata: Mapping[str, str] = field(default_factory=dict)
    """google.rpc.ErrorInfo.metadata."""
    field_violations: Tuple[FieldViolation, ...] = ()
    """google.rpc.BadRequest's violations, in the server's order."""
    retry_delay: Optional[datetime.timedelta] = None
    """google.rpc.RetryInfo.retry_delay: wait this long before retrying."""
    status: Optional[status_pb2.Status] = None
    """The whole google.rpc.Status, or None when the trailer is absent
    (for instance a deadline that expired in the client)."""

    def violation(self, field_name: str) -> Optional[FieldViolation]:
        """The first violation for ``field_name``, if any."""
        return next((v for v in self.field_violations if v.field == field_name), None)


def _status_of(err: grpc.RpcError) -> Optional[status_pb2.Status]:
    try:
        # The standard way; it also checks the trailer against the call's status.
        return rpc_status.from_call(err)  # type: ignore[arg-type]
    except ValueError:
        # The trailer disagrees with the call's own status: still decode it.
        for key, value in err.trailing_metadata() or ():  # type: ignore[attr-defined]
            if key == _DETAILS_KEY:
                return status_pb2.Status.FromString(value)
        return None


def error_details(err: grpc.RpcError) -> ErrorDetails:
    """Decodes a failed call (a ``grpc.RpcError`` from a unary call, sync or
    ``grpc.aio``) into its status code, message, ErrorInfo reason, BadRequest
    field violations and RetryInfo delay."""
    code_fn = getattr(err, "code", None)
    code = code_fn() if callable(code_fn) else grpc.StatusCode.UNKNOWN
    details_fn = getattr(err, "details", None)
    message = (details_fn() if callable(details_fn) else None) or ""

    status = _status_of(err) if hasattr(err, "trailing_metadata") else None
    if status is None:
        return ErrorDetails(code=code, message=message)

    reason = domain = None
    metadata: Mapping[str, str] = {}
    violations: list[FieldViolation] = []
    retry_delay = None
    for any_detail in status.details:
        if any_detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            any_detail.Unpack(info)
            reason, domain, metadata = info.reason, info.domain, dict(info.metadata)
        elif any_detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad = error_details_pb2.BadRequest()
            any_detail.Unpack(bad)
            violations.extend(
                FieldViolation(field=v.field, reason=v.reason, description=v.description)
                for v in bad.field_violations
            )
        elif any_detail.Is(error_details_pb2.RetryInfo.DESCRIPTOR):
            retry = error_details_pb2.RetryInfo()
            any_detail.Unpack(retry)
            retry_delay = retry.retry_delay.ToTimedelta()
    return ErrorDetails(
        code=code,
        message=message,
        reason=reason,
        domain=domain,
        metadata=metadata,
        field_violations=tuple(violations),
        retry_delay=retry_delay,
        status=status,
    )
