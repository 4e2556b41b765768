"""Python client for Roster's gRPC API.

- ``roster_client.v1``: messages and stubs generated from proto/roster/v1
  (``user_service_pb2``, ``user_service_pb2_grpc``, ``leaderboard_service_pb2``,
  ``leaderboard_service_pb2_grpc``); regenerate with ``clients/generate``.
- ``roster_client.error_details``: a failed call's ErrorInfo reason, BadRequest
  field violations and RetryInfo delay.
"""

from .errors import ErrorDetails, FieldViolation, error_details

__all__ = ["ErrorDetails", "FieldViolation", "error_details"]
__version__ = "0.1.0"
