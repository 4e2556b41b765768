"""error_details on hand-made trailers: RetryInfo (which needs Redis's throttle
to happen for real) and calls without details."""

from __future__ import annotations

import datetime

import grpc
from google.protobuf import any_pb2, duration_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2

from roster_client import error_details


class FakeCallError(grpc.RpcError, grpc.Call):
    """Stands in for the grpc.RpcError a unary call raises."""

    def __init__(self, code, message, trailers):
        self._code, self._message, self._trailers = code, message, trailers

    def code(self):
        return self._code

    def details(self):
        return self._message

    def trailing_metadata(self):
        return self._trailers

    def initial_metadata(self):
        return ()

    def is_active(self):
        return False

    def time_remaining(self):
        return None

    def cancel(self):
        return False

    def add_callback(self, callback):
        return False


def packed(message) -> any_pb2.Any:
    value = any_pb2.Any()
    value.Pack(message)
    return value


def test_retry_info_and_error_info():
    status = status_pb2.Status(
        code=code_pb2.RESOURCE_EXHAUSTED,
        message="too many failed attempts",
        details=[
            packed(error_details_pb2.ErrorInfo(reason="TOO_MANY_FAILED_ATTEMPTS", domain="roster", metadata={"k": "v"})),
            packed(error_details_pb2.RetryInfo(retry_delay=duration_pb2.Duration(seconds=2, nanos=500_000_000))),
        ],
    )
    err = FakeCallError(
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        "too many failed attempts",
        (("grpc-status-details-bin", status.SerializeToString()),),
    )
    details = error_details(err)
    assert details.code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert details.reason == "TOO_MANY_FAILED_ATTEMPTS"
    assert details.metadata == {"k": "v"}
    assert details.retry_delay == datetime.timedelta(seconds=2.5)
    assert details.field_violations == ()


def test_mismatched_trailer_is_still_decoded():
    status = status_pb2.Status(
        code=code_pb2.NOT_FOUND,
        message="something else",
        details=[packed(error_details_pb2.ErrorInfo(reason="USER_NOT_FOUND", domain="roster"))],
    )
    err = FakeCallError(grpc.StatusCode.NOT_FOUND, "not found", (("grpc-status-details-bin", status.SerializeToString()),))
    assert error_details(err).reason == "USER_NOT_FOUND"


def test_no_trailer():
    details = error_details(FakeCallError(grpc.StatusCode.UNAVAILABLE, "connection refused", ()))
    assert (details.code, details.message, details.reason, details.status) == (
        grpc.StatusCode.UNAVAILABLE,
        "connection refused",
        None,
        None,
    )
